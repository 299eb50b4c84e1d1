"""The Unitree G1 embodiment: conversion reproduces the golden Arena G1 episode exactly, through the
Arena YAML and through `--embodiment g1`; eef/teleop faults are one-line errors; non-square cameras."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import GOLDEN, REPO, SHARED, run_cli, synth_and_convert
from posttrain import lerobot
from posttrain.lerobot import LeRobotDataset, column_to_numpy

G1_REF = SHARED / "reference" / "isaaclab_arena_g1"
G1_GOLDEN = G1_REF / "golden_lerobot_g1"
G1_YAML = G1_REF / "g1_locomanip_config.yaml"
G1_DIR = REPO / "config" / "embodiments" / "g1"
CAMERA = "robot_head_cam_rgb"
EEF = (("left_eef_pos", 0, 3), ("left_eef_quat", 3, 7), ("right_eef_pos", 7, 10), ("right_eef_quat", 10, 14))
TELEOP = {
    "base_height_cmd": "teleop.base_height_command",
    "navigate_cmd": "teleop.navigate_command",
    "torso_orientation_rpy_cmd": "teleop.torso_orientation_rpy_command",
}


def golden_table():
    return pq.read_table(G1_GOLDEN / "data" / "chunk-000" / "episode_000000.parquet")


def sim_columns() -> np.ndarray:
    """Sim column of each policy joint, straight from Arena's files (independent of embodiment.py).
    State and action share the 43-joint sim order; the joint groups are the modality groups on
    observation.state, in modality.json order."""
    embodiment = G1_REF / "embodiment"
    sim = yaml.safe_load((embodiment / "43dof_joint_space.yaml").read_text())["joints"]
    groups = yaml.safe_load((embodiment / "gr00t_43dof_joint_space.yaml").read_text())["joints"]
    modality = json.loads((embodiment / "modality.json").read_text())["state"]
    return np.array(
        [
            sim[name]
            for group, entry in modality.items()
            if entry["original_key"] == "observation.state"
            for name in groups[group]
        ]
    )


def write_golden_hdf5(path: Path, rows: int | None = None, frame_size: tuple[int, int] = (48, 64)) -> Path:
    """A Mimic HDF5 whose one demo holds the golden episode's values (its first `rows` rows), with the
    by-name remap inverted, plus one more recorded step (conversion drops it). Isaac Lab records float32:
    the golden float64 eef poses are float32 values, so nothing is lost. The camera frames are HDF5's
    fill value (the golden mp4 is not available); only their size matters here."""
    table = golden_table()
    rows = rows or table.num_rows
    columns = {name: column_to_numpy(table.column(name))[:rows] for name in table.column_names}

    def with_last_step(values: np.ndarray) -> np.ndarray:
        return np.concatenate([values, values[-1:] + 0.5]).astype(np.float32)

    cols = sim_columns()
    with h5py.File(path, "w") as f:
        demo = f.create_group("data/demo_0")
        for key, column in (("obs/robot_joint_pos", "observation.state"), ("processed_actions", "action")):
            sim = np.full((rows, 43), np.nan, np.float32)
            sim[:, cols] = columns[column]
            assert not np.isnan(sim).any(), "the 43 policy joints cover the 43 sim columns"
            demo.create_dataset(key, data=with_last_step(sim), compression="gzip")
        for group, column in (("obs", "observation.eef_pose"), ("action", "action.eef_pose")):
            assert np.array_equal(columns[column].astype(np.float32).astype(np.float64), columns[column])
            for name, start, end in EEF:
                demo.create_dataset(f"{group}/{name}", data=with_last_step(columns[column][:, start:end]))
        for name, column in TELEOP.items():
            demo.create_dataset(f"action/{name}", data=with_last_step(columns[column]))
        demo.create_dataset(
            f"camera_obs/{CAMERA}",
            shape=(rows + 1, *frame_size, 3),
            dtype=np.uint8,
            chunks=(8, *frame_size, 3),
            compression="gzip",
            fillvalue=90,
        )
        demo.attrs["num_samples"] = rows + 1
        f["data"].attrs["total"] = rows + 1
    return path


def g1_yaml(tmp_path: Path, data_root: Path, hdf5_name: str, **changes) -> Path:
    """Arena's G1 converter YAML, unchanged but for where the HDF5 lies (and the given keys)."""
    changes = {"data_root": str(data_root), "hdf5_name": hdf5_name, **changes}
    lines = G1_YAML.read_text().splitlines()
    for key, value in changes.items():
        matches = [i for i, old in enumerate(lines) if old.startswith(f"{key}:")]
        line = f"{key}: {json.dumps(value)}"
        if matches:
            lines[matches[0]] = line
        else:
            lines.append(line)
    path = tmp_path / "g1_locomanip_config.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def assert_reproduces_golden(out: Path, video_shape: list[int]) -> None:
    golden, ours = golden_table(), pq.read_table(out / "data" / "chunk-000" / "episode_000000.parquet")
    assert ours.column_names == golden.column_names
    assert ours.schema.remove_metadata() == golden.schema.remove_metadata()  # arrow types, element names
    for name in golden.column_names:  # values, bit for bit (timestamp included)
        assert ours.column(name).combine_chunks().equals(golden.column(name).combine_chunks()), name

    golden_info = json.loads((G1_GOLDEN / "meta" / "info.json").read_text())
    info = json.loads((out / "meta" / "info.json").read_text())
    assert list(info) == list(golden_info)
    # documented differences: true chunk count and split (shared/docs/mimic_hdf5_and_arena_converter.md §5)
    assert {k for k in info if info[k] != golden_info[k]} <= {"total_chunks", "splits", "features"}
    assert (info["total_chunks"], info["splits"]) == (1, {"train": "0:1"})
    video = "observation.images.ego_view"
    assert list(info["features"]) == list(golden_info["features"])
    for key, feature in golden_info["features"].items():  # dtype, shape and joint names of every column
        ours = info["features"][key]
        assert (ours["dtype"], ours.get("names") if "names" in feature and key != video else None) == (
            feature["dtype"],
            feature.get("names") if key != video else None,
        ), key
        assert ours["shape"] == (video_shape if key == video else feature["shape"]), key
    height, width, _ = video_shape
    assert info["features"][video]["video_info"] == dict(
        golden_info["features"][video]["video_info"], **{"video.height": height, "video.width": width}
    )
    assert json.loads((out / "meta" / "modality.json").read_text()) == json.loads(
        (G1_GOLDEN / "meta" / "modality.json").read_text()
    )
    for name in ("tasks.jsonl", "episodes.jsonl"):
        assert lerobot.read_jsonl(out / "meta" / name) == lerobot.read_jsonl(G1_GOLDEN / "meta" / name), name


