"""The synthetic generator: exact Mimic schema, determinism, and a task that needs vision."""

from __future__ import annotations

import argparse
import json

import h5py
import numpy as np
import pytest

from conftest import GOLDEN, run_cli
from posttrain import synth
from posttrain.embodiment import load_embodiment
from posttrain.mimic import MimicFile
from posttrain.video import encode_video, psnr, read_frames

ARGS = dict(episodes=5, min_frames=60, max_frames=80, image_size=48, seed=7)
DOC_STATE = [12, 17, 22, 24, 26, 28, 30, 13, 18, 23, 25, 27, 29, 31, 34, 35, 33, 32, 36, 46, 39, 40, 38, 37, 41, 51]
DOC_ACTION = [0, 2, 4, 6, 8, 10, 12, 1, 3, 5, 7, 9, 11, 13, 16, 17, 15, 14, 18, 28, 21, 22, 20, 19, 23, 33]
GR1 = load_embodiment("gr1")


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "demos.hdf5"
    synth.write_synthetic(path, progress=False, **ARGS)
    return path


@pytest.fixture(scope="module")
def episodes():
    return [
        synth.make_episode(ARGS["seed"], i, ARGS["min_frames"], ARGS["max_frames"], ARGS["image_size"])
        for i in range(ARGS["episodes"])
    ]


def target_from_image(frames: np.ndarray) -> np.ndarray:
    """(u, v) of the disc in each frame: the centroid of the saturation excess (the disc is red or
    green, the table and the hand nearly grey); u across the width, v down the height."""
    frames = frames.astype(np.float32)
    redness = np.clip(frames.max(axis=-1) - frames.min(axis=-1) - 40, 0, None)
    height, width = frames.shape[1:3]
    mass = redness.sum(axis=(1, 2))
    assert (mass > 0).all(), "every frame shows the target"
    u = (redness.sum(axis=1) * ((np.arange(width) + 0.5) / width)).sum(axis=1) / mass
    v = (redness.sum(axis=2) * ((np.arange(height) + 0.5) / height)).sum(axis=1) / mass
    return np.stack([u, v], axis=1)


