"""`posttrain convert`: layout, values, video frames, determinism, shards, Arena YAML and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import ARENA_YAML, GOLDEN, REPO, run_cli
from posttrain import convert, lerobot, synth
from posttrain.lerobot import LeRobotDataset
from posttrain.video import probe, psnr

EMBODIMENT_DIR = REPO / "config" / "embodiments" / "gr1"
CAMERA = "robot_pov_cam_rgb"
WRIST = "wrist_cam"  # a second camera added to the numbered fixture: the negative of the first
TWO_CAMERAS = [
    "--camera",
    f"{CAMERA}=observation.images.ego_view",
    "--camera",
    f"{WRIST}=observation.images.wrist_view",
]


def policy_columns(kind: str) -> np.ndarray:
    """Sim column of each policy joint, straight from the YAML maps (independent of embodiment.py)."""
    sim = yaml.safe_load((EMBODIMENT_DIR / f"{54 if kind == 'state' else 36}dof_joint_space.yaml").read_text())
    groups = yaml.safe_load((EMBODIMENT_DIR / "gr00t_26dof_joint_space.yaml").read_text())["joints"]
    order = json.loads((EMBODIMENT_DIR / "modality.json").read_text())[kind]
    return np.array([sim["joints"][name] for group in order for name in groups[group]])


def comparable_files(root: Path, with_videos: bool = False) -> dict[str, bytes]:
    patterns = ["data/**/*.parquet", "meta/*"] + (["videos/**/*.mp4"] if with_videos else [])
    return {str(p.relative_to(root)): p.read_bytes() for pattern in patterns for p in sorted(root.glob(pattern))}


def hidden_temps(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def numbered_hdf5(tmp_path_factory) -> Path:
    """12 short demos (demo_10 and demo_11 sort before demo_2 as strings) with two cameras.

    Each frame carries its step number as the grey level of its top-left quadrant, so that
    consecutive frames always differ (the synthetic scene may stand still for a few steps).
    """
    path = tmp_path_factory.mktemp("numbered") / "numbered.hdf5"
    assert (
        run_cli(
            "synth",
            path,
            "--episodes",
            "12",
            "--min-frames",
            "5",
            "--max-frames",
            "9",
            "--image-size",
            "32",
            "--seed",
            "7",
        )
        == 0
    )
    with h5py.File(path, "a") as f:
        for demo in f["data"]:
            pov = f[f"data/{demo}/camera_obs/{CAMERA}"][()]
            pov[:, :16, :16] = (10 + 25 * np.arange(len(pov), dtype=np.uint8))[:, None, None, None]
            _replace(f, f"data/{demo}/camera_obs/{CAMERA}", pov)
            f.create_dataset(f"data/{demo}/camera_obs/{WRIST}", data=255 - pov, compression="gzip")
    return path


@pytest.fixture(scope="module")
def numbered_dataset(numbered_hdf5, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("numbered_out") / "lerobot"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, *TWO_CAMERAS, "--workers", "2") == 0
    return out


# --- content -------------------------------------------------------------------------------


def test_rows_frames_timestamps_and_values_match_hdf5(converted_dataset, synth_hdf5):
    ds = LeRobotDataset(converted_dataset)
    state_cols, action_cols = policy_columns("state"), policy_columns("action")
    assert len(set(state_cols)) == 26 and len(set(action_cols)) == 26
    source = ds.source
    assert source["hdf5"] == synth_hdf5.name and source["drop_frame"] == "first"
    first_index = 0
    with h5py.File(synth_hdf5, "r") as f:
        assert ds.num_episodes == len(f["data"]) == len(source["episodes"])
        for position, meta in enumerate(ds.episodes):
            ep = meta["episode_index"]
            entry = source["episodes"][position]
            assert entry["episode_index"] == ep == position
            demo = f["data"][entry["demo"]]
            sim_state = demo["obs/robot_joint_pos"][()]
            sim_action = demo["processed_actions"][()]
            assert entry["source_frames"] == len(sim_action) == entry["length"] + 1 == meta["length"] + 1
            cols = ds.read_episode(ep)
            rows = len(cols["timestamp"])
            assert rows == meta["length"]
            assert probe(ds.video_path(ep, "observation.images.ego_view"), count_frames=True).num_frames == rows
            np.testing.assert_allclose(cols["timestamp"], cols["frame_index"] / ds.fps, atol=1e-4)
            np.testing.assert_array_equal(cols["frame_index"], np.arange(rows))
            np.testing.assert_array_equal(cols["index"], first_index + np.arange(rows))
            np.testing.assert_array_equal(cols["episode_index"], np.full(rows, ep))
            assert cols["next.done"].tolist() == [False] * (rows - 1) + [True]
            # by-name remap: every policy joint has its own sim column (synth encodes the column
            # index in the values), so a wrong or shifted index shows up here
            np.testing.assert_array_equal(cols["observation.state"], sim_state[:-1][:, state_cols])
            np.testing.assert_array_equal(cols["action"], sim_action[:-1][:, action_cols])
            assert not np.array_equal(cols["observation.state"], sim_state[:-1][:, state_cols + 1])
            # row 0 is the rest pose plus 1e-3 x sim column: decode where each policy joint came from
            decoded_state = (cols["observation.state"][0] - synth.REST_STATE[state_cols]) / synth.INDEX_OFFSET
            decoded_action = (cols["action"][0] - synth.REST_ACTION[action_cols]) / synth.INDEX_OFFSET
            np.testing.assert_allclose(decoded_state, state_cols, atol=0.05)
            np.testing.assert_allclose(decoded_action, action_cols, atol=0.05)
            first_index += rows
    info = ds.info
    assert info["total_frames"] == first_index and info["total_episodes"] == ds.num_episodes
    assert info["total_chunks"] >= 1 and info["splits"] == {"train": f"0:{ds.num_episodes}"}
    assert info["total_videos"] == ds.num_episodes


def test_schema_matches_golden_episode(converted_dataset):
    golden = pq.read_table(GOLDEN / "data/chunk-000/episode_000000.parquet").schema
    ours = pq.read_table(LeRobotDataset(converted_dataset).parquet_path(0)).schema
    # the golden episode predates Arena PR #109, which renamed the annotation column
    assert "human.task_description" in golden.names and lerobot.DEFAULT_ANNOTATION in ours.names
    rename = {"human.task_description": lerobot.DEFAULT_ANNOTATION}
    assert [rename.get(n, n) for n in golden.names] == ours.names
    assert [str(golden.field(n).type) for n in golden.names] == [
        str(ours.field(rename.get(n, n)).type) for n in golden.names
    ]
    golden_info = json.loads((GOLDEN / "meta/info.json").read_text())
    info = json.loads((converted_dataset / "meta/info.json").read_text())
    assert list(info) == list(golden_info)
    golden_features = {rename.get(k, k): v for k, v in golden_info["features"].items()}
    assert list(info["features"]) == list(golden_features)
    # the golden entries plus lerobot's spellings: "names" on every column (null where the golden has
    # none), and for the video "channels" in its names and `info` beside `video_info`
    for key, feature in golden_features.items():
        lerobot_keys = {"names"} | ({"info"} if feature["dtype"] == "video" else set())
        assert set(info["features"][key]) == set(feature) | lerobot_keys, key
        if feature["dtype"] != "video":
            assert info["features"][key] == {"names": None, **feature}, key
    video = info["features"]["observation.images.ego_view"]
    assert video["names"] == ["height", "width", "channels"]
    assert video["info"] == dict(video["video_info"], **{"video.fps": 50})
    assert set(video["video_info"]) == set(golden_features["observation.images.ego_view"]["video_info"])
    assert video["video_info"]["video.codec"] == "h264" and video["video_info"]["video.pix_fmt"] == "yuv420p"
    assert video["video_info"]["video.fps"] == 50.0 and video["shape"] == [64, 64, 3]
    modality = json.loads((converted_dataset / "meta/modality.json").read_text())
    assert modality == json.loads((GOLDEN / "meta/modality.json").read_text())
    tasks = lerobot.read_jsonl(converted_dataset / "meta/tasks.jsonl")
    assert tasks == [{"task_index": 0, "task": LeRobotDataset(converted_dataset).source["language_instruction"]}]


def test_drop_frame_first_and_last_select_the_right_video_frames(numbered_hdf5, numbered_dataset, tmp_path):
    last = tmp_path / "last"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", last, "--drop-frame", "last", "--workers", "2") == 0
    assert LeRobotDataset(last).source["drop_frame"] == "last"
    with h5py.File(numbered_hdf5, "r") as f:
        for ep in (0, 11):
            demo = LeRobotDataset(last).source["episodes"][ep]["demo"]
            frames = f[f"data/{demo}/camera_obs/{CAMERA}"][()]
            video_first = LeRobotDataset(numbered_dataset).read_video(ep, "observation.images.ego_view")
            video_last = LeRobotDataset(last).read_video(ep, "observation.images.ego_view")
            assert len(video_first) == len(video_last) == len(frames) - 1
            for i in range(len(frames) - 1):
                # "first": video frame i is the render of step i+1; "last": of step i
                assert psnr(video_first[i], frames[i + 1]) > psnr(video_first[i], frames[i]) + 3
                assert psnr(video_last[i], frames[i]) > psnr(video_last[i], frames[i + 1]) + 3
            # state/action rows are the same in both modes
            a = LeRobotDataset(last).read_episode(ep, ["observation.state", "action"])
            b = LeRobotDataset(numbered_dataset).read_episode(ep, ["observation.state", "action"])
            np.testing.assert_array_equal(a["observation.state"], b["observation.state"])
            np.testing.assert_array_equal(a["action"], b["action"])


def test_numeric_demo_order_and_two_cameras(numbered_hdf5, numbered_dataset):
    ds = LeRobotDataset(numbered_dataset)
    assert [e["demo"] for e in ds.source["episodes"]] == [f"demo_{i}" for i in range(12)]
    assert ds.source["cameras"] == {CAMERA: "observation.images.ego_view", WRIST: "observation.images.wrist_view"}
    assert ds.video_keys == ["observation.images.ego_view", "observation.images.wrist_view"]
    assert ds.info["total_videos"] == 24
    assert ds.modality["video"] == {
        "ego_view": {"original_key": "observation.images.ego_view"},
        "wrist_view": {"original_key": "observation.images.wrist_view"},
    }
    with h5py.File(numbered_hdf5, "r") as f:
        for ep in (2, 10):  # demo_10 is episode 10, not 2
            demo = f[f"data/demo_{ep}"]
            cols = ds.read_episode(ep, ["observation.state"])
            np.testing.assert_array_equal(
                cols["observation.state"], demo["obs/robot_joint_pos"][:-1][:, policy_columns("state")]
            )
            wrist = ds.read_video(ep, "observation.images.wrist_view")
            expected = demo[f"camera_obs/{WRIST}"][1:]
            assert len(wrist) == len(cols["observation.state"]) == ds.episodes[ep]["length"]
            assert min(psnr(a, b) for a, b in zip(wrist, expected)) > 30


# --- reproducibility, shards, crash safety -------------------------------------------------


def test_same_input_gives_identical_bytes(numbered_hdf5, numbered_dataset, tmp_path):
    again = tmp_path / "again"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", again, *TWO_CAMERAS, "--workers", "1") == 0
    assert comparable_files(again, with_videos=True) == comparable_files(numbered_dataset, with_videos=True)
    assert len(comparable_files(again)) == 12 + 5


def test_shards_then_gather_equal_whole_conversion(numbered_hdf5, numbered_dataset, tmp_path):
    shards = [tmp_path / f"shard{k}" for k in range(3)]
    for k, shard in enumerate(shards):
        assert (
            run_cli(
                "convert",
                "--input",
                numbered_hdf5,
                "--output",
                shard,
                *TWO_CAMERAS,
                "--shard",
                k,
                "--num-shards",
                3,
                "--workers",
                "1",
            )
            == 0
        )
        manifest = json.loads((shard / "shard.json").read_text())
        assert [e["episode_index"] for e in manifest["episodes"]] == list(range(k, 12, 3))
        assert not (shard / "meta").exists()
    out = tmp_path / "gathered"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, *TWO_CAMERAS, "--gather", *shards) == 0
    assert comparable_files(out, with_videos=True) == comparable_files(numbered_dataset, with_videos=True)
    assert not (out / "shard.json").exists()


def test_gather_names_missing_episodes_and_stale_settings(numbered_hdf5, tmp_path, capsys):
    shards = [tmp_path / f"shard{k}" for k in range(2)]
    for k, shard in enumerate(shards):
        assert (
            run_cli(
                "convert",
                "--input",
                numbered_hdf5,
                "--output",
                shard,
                "--shard",
                k,
                "--num-shards",
                2,
                "--workers",
                "1",
            )
            == 0
        )
    capsys.readouterr()
    out = tmp_path / "gathered"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, "--gather", shards[0]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "numbered.hdf5" in err and "1 (demo_1)" in err and "11 (demo_11)" in err
    assert not out.exists()
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, "--gather", *shards, "--fps", "25") == 2
    err = capsys.readouterr().err.strip()
    assert "shard.json" in err and "settings.fps" in err
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, "--gather", shards[0], shards[0]) == 2
    assert "also in" in capsys.readouterr().err
    assert not out.exists()


def test_kill_9_leaves_no_output_and_rerun_is_identical(numbered_hdf5, numbered_dataset, tmp_path):
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "posttrain.cli",
        "convert",
        "--input",
        str(numbered_hdf5),
        "--output",
        str(out),
        *TWO_CAMERAS,
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(list(temp.rglob("*.mp4")) for temp in hidden_temps(tmp_path)):  # (beside it: .killed.lock)
        assert proc.poll() is None and time.monotonic() < deadline, "converter ended before it could be killed"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, as a scheduler would (ffmpeg children included)
    proc.wait()
    assert not out.exists() and hidden_temps(tmp_path), "a killed run must leave only its hidden temp dir"
    assert run_cli("convert", "--input", numbered_hdf5, "--output", out, *TWO_CAMERAS, "--workers", "2") == 0
    assert hidden_temps(tmp_path) == []
    assert comparable_files(out, with_videos=True) == comparable_files(numbered_dataset, with_videos=True)


# --- Arena YAML ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arena_dir(tmp_path_factory) -> Path:
    """A data_root holding a 512² synthetic file named like the YAML's hdf5_name."""
    root = tmp_path_factory.mktemp("arena")
    name = yaml.safe_load(ARENA_YAML.read_text())["hdf5_name"]
    assert (
        run_cli(
            "synth",
            root / name,
            "--episodes",
            "2",
            "--min-frames",
            "3",
            "--max-frames",
            "4",
            "--image-size",
            "512",
            "--seed",
            "1",
        )
        == 0
    )
    return root