@pytest.fixture(scope="module")
def golden_hdf5(tmp_path_factory) -> Path:
    return write_golden_hdf5(tmp_path_factory.mktemp("g1") / "g1_golden.hdf5")


def test_arena_yaml_reproduces_the_golden_episode(tmp_path):
    """Arena's G1 YAML, unchanged (but for the HDF5's location), on a 480 x 640 camera."""
    write_golden_hdf5(tmp_path / "g1.hdf5", frame_size=(480, 640))
    config = g1_yaml(tmp_path, tmp_path, "g1.hdf5")
    assert run_cli("convert", "--config", config, "--workers", "1") == 0
    out = tmp_path / "g1" / "lerobot"  # Arena's default: <data_root>/<hdf5 stem>/lerobot
    assert_reproduces_golden(out, [480, 640, 3])
    source = LeRobotDataset(out).source
    assert source["embodiment"] == "g1" and source["cameras"] == {CAMERA: "observation.images.ego_view"}
    assert source["columns"]["observation.eef_pose"] == [f"obs/{name}" for name, _, _ in EEF]


def test_embodiment_g1_reproduces_the_golden_episode(golden_hdf5, tmp_path):
    """`--embodiment g1` alone: robot_type, annotation column, camera and extra columns come from
    config/embodiments/g1/; only the task is given."""
    doc = yaml.safe_load(G1_YAML.read_text())
    out = tmp_path / "out"
    assert (
        run_cli(
            "convert",
            "--input",
            golden_hdf5,
            "--output",
            out,
            "--embodiment",
            "g1",
            "--task-index",
            doc["task_index"],
            "--language-instruction",
            doc["language_instruction"],
            "--workers",
            "1",
        )
        == 0
    )
    assert_reproduces_golden(out, [48, 64, 3])  # a non-square camera keeps its H x W