def test_schema_is_exact(demo_file):
    with h5py.File(demo_file, "r") as f:
        assert list(f.keys()) == ["data"]
        data = f["data"]
        assert json.loads(data.attrs["env_args"]) == {"env_name": synth.ENV_NAME, "type": 2}
        demos = sorted(data, key=lambda n: int(n.split("_")[1]))
        assert demos == [f"demo_{i}" for i in range(ARGS["episodes"])]
        lengths = []
        for name in demos:
            demo = data[name]
            t = int(demo.attrs["num_samples"])
            lengths.append(t)
            assert ARGS["min_frames"] <= t <= ARGS["max_frames"]
            assert bool(demo.attrs["success"]) is True and int(demo.attrs["seed"]) == ARGS["seed"]
            s = ARGS["image_size"]
            expected = {
                "actions": ((t, 36), np.float32),
                "processed_actions": ((t, 36), np.float32),
                "obs/robot_joint_pos": ((t, 54), np.float32),
                "obs/actions": ((t, 36), np.float32),
                "obs/right_eef_pos": ((t, 3), np.float32),
                "obs/right_eef_quat": ((t, 4), np.float32),
                "obs/hand_joint_state": ((t, 22), np.float32),
                "camera_obs/robot_pov_cam_rgb": ((t, s, s, 3), np.uint8),
            }
            for key, (shape, dtype) in expected.items():
                assert demo[key].shape == shape and demo[key].dtype == dtype, key
            quat = demo["obs/right_eef_quat"][()]
            np.testing.assert_allclose(np.linalg.norm(quat, axis=1), 1, atol=1e-6)
            datasets = []
            demo.visititems(lambda k, obj, found=datasets: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
            assert len(datasets) >= 8
            assert all(ds.compression == "gzip" for ds in datasets), [ds.name for ds in datasets]
        assert int(data.attrs["total"]) == sum(lengths)
    with MimicFile(demo_file) as mimic:
        assert sum(mimic.check().values()) == sum(lengths)


def test_file_holds_make_episode(demo_file, episodes):
    with MimicFile(demo_file) as mimic:
        for i, ep in enumerate(episodes):
            state, action = mimic.read_state_action(f"demo_{i}")
            np.testing.assert_array_equal(state, ep.state)
            np.testing.assert_array_equal(action, ep.processed_actions)
            frames = np.concatenate(list(mimic.iter_camera_frames(f"demo_{i}", "robot_pov_cam_rgb")))
            np.testing.assert_array_equal(frames, ep.render())


def test_deterministic_for_a_seed(tmp_path):
    small = dict(episodes=2, min_frames=30, max_frames=40, image_size=32, progress=False)
    a = synth.write_synthetic(tmp_path / "a.hdf5", seed=1, **small)
    b = synth.write_synthetic(tmp_path / "b.hdf5", seed=1, **small)
    c = synth.write_synthetic(tmp_path / "c.hdf5", seed=2, **small)
    assert a.read_bytes() == b.read_bytes()
    with h5py.File(a) as fa, h5py.File(c) as fc:
        assert not np.array_equal(fa["data/demo_0/processed_actions"][:30], fc["data/demo_0/processed_actions"][:30])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.hdf5", "b.hdf5", "c.hdf5"], "no temporary left"


def test_cli_defaults_and_bad_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    synth.add_arguments(parser)
    args = parser.parse_args(["out.hdf5"])
    # config/config.yaml's synth: block (tests/test_settings.py), so a hand run makes the workflow's demos
    assert (args.episodes, args.min_frames, args.max_frames, args.image_size, args.seed) == (16, 70, 100, None, 0)
    assert args.embodiment == "gr1" and synth.EMBODIMENTS["gr1"][2] == 64  # the embodiment's size by default
    out = tmp_path / "bad.hdf5"
    for size in ("63", "48x63", "48x", "8x16"):
        assert run_cli("synth", out, "--image-size", size) == 2, size
    assert run_cli("synth", out, "--min-frames", "50", "--max-frames", "40") == 2
    assert run_cli("synth", out, "--episodes", "0") == 2
    (tmp_path / "taken").mkdir()
    assert run_cli("synth", tmp_path / "taken", "--episodes", "1", "--image-size", "16") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["taken"], "a failed run leaves nothing behind"
    (tmp_path / "taken").rmdir()
    assert (
        run_cli("synth", out, "--episodes", "1", "--min-frames", "20", "--max-frames", "20", "--image-size", "16") == 0
    )
    with MimicFile(out) as mimic:
        assert mimic.check() == {"demo_0": 20}


def test_target_is_visible_and_moves_mid_episode(episodes):
    for ep in episodes:
        seen = target_from_image(ep.render())
        assert np.abs(seen - ep.targets).max() < 0.05, "the image shows the current target"
        assert 1 <= len(ep.jump_steps) <= 2
        for step in ep.jump_steps:
            assert np.linalg.norm(seen[step] - seen[step - 1]) > 0.25, "the target jumps in the image..."
            policy_state = GR1.remap_state(ep.state)
            assert np.abs(policy_state[step] - policy_state[step - 1]).max() < 0.1, "...but not in the state"


def test_actions_follow_the_target_seen(episodes):
    roll, pitch, seen_u, seen_v = [], [], [], []
    right_arm = GR1.group_slices()["right_arm"]
    for ep in episodes:
        settled = np.ones(ep.length, bool)  # steps where the arm command has reached the current target
        for start in [0, *ep.jump_steps]:
            settled[start : start + synth.ARM_RAMP] = False
        seen = target_from_image(ep.render())[settled]
        arm = GR1.remap_action(ep.processed_actions)[settled, right_arm]
        pitch.append(arm[:, 0]), roll.append(arm[:, 1]), seen_u.append(seen[:, 0]), seen_v.append(seen[:, 1])
    assert np.corrcoef(np.concatenate(seen_u), np.concatenate(roll))[0, 1] > 0.98
    assert np.corrcoef(np.concatenate(seen_v), np.concatenate(pitch))[0, 1] > 0.98


def test_state_lags_behind_the_action(episodes):
    ep = episodes[0]
    # state[t+1] - state[t] == LAG * (action[t] - state[t]) on the policy joints, offsets removed.
    s = GR1.remap_state(ep.state) - synth.INDEX_OFFSET * GR1.state_indices
    a = GR1.remap_action(ep.processed_actions) - synth.INDEX_OFFSET * GR1.action_indices
    np.testing.assert_allclose(s[1:] - s[:-1], synth.LAG * (a[:-1] - s[:-1]), atol=2e-5)


def test_joint_ranges_are_gr1_like_and_every_joint_moves(episodes):
    golden = json.loads((GOLDEN / "meta" / "stats.json").read_text())
    state = np.concatenate([GR1.remap_state(ep.state) for ep in episodes])
    action = np.concatenate([GR1.remap_action(ep.processed_actions) for ep in episodes])
    for values, key in ((state, "observation.state"), (action, "action")):
        low, high = np.array(golden[key]["min"]), np.array(golden[key]["max"])
        assert (values.min(axis=0) >= low - 0.15).all(), GR1.joint_names
        assert (values.max(axis=0) <= high + 0.15).all(), GR1.joint_names
        assert (values.std(axis=0) > 1e-3).all(), "every policy joint varies (min/max normalisation needs it)"
    hand = GR1.group_slices()["right_hand"]
    assert action[:, hand][:, :4].min() < -0.4, "the right hand closes"


def test_columns_encode_their_index(episodes):
    for ep in episodes:
        np.testing.assert_allclose(ep.state[0], synth.REST_STATE + 1e-3 * np.arange(54), atol=1e-6)
        np.testing.assert_allclose(ep.processed_actions[0], synth.REST_ACTION + 1e-3 * np.arange(36), atol=1e-6)
    ep = episodes[0]
    rest_state = GR1.remap_state(synth.REST_STATE[None])
    rest_action = GR1.remap_action(synth.REST_ACTION[None])
    decoded_state = np.rint((GR1.remap_state(ep.state[:1]) - rest_state) / synth.INDEX_OFFSET)
    decoded_action = np.rint((GR1.remap_action(ep.processed_actions[:1]) - rest_action) / synth.INDEX_OFFSET)
    assert decoded_state[0].tolist() == DOC_STATE
    assert decoded_action[0].tolist() == DOC_ACTION
    # Joints the policy drops: legs, waist and head hold a small constant pose (plus their offset) ...
    cols = synth.STATE_COLUMNS
    for name in ("left_knee_pitch_joint", "waist_yaw_joint", "head_pitch_joint"):
        column = ep.state[:, cols[name]]
        assert np.all(column == column[0]) and column[0] == pytest.approx(
            synth.REST_POSE.get(name, 0.0) + 1e-3 * cols[name], abs=1e-6
        )
    assert ep.state[0, cols["head_pitch_joint"]] != 0 and ep.state[0, cols["left_knee_pitch_joint"]] != 0
    # ... and the mimic finger joints follow their proximal joint.
    acols = synth.ACTION_COLUMNS
    np.testing.assert_allclose(
        ep.processed_actions[:, acols["R_index_intermediate_joint"]] - 1e-3 * acols["R_index_intermediate_joint"],
        ep.processed_actions[:, acols["R_index_proximal_joint"]] - 1e-3 * acols["R_index_proximal_joint"],
        atol=1e-6,
    )


def test_frames_survive_h264(tmp_path):
    ep = synth.make_episode(0, 0, 60, 60, 64)  # the workflow's image size
    frames = ep.render()
    encode_video(tmp_path / "ep.mp4", frames, fps=50)
    decoded = read_frames(tmp_path / "ep.mp4")
    assert len(decoded) == len(frames)
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) >= 36.0