def arena_yaml(tmp_path: Path, data_root: Path, **changes) -> Path:
    """The shipped Arena YAML with data_root (and the given keys) rewritten, line by line."""
    changes = {"data_root": str(data_root), **changes}
    lines = ARENA_YAML.read_text().splitlines()
    for key, value in changes.items():
        line = f"{key}: {json.dumps(value)}"
        matches = [i for i, old in enumerate(lines) if old.startswith(f"{key}:")]
        if matches:
            lines[matches[0]] = line
        else:
            lines.append(line)
    path = tmp_path / "arena.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_arena_yaml_is_accepted_unchanged(arena_dir, tmp_path):
    config = arena_yaml(tmp_path, arena_dir)
    expected = yaml.safe_load(ARENA_YAML.read_text())
    assert run_cli("convert", "--config", config, "--workers", "1") == 0
    out = arena_dir / Path(expected["hdf5_name"]).stem / "lerobot"
    ds = LeRobotDataset(out)
    assert ds.info["robot_type"] == "gr1" and ds.fps == 50 and ds.num_episodes == 2
    assert ds.tasks == {0: expected["language_instruction"]}
    assert ds.source["cameras"] == {"robot_pov_cam_rgb": "observation.images.ego_view"}
    assert ds.info["features"]["observation.images.ego_view"]["shape"] == [512, 512, 3]
    assert len(ds.read_video(0, "observation.images.ego_view", size=(64, 64))) == ds.episodes[0]["length"]
    # flags override the YAML
    other = tmp_path / "other"
    assert (
        run_cli(
            "convert",
            "--config",
            config,
            "--output",
            other,
            "--fps",
            "25",
            "--language-instruction",
            "open it",
            "--workers",
            "1",
        )
        == 0
    )
    assert LeRobotDataset(other).fps == 25 and LeRobotDataset(other).tasks == {0: "open it"}


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"bogus_option": 1}, "unknown key 'bogus_option'"),
        ({"target_image_size": [256, 256, 3]}, "not supported"),
        (
            {"original_image_size": [256, 256, 3], "target_image_size": [256, 256, 3]},
            "camera_obs/robot_pov_cam_rgb: frame shape [512, 512, 3] != original_image_size [256, 256, 3]",
        ),
        ({"state_name_sim": "robot_joint_position"}, "data/demo_0/obs/robot_joint_position: missing"),
        ({"pov_cam_name_sim": "robot_head_cam"}, "data/demo_0/camera_obs/robot_head_cam: missing"),
        ({"data_path": "data/{episode_index}.parquet"}, "data_path"),
    ],
)
def test_arena_yaml_errors(arena_dir, tmp_path, capsys, changes, expected):
    config = arena_yaml(tmp_path, arena_dir, **changes)
    assert run_cli("convert", "--config", config, "--output", tmp_path / "out", "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and expected in err
    assert ("arena.yaml" in err) or ("ranch_bottle_into_fridge_generated_100.hdf5" in err)
    assert not (tmp_path / "out").exists()


# --- bad inputs: one error line naming file, demo and key; exit 2; no output ----------------


@pytest.fixture(scope="module")
def tiny_hdf5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.hdf5"
    assert (
        run_cli(
            "synth",
            path,
            "--episodes",
            "3",
            "--min-frames",
            "4",
            "--max-frames",
            "6",
            "--image-size",
            "16",
            "--seed",
            "2",
        )
        == 0
    )
    return path


def _replace(f: h5py.File, key: str, data) -> None:
    del f[key]
    f.create_dataset(key, data=data)


def _nan(f):
    state = f["data/demo_1/obs/robot_joint_pos"][()]
    state[2, 5] = np.nan
    _replace(f, "data/demo_1/obs/robot_joint_pos", state)


def _inf(f):
    action = f["data/demo_2/processed_actions"][()]
    action[0, 3] = np.inf
    _replace(f, "data/demo_2/processed_actions", action)


def _zero_length(f):
    demo = f["data/demo_1"]
    for key in ("processed_actions", "obs/robot_joint_pos", f"camera_obs/{CAMERA}"):
        _replace(f, f"data/demo_1/{key}", demo[key][:0])
    demo.attrs["num_samples"] = 0


def _short_action(f):
    _replace(f, "data/demo_2/processed_actions", f["data/demo_2/processed_actions"][:-1])
    f["data/demo_2"].attrs["num_samples"] = f["data/demo_2/processed_actions"].shape[0]


DAMAGE = {
    "missing camera group": (
        lambda f: f["data/demo_1"].__delitem__("camera_obs"),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb", "missing"],
    ),
    "mismatched lengths": (_short_action, ["data/demo_2/", "rows"]),
    "zero-length demo": (_zero_length, ["data/demo_1/processed_actions", "0 rows"]),
    "NaN": (_nan, ["data/demo_1/obs/robot_joint_pos", "NaN at row 2, column 5"]),
    "inf": (_inf, ["data/demo_2/processed_actions", "inf at row 0, column 3"]),
    "wrong dtype": (
        lambda f: _replace(f, "data/demo_0/processed_actions", f["data/demo_0/processed_actions"][()].astype(np.int32)),
        ["data/demo_0/processed_actions", "dtype int32"],
    ),
    "wrong shape": (
        lambda f: _replace(f, "data/demo_1/obs/robot_joint_pos", f["data/demo_1/obs/robot_joint_pos"][:, :53]),
        ["data/demo_1/obs/robot_joint_pos", "expected (T, 54)"],
    ),
    "camera size differs between demos": (
        lambda f: _replace(f, f"data/demo_2/camera_obs/{CAMERA}", f[f"data/demo_2/camera_obs/{CAMERA}"][:, :8, :8]),
        [f"data/demo_2/camera_obs/{CAMERA}", "frame shape [8, 8, 3] differs"],
    ),
    "wrong image dtype": (
        lambda f: _replace(
            f, f"data/demo_0/camera_obs/{CAMERA}", f[f"data/demo_0/camera_obs/{CAMERA}"][()].astype(np.float32)
        ),
        [f"data/demo_0/camera_obs/{CAMERA}", "uint8"],
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_bad_hdf5_is_rejected_before_any_output(tiny_hdf5, tmp_path, capsys, case):
    damage, expected = DAMAGE[case]
    bad = tmp_path / "bad.hdf5"
    shutil.copy(tiny_hdf5, bad)
    with h5py.File(bad, "a") as f:
        damage(f)
    out = tmp_path / "out"
    assert run_cli("convert", "--input", bad, "--output", out, "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad.hdf5: ") and "\n" not in err, err
    for part in expected:
        assert part in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.hdf5"]  # no output, no temp dir


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--state-key", "obs/robot_joint_position", "data/demo_0/obs/robot_joint_position: missing"),
        ("--action-key", "actions_processed", "data/demo_0/actions_processed: missing"),
        ("--camera", "robot_head_cam=observation.images.ego_view", "data/demo_0/camera_obs/robot_head_cam: missing"),
    ],
)
def test_wrong_keys_are_named(tiny_hdf5, tmp_path, capsys, flag, value, expected):
    out = tmp_path / "out"
    assert run_cli("convert", "--input", tiny_hdf5, "--output", out, flag, value) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: tiny.hdf5: ") and expected in err and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("content", [b"this is not an HDF5 file\n", "truncated"])
def test_unreadable_file_is_rejected(tiny_hdf5, tmp_path, capsys, content):
    bad = tmp_path / "broken.hdf5"
    data = tiny_hdf5.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if content == "truncated" else content)
    out = tmp_path / "out"
    assert run_cli("convert", "--input", bad, "--output", out) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "broken.hdf5" in err and "\n" not in err
    assert not out.exists()


