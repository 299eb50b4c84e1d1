"""`posttrain stats`: GR00T stats.json reproduced on the golden episode, lerobot episodes_stats, relative stats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import GOLDEN, REPO, run_cli
from posttrain import lerobot, statistics
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
    info = lerobot.build_info(robot_type="gr1", episode_lengths=list(lengths), num_tasks=1, fps=50,
                              chunks_size=1000, features=lerobot.tabular_features(tables[0]), video_keys=[])
    write_json_atomic(root / "meta/info.json", info)
    write_text_atomic(root / "meta/episodes.jsonl", lerobot.jsonl(
        [{"episode_index": ep, "tasks": ["reach"], "length": n} for ep, n in enumerate(lengths)]))
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
        agg = statistics.aggregate_episode_stats([line["stats"][name] for line in lines])
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
                chunks.append(cols["action"][i:i + 3, lo:hi] - cols["observation.state"][i, lo:hi])
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
        np.testing.assert_allclose(statistics.quantile_linear(x, q), np.quantile(x.astype(np.float64), q, axis=0),
                                   rtol=1e-6, atol=1e-7)


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