def test_vision_is_needed_to_predict_the_action_chunk(episodes):
    """Predict the right-arm action 15 steps ahead (the end of a 16-step chunk): adding the target
    seen in the image to the state must cut a linear model's error substantially."""

    def fit_error(x, y):
        x = np.c_[x, np.ones(len(x))]
        weights, *_ = np.linalg.lstsq(x, y, rcond=None)
        return float(((x @ weights - y) ** 2).mean())

    state_only, with_vision, future = [], [], []
    right_arm = GR1.group_slices()["right_arm"]
    for ep in episodes:
        rows = np.arange(ep.length - 15)
        state = GR1.remap_state(ep.state)[rows]
        state_only.append(state)
        with_vision.append(np.c_[state, target_from_image(ep.render())[rows]])
        future.append(GR1.remap_action(ep.processed_actions)[rows + 15, right_arm])
    future = np.concatenate(future)
    blind, seeing = fit_error(np.concatenate(state_only), future), fit_error(np.concatenate(with_vision), future)
    assert seeing < 0.7 * blind, (seeing, blind)


def test_grasp_is_announced_in_the_image_and_not_in_the_state(episodes):
    """The target turns green over GRASP_CUE steps before the hands close; nothing in the state
    changes before the grasp starts, so only vision tells when to close the hands."""
    for episode in episodes:
        frames = episode.render().astype(np.float32)
        u, v = episode.targets[:, 0], episode.targets[:, 1]
        centre = frames[np.arange(episode.length), (v * episode.height).astype(int), (u * episode.width).astype(int)]
        greener = centre[:, 1] > centre[:, 0]
        cue_start = episode.grasp_start - synth.GRASP_CUE
        assert not greener[: max(cue_start, 0)].any()
        assert greener[episode.grasp_start :].all()
        hand = synth.STATE_COLUMNS["R_index_proximal_joint"]
        before = episode.state[: episode.grasp_start + 1, hand]
        np.testing.assert_allclose(before, before[0])  # the hand starts moving only after the grasp starts


