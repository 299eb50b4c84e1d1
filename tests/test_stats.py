"""`posttrain stats`: GR00T stats.json reproduced on the golden episode, lerobot episodes_stats, relative stats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import GOLDEN, REPO, run_cli
from posttrain import lerobot, stats_math, video
from posttrain.files import write_json_atomic, write_text_atomic


def make_tabular_dataset(root, lengths, seed=0):
    """A small video-less v2.1 dataset written with the format module (independent of convert)."""
    rng = np.random.default_rng(seed)
    first, tables = 0, []
    for ep, n in enumerate(lengths):
        state = rng.normal(size=(n, 26)).astype(np.float32)
        action = (state + rng.normal(scale=0.1, size=(n, 26))).astype(np.float32)
        table = lerobot.episode_columns(state, action, ep, first, fps=50, task_index=0)
        lerobot.write_table(root / lerobot.DATA_PATH.format(episode_chunk=0, episode_index=ep), table)
        tables.append(table)
        first += n
    info = lerobot.build_info(
        robot_type="gr1",
        episode_lengths=list(lengths),
        num_tasks=1,
        fps=50,
        chunks_size=1000,
        features=lerobot.tabular_features(tables[0]),
        video_keys=[],
    )
    write_json_atomic(root / "meta/info.json", info)
    write_text_atomic(
        root / "meta/episodes.jsonl",
        lerobot.jsonl([{"episode_index": ep, "tasks": ["reach"], "length": n} for ep, n in enumerate(lengths)]),
    )
    write_text_atomic(root / "meta/tasks.jsonl", lerobot.jsonl([{"task_index": 0, "task": "reach"}]))
    shutil.copy(REPO / "config/embodiments/gr1/modality.json", root / "meta/modality.json")
    return root


@pytest.fixture
def tabular(tmp_path):
    return make_tabular_dataset(tmp_path / "ds", [30, 7, 45, 12])


def read_columns(root, ep):
    table = pq.read_table(root / lerobot.DATA_PATH.format(episode_chunk=0, episode_index=ep))
    return {name: lerobot.column_to_numpy(table.column(name)) for name in table.column_names}


def test_golden_stats_reproduced(tmp_path):
    root = tmp_path / "golden"
    shutil.copytree(GOLDEN, root)
    golden = json.loads((GOLDEN / "meta/stats.json").read_text())
    (root / "meta/stats.json").unlink()
    # the golden copy ships no video; its camera's per-episode stats need one (any frames will do)
    frames = np.random.default_rng(0).integers(0, 256, (152, 32, 32, 3), dtype=np.uint8)
    path = lerobot.LeRobotDataset(root).video_path(0, "observation.images.ego_view")
    path.parent.mkdir(parents=True)
    video.encode_video(path, frames, fps=20)
    assert run_cli("stats", root, "--workers", "1") == 0
    ours = json.loads((root / "meta/stats.json").read_text())
    assert list(ours) == list(golden)  # all 11 columns, in the same order
    for column, stats in golden.items():
        assert list(ours[column]) == list(stats)
        for key, ref in stats.items():
            np.testing.assert_allclose(ours[column][key], ref, rtol=1e-5, atol=1e-9, err_msg=f"{column}.{key}")
            if key in ("min", "max", "q01", "q99"):  # order statistics: bit for bit GR00T's numbers
                assert ours[column][key] == ref, f"{column}.{key}"


def test_rerun_is_byte_identical_and_stale_relative_removed(tabular):
    assert run_cli("stats", tabular, "--relative-groups", "right_arm", "--action-horizon", "4") == 0
    meta = tabular / "meta"
    first = {name: (meta / name).read_bytes() for name in ("stats.json", "episodes_stats.jsonl", "relative_stats.json")}
    assert run_cli("stats", tabular, "--relative-groups", "right_arm", "--action-horizon", "4", "--workers", "3") == 0
    assert first == {name: (meta / name).read_bytes() for name in first}
    assert run_cli("stats", tabular) == 0
    assert not (meta / "relative_stats.json").exists()
    assert (meta / "stats.json").read_bytes() == first["stats.json"]


def test_episodes_stats_match_numpy_and_aggregate_to_global(tabular):
    assert run_cli("stats", tabular) == 0
    lines = lerobot.read_jsonl(tabular / "meta/episodes_stats.jsonl")
    assert [line["episode_index"] for line in lines] == [0, 1, 2, 3]
    for line in lines:
        columns = read_columns(tabular, line["episode_index"])
        assert set(line["stats"]) == set(columns)  # every column of this layout is numeric
        for name, values in columns.items():
            values = values.astype(np.float64).reshape(len(values), -1)
            got = line["stats"][name]
            assert got["count"] == [len(values)]
            np.testing.assert_allclose(got["mean"], values.mean(0), rtol=1e-12)
            np.testing.assert_allclose(got["std"], values.std(0), rtol=1e-12, atol=1e-15)
            assert got["min"] == values.min(0).tolist() and got["max"] == values.max(0).tolist()

    global_stats = json.loads((tabular / "meta/stats.json").read_text())
    for name in global_stats:
        agg = stats_math.aggregate_episode_stats([line["stats"][name] for line in lines])
        np.testing.assert_allclose(agg["mean"], global_stats[name]["mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(agg["std"], global_stats[name]["std"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(agg["min"], global_stats[name]["min"], rtol=1e-6)
        assert agg["count"][0] == 30 + 7 + 45 + 12


def test_global_stats_match_numpy_over_all_frames(tabular):
    assert run_cli("stats", tabular) == 0
    stats = json.loads((tabular / "meta/stats.json").read_text())
    action = np.concatenate([read_columns(tabular, ep)["action"] for ep in range(4)])
    np.testing.assert_allclose(stats["action"]["mean"], action.astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["action"]["q01"], np.quantile(action.astype(np.float64), 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["q99"], np.quantile(action.astype(np.float64), 0.99, axis=0), rtol=1e-6)
    assert stats["timestamp"]["max"] == [np.float32(44 / 50)]  # longest episode: 45 frames at 50 fps, as float32
    assert stats["index"]["max"] == [93.0]


def test_relative_stats_by_hand(tmp_path):
    lengths = [5, 3, 2]  # horizon 3: 3 + 1 + 0 chunks
    root = make_tabular_dataset(tmp_path / "ds", lengths, seed=1)
    assert run_cli("stats", root, "--relative-groups", "left_arm,right_hand", "--action-horizon", "3") == 0
    rel = json.loads((root / "meta/relative_stats.json").read_text())
    assert list(rel) == ["left_arm", "right_hand"]
    for group, (lo, hi) in {"left_arm": (0, 7), "right_hand": (20, 26)}.items():
        chunks = []
        for ep, n in enumerate(lengths):
            cols = read_columns(root, ep)
            for i in range(n - 2):
                chunks.append(cols["action"][i : i + 3, lo:hi] - cols["observation.state"][i, lo:hi])
        chunks = np.stack(chunks).astype(np.float64)
        assert chunks.shape == (4, 3, hi - lo)
        assert list(rel[group]) == ["max", "min", "q01", "q99", "mean", "std"]
        np.testing.assert_allclose(rel[group]["mean"], chunks.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rel[group]["std"], chunks.std(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rel[group]["max"], chunks.max(0), rtol=1e-6)
        np.testing.assert_allclose(rel[group]["min"], chunks.min(0), rtol=1e-6)
        np.testing.assert_allclose(rel[group]["q01"], np.quantile(chunks, 0.01, axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(rel[group]["q99"], np.quantile(chunks, 0.99, axis=0), rtol=1e-5, atol=1e-7)


def test_quantile_matches_numpy_linear():
    x = np.random.default_rng(0).normal(size=(1001, 3)).astype(np.float32)
    for q in (0.01, 0.5, 0.99, 0.0, 1.0):
        np.testing.assert_allclose(
            stats_math.quantile_linear(x, q), np.quantile(x.astype(np.float64), q, axis=0), rtol=1e-6, atol=1e-7
        )


def test_bad_relative_group(tabular, capsys):
    assert run_cli("stats", tabular, "--relative-groups", "left_leg") == 2
    err = capsys.readouterr().err
    assert "modality.json" in err and "'left_leg'" in err and "not an action group" in err
    assert not (tabular / "meta/stats.json").exists()


def test_horizon_longer_than_every_episode(tabular, capsys):
    assert run_cli("stats", tabular, "--relative-groups", "left_arm", "--action-horizon", "50") == 2
    err = capsys.readouterr().err
    assert "'left_arm'" in err and "at least 50 frames" in err
    assert not (tabular / "meta/stats.json").exists()


def test_nan_is_an_error(tabular, capsys):
    path = tabular / lerobot.DATA_PATH.format(episode_chunk=0, episode_index=2)
    table = pq.read_table(path)
    action = lerobot.column_to_numpy(table.column("action")).copy()
    action[5, 3] = np.nan
    state = lerobot.column_to_numpy(table.column("observation.state"))
    lerobot.write_table(path, lerobot.episode_columns(state, action, 2, 37, 50, 0))
    assert run_cli("stats", tabular) == 2
    err = capsys.readouterr().err
    assert "episode_000002.parquet" in err and "episode 2" in err and "action" in err and "frame 5" in err


def test_row_count_mismatch_is_an_error(tabular, capsys):
    lines = lerobot.read_jsonl(tabular / "meta/episodes.jsonl")
    lines[1]["length"] += 1
    write_text_atomic(tabular / "meta/episodes.jsonl", lerobot.jsonl(lines))
    assert run_cli("stats", tabular) == 2
    err = capsys.readouterr().err
    assert "episode_000001.parquet" in err and "7 rows" in err and "says 8" in err


# --- camera stats (lerobot's per-episode image stats) -------------------------------------------
def lerobot_image_stats(frames_nhwc: np.ndarray, length: int) -> dict:
    """The reference, written from lerobot v2.1's documented rule (shared/docs §11): a sample of
    max(min(100, n), min(int(n**0.75), 10000)) evenly spaced frames, sides >= 300 px strided to
    ~150 px, per-channel stats over (N, H, W) of CHW frames, divided by 255, shape (3, 1, 1)."""
    count = max(min(100, length), min(int(length**0.75), 10_000))
    picked = frames_nhwc[np.round(np.linspace(0, length - 1, count)).astype(int)].transpose(0, 3, 1, 2)
    _, _, height, width = picked.shape
    if max(height, width) >= 300:
        stride = int(width / 150) if width > height else int(height / 150)
        picked = picked[:, :, ::stride, ::stride]
    stats = {
        name: fn(picked, axis=(0, 2, 3), keepdims=True)
        for name, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
    }
    return {**{k: np.squeeze(v / 255.0, axis=0) for k, v in stats.items()}, "count": [count]}


def add_camera(root, size, seed=0):
    """Encode a video per episode of a tabular dataset and list the camera in info.json."""
    data = lerobot.LeRobotDataset(root)
    rng = np.random.default_rng(seed)
    key = "observation.images.front"
    info = dict(
        data.info,
        video_path=lerobot.VIDEO_PATH,
        total_videos=len(data.episodes),
        features={key: lerobot.video_feature(size[0], size[1], 50), **data.info["features"]},
    )
    write_json_atomic(root / "meta/info.json", info)
    data = lerobot.LeRobotDataset(root)
    for episode in data.episodes:
        n = episode["length"]
        y, x = np.mgrid[0 : size[0], 0 : size[1]]
        frames = np.stack(
            [np.stack([(x + 3 * i) % 256, (y * 2 + i) % 256, np.full_like(x, 40 + i % 100)], -1) for i in range(n)]
        ).astype(np.uint8)
        frames[:, :8] = rng.integers(0, 256, frames[:, :8].shape, dtype=np.uint8)  # some noise: std > 0
        path = data.video_path(episode["episode_index"], key)
        path.parent.mkdir(parents=True, exist_ok=True)
        video.encode_video(path, frames, fps=50)
    return key


def assert_camera_stats_as_lerobot(root, key):
    data = lerobot.LeRobotDataset(root)
    lines = lerobot.read_jsonl(root / "meta/episodes_stats.jsonl")
    for line, episode in zip(lines, data.episodes):
        assert list(line["stats"])[0] == key  # cameras first, as in info.json
        got, length = line["stats"][key], episode["length"]
        want = lerobot_image_stats(data.read_video(episode["episode_index"], key), length)
        assert got["count"] == want["count"]
        for stat in ("min", "max", "mean", "std"):
            assert np.asarray(got[stat]).shape == (3, 1, 1)
            np.testing.assert_allclose(got[stat], want[stat], rtol=1e-12, atol=1e-15, err_msg=stat)
    return lines


def test_camera_stats_of_a_converted_dataset_as_lerobot_computes_them(copy_dataset):
    root = copy_dataset()
    (root / "meta/episodes_stats.jsonl").unlink()
    assert run_cli("stats", root, "--workers", "2") == 0
    lines = assert_camera_stats_as_lerobot(root, "observation.images.ego_view")
    # episodes shorter than 100 frames use every frame
    assert [line["stats"]["observation.images.ego_view"]["count"] for line in lines] == [
        [e["length"]] for e in lerobot.LeRobotDataset(root).episodes
    ]


def test_camera_stats_sample_long_episodes_and_stride_large_frames(tmp_path):
    root = make_tabular_dataset(tmp_path / "ds", [130, 20])
    key = add_camera(root, (304, 320))  # a side >= 300 px: strided by int(320 / 150) = 2
    assert run_cli("stats", root) == 0
    lines = assert_camera_stats_as_lerobot(root, key)
    assert [line["stats"][key]["count"] for line in lines] == [[100], [20]]
    # lerobot aggregates them (weighted by sampled frames) into the normaliser's (3, 1, 1) mean/std
    agg = stats_math.aggregate_episode_stats([line["stats"][key] for line in lines])
    assert agg["mean"].shape == (3, 1, 1) and agg["count"].tolist() == [120]
    assert run_cli("verify", root, "--output", tmp_path / "verify", "--preview-episodes", "0") == 0


def test_image_sample_counts_and_strides():
    counts = {n: stats_math.image_sample_count(n) for n in (1, 60, 100, 500, 1000, 2000, 10_000, 20_000, 10**6)}
    assert counts == {1: 1, 60: 60, 100: 100, 500: 105, 1000: 177, 2000: 299, 10_000: 1000, 20_000: 1681, 10**6: 10_000}
    indices = stats_math.image_sample_indices(1000)
    assert len(indices) == 177 and indices[0] == 0 and indices[-1] == 999 and indices == sorted(set(indices))
    assert [
        stats_math.downsample_stride(h, w) for h, w in ((64, 64), (299, 299), (300, 200), (512, 512), (480, 640))
    ] == [1, 1, 2, 3, 4]


def test_int_and_bool_stats_keep_their_type(tabular):
    assert run_cli("stats", tabular) == 0
    line = lerobot.read_jsonl(tabular / "meta/episodes_stats.jsonl")[0]["stats"]
    assert line["index"]["min"] == [0] and type(line["index"]["max"][0]) is int
    assert line["next.done"]["min"] == [False] and line["next.done"]["max"] == [True]
    assert type(line["next.reward"]["max"][0]) is float and type(line["index"]["mean"][0]) is float
    assert line["index"]["count"] == [30]


def test_missing_video_names_episode_and_camera(tmp_path, capsys):
    root = make_tabular_dataset(tmp_path / "ds", [12, 9])
    key = add_camera(root, (32, 32))
    lerobot.LeRobotDataset(root).video_path(1, key).unlink()
    assert run_cli("stats", root) == 2
    err = capsys.readouterr().err
    assert "episode 1, camera observation.images.front" in err and "episode_000001.mp4" in err
    assert not (root / "meta/stats.json").exists()


@pytest.mark.parametrize("damage", ["missing", "shape", "count"])
def test_verify_checks_the_camera_entries(tmp_path, capsys, damage):
    root = make_tabular_dataset(tmp_path / "ds", [12, 9])
    key = add_camera(root, (32, 32))
    assert run_cli("stats", root) == 0
    lines = lerobot.read_jsonl(root / "meta/episodes_stats.jsonl")
    camera = lines[1]["stats"][key]
    if damage == "missing":
        del lines[1]["stats"][key]
    elif damage == "shape":
        camera["mean"] = [m[0][0] for m in camera["mean"]]  # (3,) instead of (3, 1, 1)
    else:
        camera["count"] = [5]
    write_text_atomic(root / "meta/episodes_stats.jsonl", lerobot.jsonl(lines))
    assert run_cli("verify", root, "--output", tmp_path / "verify", "--preview-episodes", "0") == 2
    err = capsys.readouterr().err
    expected = {
        "missing": "missing (rerun `posttrain stats`)",
        "shape": "mean: shape [3], expected [3, 1, 1]",
        "count": "count [5], expected [9] sampled frames of 9",
    }[damage]
    assert f"episode 1: episodes_stats: meta/episodes_stats.jsonl: {key}: {expected}" in err