def test_embodiment_without_a_policy_joint_is_rejected(tiny_hdf5, tmp_path, capsys):
    emb = tmp_path / "gr1_broken"
    shutil.copytree(EMBODIMENT_DIR, emb)
    state_map = emb / "54dof_joint_space.yaml"
    lines = state_map.read_text().splitlines(keepends=True)
    state_map.write_text("".join(line for line in lines if "L_thumb_proximal_pitch_joint" not in line))
    out = tmp_path / "out"
    assert run_cli("convert", "--input", tiny_hdf5, "--output", out, "--embodiment", emb) == 2
    err = capsys.readouterr().err.strip()
    assert "54dof_joint_space.yaml" in err and "L_thumb_proximal_pitch_joint" in err and "\n" not in err
    assert not out.exists()


def test_shard_arguments_are_checked(tiny_hdf5, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("convert", "--input", tiny_hdf5, "--output", out, "--shard", "3", "--num-shards", "3") == 2
    assert "--shard" in capsys.readouterr().err
    assert run_cli("convert", "--input", tiny_hdf5, "--output", out, "--camera", "no_equals_sign") == 2
    assert "NAME=VIDEO_KEY" in capsys.readouterr().err
    assert not out.exists()


def test_video_with_wrong_frame_count_fails_without_output(tiny_hdf5, tmp_path, capsys, monkeypatch):
    """The post-encode check: an MP4 whose decoded frame count differs from the rows is an error."""
    real_probe = convert.probe

    def probe_one_short(path, count_frames=False):
        info = real_probe(path, count_frames)
        return dataclasses.replace(info, num_frames=info.num_frames - 1)

    monkeypatch.setattr(convert, "probe", probe_one_short)
    out = tmp_path / "out"
    assert run_cli("convert", "--input", tiny_hdf5, "--output", out, "--workers", "1") == 2
    err = capsys.readouterr().err.strip()
    assert "tiny.hdf5: data/demo_0/camera_obs/robot_pov_cam_rgb" in err and "one per parquet row" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
