"""Joint maps: selection by name, checked against the table of shared/docs/mimic_hdf5_and_arena_converter.md §2."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SHARED
from posttrain.embodiment import Embodiment, load_embodiment
from posttrain.errors import PosttrainError

GR1_DIR = REPO / "config" / "embodiments" / "gr1"

# The doc table (§2): policy order -> sim column.
DOC_STATE = [12, 17, 22, 24, 26, 28, 30, 13, 18, 23, 25, 27, 29, 31, 34, 35, 33, 32, 36, 46, 39, 40, 38, 37, 41, 51]
DOC_ACTION = [0, 2, 4, 6, 8, 10, 12, 1, 3, 5, 7, 9, 11, 13, 16, 17, 15, 14, 18, 28, 21, 22, 20, 19, 23, 33]
MIMIC_ACTION_COLUMNS = [24, 25, 26, 27, 29, 30, 31, 32, 34, 35]


@pytest.fixture
def gr1_copy(tmp_path) -> Path:
    """A private copy of the gr1 embodiment directory that a test may edit."""
    dst = tmp_path / "gr1"
    shutil.copytree(GR1_DIR, dst)
    return dst


def rewrite_joints(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    data["joints"] = edit(data["joints"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_gr1_matches_doc_table():
    emb = load_embodiment("gr1")
    assert emb.name == "gr1"
    assert list(emb.groups) == ["left_arm", "right_arm", "left_hand", "right_hand"]
    assert [len(g) for g in emb.groups.values()] == [7, 7, 6, 6]
    assert emb.state_indices.tolist() == DOC_STATE
    assert emb.action_indices.tolist() == DOC_ACTION
    assert (emb.sim_state_dims, emb.sim_action_dims, emb.dims) == (54, 36, 26)
    assert emb.joint_names[:4] == [
        "left_shoulder_pitch_joint",
        "left_shoulder_roll_joint",
        "left_shoulder_yaw_joint",
        "left_elbow_pitch_joint",
    ]
    assert emb.joint_names[14:20] == [
        "L_pinky_proximal_joint",
        "L_ring_proximal_joint",
        "L_middle_proximal_joint",
        "L_index_proximal_joint",
        "L_thumb_proximal_yaw_joint",
        "L_thumb_proximal_pitch_joint",
    ]
    assert emb.group_slices()["right_hand"] == slice(20, 26)
    assert emb.info_template["codebase_version"] == "v2.1"


def test_remap_selects_columns():
    emb = load_embodiment("gr1")
    sim_state = np.tile(np.arange(54, dtype=np.float64), (3, 1)) + np.arange(3)[:, None] * 100
    state = emb.remap_state(sim_state)
    assert state.dtype == np.float32 and state.shape == (3, 26)
    assert state[2].tolist() == [200 + c for c in DOC_STATE]
    action = emb.remap_action(np.tile(np.arange(36, dtype=np.float32), (2, 1)))
    assert action[0].tolist() == DOC_ACTION


def test_directory_path_and_arena_files_give_the_same_map(gr1_copy):
    by_dir = load_embodiment(gr1_copy)
    ref = SHARED / "reference" / "isaaclab_arena_gr1" / "embodiment"
    by_files = Embodiment.from_files(
        ref / "54dof_joint_space.yaml",
        ref / "36dof_joint_space.yaml",
        ref / "gr00t_26dof_joint_space.yaml",
        ref / "modality.json",
    )
    for emb in (by_dir, by_files):
        assert emb.state_indices.tolist() == DOC_STATE
        assert emb.action_indices.tolist() == DOC_ACTION
    assert by_files.modality == json.loads((GR1_DIR / "modality.json").read_text())


def test_shuffled_yaml_gives_the_same_mapping(gr1_copy):
    def shuffle(joints):
        items = list(joints.items())
        random.Random(0).shuffle(items)
        return dict(items)

    rewrite_joints(gr1_copy / "54dof_joint_space.yaml", shuffle)
    rewrite_joints(gr1_copy / "36dof_joint_space.yaml", shuffle)
    emb = load_embodiment(gr1_copy)
    assert emb.state_indices.tolist() == DOC_STATE
    assert emb.action_indices.tolist() == DOC_ACTION


def test_mapping_follows_the_column_written_beside_the_name(gr1_copy):
    # Swap the columns of two joints: the map must follow the names, not the positions in the file.
    def swap(joints):
        joints["right_shoulder_pitch_joint"], joints["left_shoulder_pitch_joint"] = 12, 13
        return joints

    rewrite_joints(gr1_copy / "54dof_joint_space.yaml", swap)
    emb = load_embodiment(gr1_copy)
    assert emb.state_indices[0] == 13 and emb.state_indices[7] == 12


def test_missing_policy_joint_names_yaml_and_joint(gr1_copy):
    rewrite_joints(
        gr1_copy / "54dof_joint_space.yaml", lambda j: {k: v for k, v in j.items() if k != "right_wrist_roll_joint"}
    )
    with pytest.raises(
        PosttrainError,
        match=r"54dof_joint_space\.yaml: policy joint right_wrist_roll_joint "
        r"not in the sim state map",
    ):
        load_embodiment(gr1_copy)


def test_missing_action_joint(gr1_copy):
    rewrite_joints(
        gr1_copy / "36dof_joint_space.yaml",
        lambda j: {k: v for k, v in j.items() if k != "L_thumb_proximal_pitch_joint"},
    )
    with pytest.raises(PosttrainError, match=r"36dof_joint_space\.yaml: policy joint L_thumb_proximal_pitch_joint"):
        load_embodiment(gr1_copy)


def test_duplicate_column_rejected(gr1_copy):
    def dup(joints):
        joints["waist_yaw_joint"] = 12
        return joints

    rewrite_joints(gr1_copy / "54dof_joint_space.yaml", dup)
    with pytest.raises(PosttrainError, match=r"54dof_joint_space\.yaml: joints .* share column 12"):
        load_embodiment(gr1_copy)


def test_duplicate_joint_name_rejected(gr1_copy):
    path = gr1_copy / "36dof_joint_space.yaml"
    path.write_text(path.read_text().replace('"right_shoulder_pitch_joint": 1', '"left_shoulder_pitch_joint": 1'))
    with pytest.raises(PosttrainError, match=r"36dof_joint_space\.yaml: not valid YAML .*duplicate key"):
        load_embodiment(gr1_copy)


def test_joint_listed_twice_in_policy_groups(gr1_copy):
    path = gr1_copy / "gr00t_26dof_joint_space.yaml"
    data = yaml.safe_load(path.read_text())
    data["joints"]["right_hand"][0] = "L_pinky_proximal_joint"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    message = r"gr00t_26dof_joint_space\.yaml: joint L_pinky_proximal_joint listed twice"
    with pytest.raises(PosttrainError, match=message):
        load_embodiment(gr1_copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["state"]["left_arm"].update(end=6), r"state\.left_arm: slice \[0, 6\) expected \[0, 7\)"),
        (lambda m: m["action"]["right_hand"].update(start=21, end=27), r"action\.right_hand: slice \[21, 27\)"),
        (lambda m: m["state"].pop("left_hand"), r"state groups .* differ"),
    ],
)
def test_bad_modality_rejected(gr1_copy, edit, message):
    path = gr1_copy / "modality.json"
    modality = json.loads(path.read_text())
    edit(modality)
    path.write_text(json.dumps(modality))
    with pytest.raises(PosttrainError, match=r"modality\.json: " + message):
        load_embodiment(gr1_copy)


def test_policy_action_to_sim_round_trip():
    emb = load_embodiment("gr1")
    policy = np.random.default_rng(0).normal(size=(5, 26)).astype(np.float32)
    sim = emb.policy_action_to_sim(policy)
    assert sim.shape == (5, 36) and sim.dtype == np.float32
    np.testing.assert_array_equal(emb.remap_action(sim), policy)
    assert not sim[:, MIMIC_ACTION_COLUMNS].any(), "joints the policy does not produce are zero-filled"
    np.testing.assert_array_equal(sim[:, 0], policy[:, 0])  # left_shoulder_pitch -> column 0
    np.testing.assert_array_equal(sim[:, 33], policy[:, 25])  # R_thumb_proximal_pitch -> column 33


def test_wrong_shapes_and_unknown_name():
    emb = load_embodiment("gr1")
    with pytest.raises(PosttrainError, match=r"sim state has shape \(4, 53\), expected \(T, 54\)"):
        emb.remap_state(np.zeros((4, 53)))
    with pytest.raises(PosttrainError, match=r"policy action has shape \(26,\)"):
        emb.policy_action_to_sim(np.zeros(26))
    with pytest.raises(PosttrainError, match=r"no_such_robot: unknown embodiment .*gr1"):
        load_embodiment("no_such_robot")


def test_missing_embodiment_file(gr1_copy):
    (gr1_copy / "modality.json").unlink()
    with pytest.raises(PosttrainError, match=r"modality\.json: embodiment file missing"):
        load_embodiment(gr1_copy)


# --- G1 and embodiment.yaml (extra columns, robot_type, cameras, other joint-map names) ------------

G1_DIR = REPO / "config" / "embodiments" / "g1"
G1_ARENA = SHARED / "reference" / "isaaclab_arena_g1" / "embodiment"


@pytest.fixture
def g1_copy(tmp_path) -> Path:
    dst = tmp_path / "g1"
    shutil.copytree(G1_DIR, dst)
    return dst


def test_g1_is_arena_g1_plus_its_columns():
    emb = load_embodiment("g1")
    sim = yaml.safe_load((G1_ARENA / "43dof_joint_space.yaml").read_text())["joints"]
    policy = yaml.safe_load((G1_ARENA / "gr00t_43dof_joint_space.yaml").read_text())["joints"]
    order = ["left_leg", "right_leg", "waist", "left_arm", "left_hand", "right_arm", "right_hand"]  # modality.json
    assert list(emb.groups) == order and emb.joint_names == [n for g in order for n in policy[g]]
    assert emb.state_indices.tolist() == emb.action_indices.tolist() == [sim[n] for n in emb.joint_names]
    assert (emb.sim_state_dims, emb.sim_action_dims, emb.dims) == (43, 43, 43)
    for name in ("43dof_joint_space.yaml", "gr00t_43dof_joint_space.yaml", "modality.json", "info.json"):
        assert (G1_DIR / name).read_bytes() == (G1_ARENA / name).read_bytes(), "a verbatim copy of Arena's file"
    assert [(c.name, c.dtype, c.width) for c in emb.columns] == [
        ("observation.eef_pose", "float64", 14),
        ("action.eef_pose", "float64", 14),
        ("teleop.base_height_command", "float32", 1),
        ("teleop.navigate_command", "float32", 3),
        ("teleop.torso_orientation_rpy_command", "float32", 3),
    ]
    assert [p.key for p in emb.columns[0].parts] == [
        "obs/left_eef_pos",
        "obs/left_eef_quat",
        "obs/right_eef_pos",
        "obs/right_eef_quat",
    ]
    assert emb.robot_type == "unitree_g1" and emb.cameras == {"robot_head_cam_rgb": "observation.images.ego_view"}
    assert emb.annotation_key == "annotation.human.task_description"
    gr1 = load_embodiment("gr1")  # no embodiment.yaml: Arena's GR1 layout, no extra columns
    assert (gr1.columns, gr1.robot_type, gr1.cameras) == ((), None, None)
    assert gr1.annotation_key == "annotation.human.action.task_description"


def test_arena_names_rename_the_datasets_they_name():
    emb = load_embodiment("g1").with_arena_names({"left_eef_pos_name_sim": "left_wrist_pos"}, "my.yaml")
    assert [c.parts[0].key for c in emb.columns[:2]] == ["obs/left_wrist_pos", "action/left_wrist_pos"]
    assert emb.columns[0].parts[1].key == "obs/left_eef_quat" and emb.dims == 43
    with pytest.raises(PosttrainError, match=r"my\.yaml: left_eef_pos_name_sim: embodiment gr1 declares no column"):
        load_embodiment("gr1").with_arena_names({"left_eef_pos_name_sim": "left_eef_pos"}, "my.yaml")


def edit_description(path: Path, edit) -> None:
    data = yaml.safe_load((path / "embodiment.yaml").read_text())
    edit(data)
    (path / "embodiment.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(colour="red"), r"embodiment\.yaml: unknown key 'colour'"),
        (
            lambda d: d["columns"]["teleop.navigate_command"].update(dtype="int64"),
            r"columns\.teleop\.navigate_command: dtype 'int64'",
        ),
        (
            lambda d: d["columns"].update({"timestamp": {"dtype": "float64", "parts": [{"key": "obs/t", "width": 1}]}}),
            r"columns\.timestamp: a column every conversion writes",
        ),
        (lambda d: d["columns"]["action.eef_pose"]["parts"][0].update(width=0), r"action\.eef_pose: parts\[0\]"),
        (
            lambda d: d["columns"].pop("teleop.navigate_command"),
            r"modality\.json: action\.navigate_command: original_key 'teleop\.navigate_command' is neither 'action' "
            r"nor a column declared in .*embodiment\.yaml",
        ),
        (
            lambda d: d["columns"]["observation.eef_pose"]["parts"][0].update(width=2),
            r"modality\.json: state\.right_wrist_pose: slice \[7, 14\) outside observation\.eef_pose of width 13",
        ),
        (
            lambda d: d["joint_maps"].update(policy="gr00t_44dof_joint_space.yaml"),
            r"gr00t_44dof_joint_space\.yaml: embodiment file missing",
        ),
    ],
)
def test_bad_description_rejected(g1_copy, edit, message):
    edit_description(g1_copy, edit)
    with pytest.raises(PosttrainError, match=message):
        load_embodiment(g1_copy)


def test_g1_without_its_description_cannot_place_the_eef_groups(g1_copy):
    (g1_copy / "embodiment.yaml").unlink()  # then the GR1 file names are expected
    with pytest.raises(PosttrainError, match=r"54dof_joint_space\.yaml: embodiment file missing"):
        load_embodiment(g1_copy)
    with pytest.raises(
        PosttrainError,
        match=r"state\.left_wrist_pose: original_key 'observation\.eef_pose' is "
        r"neither 'observation\.state' nor a column declared in an "
        r"embodiment\.yaml \(none found\)",
    ):
        Embodiment.from_files(
            g1_copy / "43dof_joint_space.yaml",
            g1_copy / "43dof_joint_space.yaml",
            g1_copy / "gr00t_43dof_joint_space.yaml",
            g1_copy / "modality.json",
        )