# --- Unitree G1 (`--embodiment g1`) ----------------------------------------------------------------

G1 = load_embodiment("g1")
G1_GOLDEN_STATS = GOLDEN.parents[1] / "isaaclab_arena_g1" / "golden_lerobot_g1" / "meta" / "stats.json"
G1_SIZE = (48, 64)  # non-square, as the G1 head camera (480 x 640), at a tenth of its size
G1_EXTRA = {
    f"{group}/{side}_eef_{kind}": width
    for group in ("obs", "action")
    for side in ("left", "right")
    for kind, width in (("pos", 3), ("quat", 4))
}
G1_EXTRA.update({"action/base_height_cmd": 1, "action/navigate_cmd": 3, "action/torso_orientation_rpy_cmd": 3})


@pytest.fixture(scope="module")
def g1_episodes():
    return [
        synth.make_g1_episode(ARGS["seed"], i, ARGS["min_frames"], ARGS["max_frames"], G1_SIZE)
        for i in range(ARGS["episodes"])
    ]


def test_g1_schema_is_exact_and_holds_make_g1_episode(tmp_path, g1_episodes):
    path = synth.write_synthetic(
        tmp_path / "g1.hdf5",
        episodes=2,
        min_frames=ARGS["min_frames"],
        max_frames=ARGS["max_frames"],
        image_size="48x64",
        seed=ARGS["seed"],
        progress=False,
        embodiment="g1",
    )
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["env_args"]) == {"env_name": synth.G1_ENV_NAME, "type": 2}
        for i in range(2):
            demo, ep = f[f"data/demo_{i}"], g1_episodes[i]
            t = int(demo.attrs["num_samples"])
            expected = {
                "processed_actions": (43,),
                "obs/robot_joint_pos": (43,),
                "actions": (35,),
                "camera_obs/robot_head_cam_rgb": (48, 64, 3),
                **{key: (width,) for key, width in G1_EXTRA.items()},
            }
            for key, shape in expected.items():
                assert demo[key].shape == (t, *shape), key
                assert demo[key].dtype == (np.uint8 if key.startswith("camera") else np.float32), key
                assert demo[key].compression == "gzip", key
            for group in ("obs", "action"):
                for side in ("left", "right"):  # wxyz unit quaternions
                    np.testing.assert_allclose(
                        np.linalg.norm(demo[f"{group}/{side}_eef_quat"][()], axis=1), 1, atol=1e-6
                    )
            np.testing.assert_array_equal(demo["obs/robot_joint_pos"][()], ep.state)
            np.testing.assert_array_equal(demo["processed_actions"][()], ep.processed_actions)
            np.testing.assert_array_equal(demo["action/navigate_cmd"][()], ep.action["navigate_cmd"])
            np.testing.assert_array_equal(demo["camera_obs/robot_head_cam_rgb"][()], ep.render())
    with MimicFile(path) as mimic:  # what `posttrain convert --embodiment g1` checks
        assert len(mimic.check(cameras=[synth.G1_CAMERA], state_dims=43, action_dims=43, extra=G1_EXTRA)) == 2
    assert synth.G1_CAMERA == "robot_head_cam_rgb" == next(iter(G1.cameras))


def test_g1_default_camera_is_480_by_640(tmp_path):
    path = synth.write_synthetic(
        tmp_path / "g1.hdf5", episodes=1, min_frames=3, max_frames=3, progress=False, embodiment="g1"
    )
    with h5py.File(path, "r") as f:
        assert f["data/demo_0/camera_obs/robot_head_cam_rgb"].shape == (3, 480, 640, 3)