def test_golden_timestamps_of_gr1_and_g1_are_reproduced_exactly():
    """frame_index * (1 / fps), as the reference writes it: frame_index / fps differs in the last bit."""
    for root in (GOLDEN, G1_GOLDEN):
        golden = pq.read_table(root / "data" / "chunk-000" / "episode_000000.parquet").column("timestamp").to_numpy()
        fps = json.loads((root / "meta" / "info.json").read_text())["fps"]
        n = len(golden)
        ours = lerobot.episode_columns(np.zeros((n, 2)), np.zeros((n, 2)), 0, 0, fps, 0).column("timestamp")
        assert np.array_equal(ours.to_numpy(), golden), root
        assert not np.array_equal(np.arange(n) / fps, golden), "the two formulas differ on these episodes"


def test_renamed_datasets_and_gr1_yaml_with_g1_keys(golden_hdf5, tmp_path, capsys):
    """A YAML *_name_sim key renames the datasets its columns read; a key no column reads is an error."""
    renamed = tmp_path / "renamed.hdf5"
    shutil.copy(golden_hdf5, renamed)
    with h5py.File(renamed, "a") as f:
        for group in ("obs", "action"):
            f.move(f"data/demo_0/{group}/left_eef_pos", f"data/demo_0/{group}/left_wrist_pos")
        f.move("data/demo_0/action/navigate_cmd", "data/demo_0/action/walk_cmd")
    config = g1_yaml(
        tmp_path,
        tmp_path,
        "renamed.hdf5",
        left_eef_pos_name_sim="left_wrist_pos",
        teleop_navigate_command_name_sim="walk_cmd",
        original_image_size=[48, 64, 3],
        target_image_size=[48, 64, 3],
    )
    assert run_cli("convert", "--config", config, "--output", tmp_path / "out", "--workers", "1") == 0
    assert_reproduces_golden(tmp_path / "out", [48, 64, 3])
    assert LeRobotDataset(tmp_path / "out").source["columns"]["teleop.navigate_command"] == ["action/walk_cmd"]
    capsys.readouterr()

    gr1_files = {
        "policy_joints_config_path": "gr00t_26dof_joint_space.yaml",
        "modality_template_path": "modality.json",
        "state_joints_config_path": "54dof_joint_space.yaml",
        "action_joints_config_path": "36dof_joint_space.yaml",
    }
    gr1 = g1_yaml(
        tmp_path,
        tmp_path,
        "renamed.hdf5",
        **{key: f"isaaclab_arena_gr00t/embodiments/gr1/{name}" for key, name in gr1_files.items()},
    )
    assert run_cli("convert", "--config", gr1, "--output", tmp_path / "gr1_out", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {gr1}: left_eef_pos_name_sim: embodiment gr1 declares no column") and "\n" not in err
    assert not (tmp_path / "gr1_out").exists()


def _replace(f: h5py.File, key: str, data) -> None:
    del f[key]
    f.create_dataset(key, data=data)


DAMAGE = {
    "missing eef dataset": (
        lambda f: f["data/demo_0/obs"].__delitem__("left_eef_quat"),
        "data/demo_0/obs/left_eef_quat: missing; data/demo_0/obs has: left_eef_pos, "
        "right_eef_pos, right_eef_quat, robot_joint_pos",
    ),
    "missing action group": (
        lambda f: f["data/demo_0"].__delitem__("action"),
        "data/demo_0/action/left_eef_pos: missing; data/demo_0 has: camera_obs, obs, processed_actions",
    ),
    "misshapen teleop": (
        lambda f: _replace(f, "data/demo_0/action/navigate_cmd", f["data/demo_0/action/navigate_cmd"][:, :2]),
        "data/demo_0/action/navigate_cmd: shape (11, 2), expected (T, 3)",
    ),
    "1-D teleop": (
        lambda f: _replace(f, "data/demo_0/action/base_height_cmd", f["data/demo_0/action/base_height_cmd"][:, 0]),
        "data/demo_0/action/base_height_cmd: shape (11,), expected (T, 1)",
    ),
    "short eef": (
        lambda f: _replace(f, "data/demo_0/action/right_eef_pos", f["data/demo_0/action/right_eef_pos"][:-1]),
        "data/demo_0/action/right_eef_pos: 10 rows, but the action has 11",
    ),
    "NaN eef": (
        lambda f: f["data/demo_0/obs/right_eef_quat"].__setitem__((4, 2), np.nan),
        "data/demo_0/obs/right_eef_quat: NaN at row 4, column 2",
    ),
    "integer teleop": (
        lambda f: _replace(f, "data/demo_0/action/torso_orientation_rpy_cmd", np.zeros((11, 3), np.int32)),
        "data/demo_0/action/torso_orientation_rpy_cmd: dtype int32, expected float32",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_bad_eef_and_teleop_datasets_are_one_line_errors(tmp_path, capsys, case):
    damage, expected = DAMAGE[case]
    path = write_golden_hdf5(tmp_path / "bad.hdf5", rows=10, frame_size=(16, 16))
    with h5py.File(path, "a") as f:
        damage(f)
    out = tmp_path / "out"
    assert run_cli("convert", "--input", path, "--output", out, "--embodiment", "g1", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: bad.hdf5: {expected}") and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]  # no output, no temp dir


def test_float64_eef_keeps_its_precision(tmp_path):
    """A float64 pose in the HDF5 reaches the float64 column unrounded (state/action are float32 anyway)."""
    path = write_golden_hdf5(tmp_path / "f64.hdf5", rows=10, frame_size=(16, 16))
    precise = np.full((11, 3), 0.1, np.float64)
    with h5py.File(path, "a") as f:
        _replace(f, "data/demo_0/obs/left_eef_pos", precise)
    out = tmp_path / "out"
    assert run_cli("convert", "--input", path, "--output", out, "--embodiment", "g1", "--workers", "1") == 0
    eef = LeRobotDataset(out).read_episode(0, ["observation.eef_pose"])["observation.eef_pose"]
    assert eef.dtype == np.float64 and (eef[:, :3] == 0.1).all()


@pytest.fixture(scope="module")
def g1_synth_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """`posttrain synth --embodiment g1` (a non-square camera) converted with `--embodiment g1`, stats written."""
    return synth_and_convert(
        tmp_path_factory.mktemp("g1_synth"),
        "--embodiment",
        "g1",
        "--episodes",
        "3",
        "--min-frames",
        "40",
        "--max-frames",
        "50",
        "--image-size",
        "48x64",
        "--seed",
        "4",
        convert_args=["--embodiment", "g1"],
    )


def test_synthetic_g1_converts_to_the_golden_schema(g1_synth_dataset):
    hdf5, out = g1_synth_dataset
    ds = LeRobotDataset(out)
    golden = golden_table().schema.remove_metadata()
    assert pq.read_table(ds.parquet_path(0)).schema.remove_metadata() == golden
    assert ds.info["robot_type"] == "unitree_g1"
    assert ds.info["features"]["observation.images.ego_view"]["shape"] == [48, 64, 3]
    assert ds.read_video(0, "observation.images.ego_view").shape[1:] == (48, 64, 3)
    with h5py.File(hdf5, "r") as f:  # every extra column is its datasets, concatenated, rows [:-1]
        demo = f[f"data/{ds.source['episodes'][1]['demo']}"]
        columns = ds.read_episode(1)
        for column, keys in ds.source["columns"].items():
            expected = np.concatenate([demo[key][:-1] for key in keys], axis=1)
            np.testing.assert_array_equal(columns[column], expected.astype(columns[column].dtype))
    stats = lerobot.read_json(out / "meta" / "stats.json")
    assert len(stats["observation.eef_pose"]["mean"]) == 14 and len(stats["teleop.navigate_command"]["max"]) == 3


def test_verify_handles_a_non_square_camera(g1_synth_dataset, tmp_path, capsys):
    hdf5, out = g1_synth_dataset
    report_dir = tmp_path / "verify"
    assert (
        run_cli("verify", out, "--source", hdf5, "--output", report_dir, "--sampled-frames", "4", "--workers", "2") == 0
    )
    report = json.loads((report_dir / "report.json").read_text())
    assert report["passed"] and report["psnr_db"]["min"] >= 35 and report["psnr_db"]["frames_compared"] == 3 * 10
    # a one-frame shift is still caught on 48 x 64 frames
    shifted = tmp_path / "shifted"
    shutil.copytree(out, shifted)
    source = json.loads((shifted / "meta" / "source.json").read_text())
    source["drop_frame"] = "last"
    (shifted / "meta" / "source.json").write_text(json.dumps(source))
    capsys.readouterr()
    assert (
        run_cli(
            "verify",
            shifted,
            "--source",
            hdf5,
            "--output",
            tmp_path / "verify2",
            "--sampled-frames",
            "6",
            "--preview-episodes",
            "0",
            "--min-psnr-db",
            "20",
            "--workers",
            "2",
        )
        == 2
    )
    assert "video_alignment" in capsys.readouterr().err