def test_g1_shows_the_gr1_task(episodes, g1_episodes):
    """The same seed gives the same targets, jumps and grasp whatever the robot."""
    for gr1, g1 in zip(episodes, g1_episodes):
        np.testing.assert_array_equal(gr1.targets, g1.targets)
        assert (gr1.jump_steps, gr1.grasp_start) == (g1.jump_steps, g1.grasp_start)


def test_g1_target_is_visible_in_a_non_square_image_and_jumps_only_there(g1_episodes):
    for ep in g1_episodes:
        seen = target_from_image(ep.render())
        assert np.abs(seen - ep.targets).max() < 0.05, "the image shows the current target"
        state = G1.remap_state(ep.state)
        for step in ep.jump_steps:
            assert np.linalg.norm(seen[step] - seen[step - 1]) > 0.25
            assert np.abs(state[step] - state[step - 1]).max() < 0.1


def test_g1_vision_is_needed_to_predict_the_action_chunk(g1_episodes):
    """The right arm 15 steps ahead: the target seen in the image must cut a linear model's error, as
    for GR1 (the navigate command, a velocity bell after each target change, is not linear in either)."""

    def fit_error(x, y):
        x = np.c_[x, np.ones(len(x))]
        weights, *_ = np.linalg.lstsq(x, y, rcond=None)
        return float(((x @ weights - y) ** 2).mean())

    right_arm = G1.group_slices()["right_arm"]
    state_only, with_vision, future = [], [], []
    for ep in g1_episodes:
        rows = np.arange(ep.length - 15)
        state = G1.remap_state(ep.state)[rows]
        state_only.append(state)
        with_vision.append(np.c_[state, target_from_image(ep.render())[rows]])
        future.append(G1.remap_action(ep.processed_actions)[rows + 15, right_arm])
    future = np.concatenate(future)
    blind, seeing = fit_error(np.concatenate(state_only), future), fit_error(np.concatenate(with_vision), future)
    assert seeing < 0.7 * blind, (seeing, blind)


def test_g1_grasp_and_squat_are_announced_in_the_image_only(g1_episodes):
    for ep in g1_episodes:
        frames = ep.render().astype(np.float32)
        u, v = ep.targets[:, 0], ep.targets[:, 1]
        centre = frames[np.arange(ep.length), (v * ep.height).astype(int), (u * ep.width).astype(int)]
        greener = centre[:, 1] > centre[:, 0]
        assert not greener[: max(ep.grasp_start - synth.GRASP_CUE, 0)].any()
        assert greener[ep.grasp_start :].all()
        before = slice(0, ep.grasp_start + 1)
        hand = synth.G1_COLUMNS["right_hand_index_0_joint"]
        np.testing.assert_allclose(ep.state[before, hand], ep.state[0, hand])
        np.testing.assert_array_equal(ep.action["base_height_cmd"][before], synth.G1_HEIGHT)
        assert ep.action["base_height_cmd"][-1, 0] < synth.G1_HEIGHT - 0.07, "it squats to grasp"
        knee = synth.G1_COLUMNS["left_knee_joint"]
        assert ep.state[-1, knee] > ep.state[0, knee] + 0.3, "the legs follow"


def test_g1_every_joint_and_command_moves_in_g1_ranges(g1_episodes):
    golden = json.loads(G1_GOLDEN_STATS.read_text())
    state = np.concatenate([G1.remap_state(ep.state) for ep in g1_episodes])
    action = np.concatenate([G1.remap_action(ep.processed_actions) for ep in g1_episodes])
    body = [i for i, name in enumerate(G1.joint_names) if "_hand_" not in name]  # the golden hands stay open
    for values, key in ((state, "observation.state"), (action, "action")):
        assert (values.std(axis=0) > 1e-3).all(), "every policy joint varies (min/max normalisation needs it)"
        low, high = np.array(golden[key]["min"])[body], np.array(golden[key]["max"])[body]
        assert (values[:, body].min(axis=0) >= low - 0.15).all() and (values[:, body].max(axis=0) <= high + 0.15).all()
    for name in ("base_height_cmd", "navigate_cmd", "torso_orientation_rpy_cmd", "right_eef_pos"):
        assert (np.concatenate([ep.action[name] for ep in g1_episodes]).std(axis=0) > 1e-3).all(), name
    assert (np.concatenate([ep.obs["right_eef_pos"] for ep in g1_episodes]).std(axis=0) > 1e-3).all()


def test_g1_columns_encode_their_index(g1_episodes):
    for ep in g1_episodes:
        np.testing.assert_allclose(ep.state[0], synth.G1_REST + 1e-3 * np.arange(43), atol=1e-6)
        np.testing.assert_allclose(ep.processed_actions[0], synth.G1_REST + 1e-3 * np.arange(43), atol=1e-6)
    rest = G1.remap_state(synth.G1_REST[None])
    decoded = np.rint((G1.remap_state(g1_episodes[0].state[:1]) - rest) / synth.INDEX_OFFSET)[0]
    assert decoded.tolist() == G1.state_indices.tolist() and sorted(decoded) == list(range(43))


def test_g1_frames_survive_h264(tmp_path):
    frames = synth.make_g1_episode(0, 0, 60, 60, (96, 128)).render()
    encode_video(tmp_path / "ep.mp4", frames, fps=50)
    decoded = read_frames(tmp_path / "ep.mp4")
    assert decoded.shape == frames.shape
    assert min(psnr(a, b) for a, b in zip(frames, decoded)) >= 36.0


# --- the second task (`--task reach_left`) --------------------------------------------------------


@pytest.fixture(scope="module")
def left_episodes():
    return [
        synth.make_episode(
            ARGS["seed"], i, ARGS["min_frames"], ARGS["max_frames"], ARGS["image_size"], task="reach_left"
        )
        for i in range(ARGS["episodes"])
    ]


def test_reach_left_starts_like_reach_right_and_moves_the_other_arm(episodes, left_episodes):
    """Same seed: the same plan and the same first frames and state, so only the instruction tells which
    hand reaches; then the left arm reaches and the right one only echoes it."""
    groups = GR1.group_slices()
    for right, left in zip(episodes, left_episodes):
        assert (right.length, right.jump_steps, right.grasp_start) == (left.length, left.jump_steps, left.grasp_start)
        np.testing.assert_array_equal(right.targets, left.targets)
        np.testing.assert_array_equal(right.state[0], left.state[0])
        np.testing.assert_array_equal(right.processed_actions[0], left.processed_actions[0])
        np.testing.assert_array_equal(right.render(0, 4), left.render(0, 4))  # the hand is still below the image
        r, lft = GR1.remap_action(right.processed_actions), GR1.remap_action(left.processed_actions)
        spread = {name: (np.ptp(r[:, s], axis=0).max(), np.ptp(lft[:, s], axis=0).max()) for name, s in groups.items()}
        for moved, still in (("left_arm", "right_arm"), ("left_hand", "right_hand")):
            assert spread[moved][1] > 3 * spread[moved][0], moved  # reach_left moves it, reach_right hardly
            assert spread[still][0] > 3 * spread[still][1], still  # and the other way round


def test_reach_left_hand_ends_at_the_target_seen(left_episodes):
    for ep in left_episodes:
        settled = np.ones(ep.length, bool)
        for start in [0, *ep.jump_steps]:
            settled[start : start + 2 * synth.ARM_RAMP] = False  # the ramp plus the state's lag
        hand_u, hand_v = synth.hand_position_in_image(ep.state, "left")
        np.testing.assert_allclose(ep.hand[:, :2], np.c_[hand_u, hand_v])  # the camera shows the left hand
        seen = target_from_image(ep.render())
        assert settled.any() and np.abs(ep.hand[settled, :2] - seen[settled]).max() < 0.03


def test_task_flag_and_its_limits(tmp_path):
    small = ["--episodes", "1", "--min-frames", "20", "--max-frames", "20", "--image-size", "16"]
    default, right, left = (tmp_path / f"{n}.hdf5" for n in ("default", "right", "left"))
    assert run_cli("synth", default, *small) == 0
    assert run_cli("synth", right, *small, "--task", "reach_right") == 0
    assert default.read_bytes() == right.read_bytes()  # the default is the right-hand reach, unchanged
    assert run_cli("synth", left, *small, "--task", "reach_left") == 0
    with MimicFile(left) as mimic:
        assert mimic.env_args["env_name"] == "Isaac-GR1T2-Synthetic-ReachLeft-v0"
    for other in (["--embodiment", "g1"], ["--motion", "smooth"], ["--task", "wave"]):
        assert run_cli("synth", tmp_path / "bad.hdf5", *small, "--task", "reach_left", *other) == 2, other
    assert not (tmp_path / "bad.hdf5").exists()
