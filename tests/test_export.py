"""`posttrain export --format lerobot-v3`: the v3.0 copy holds the same rows, frames and GR00T meta.

That lerobot itself loads the copy is tested in test_lerobot_client.py (isolated lerobot 0.4.4, slow).
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from posttrain import export, lerobot, stats_math, video
from posttrain.files import write_text_atomic

CAMERA = "observation.images.ego_view"


def small_files(monkeypatch, dataset):
    """File size limits that put two or three episodes in each file, so episodes cross file borders."""
    data = lerobot.LeRobotDataset(dataset)
    sizes = [data.video_path(e["episode_index"], CAMERA).stat().st_size for e in data.episodes]
    monkeypatch.setattr(export, "VIDEO_FILE_MB", 2.5 * max(sizes) / 2**20)
    parquet = [data.parquet_path(e["episode_index"]).stat().st_size for e in data.episodes]
    monkeypatch.setattr(export, "DATA_FILE_MB", 2.5 * max(parquet) / 2**20)


@pytest.fixture(scope="module")
def exported(converted_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "v3"
    with pytest.MonkeyPatch.context() as monkeypatch:
        small_files(monkeypatch, converted_dataset)
        assert run_cli("export", "--format", "lerobot-v3", converted_dataset, "--output", out) == 0
    return out


def episodes(root):
    return pq.read_table(root / export.EPISODES_PATH).to_pylist()


def test_info_is_v3_with_the_same_features(converted_dataset, exported):
    source = lerobot.read_json(converted_dataset / "meta/info.json")
    info = lerobot.read_json(exported / "meta/info.json")
    assert info["codebase_version"] == "v3.0" and "total_chunks" not in info and "total_videos" not in info
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert {k: info[k] for k in ("total_episodes", "total_frames", "total_tasks", "fps", "splits")} == {
        k: source[k] for k in ("total_episodes", "total_frames", "total_tasks", "fps", "splits")
    }
    assert list(info["features"]) == list(source["features"])
    for key, feature in source["features"].items():
        expected = feature if feature["dtype"] == "video" else dict(feature, fps=50)  # lerobot: fps per column
        assert info["features"][key] == expected, key


def test_rows_are_the_source_rows_in_files_of_whole_episodes(converted_dataset, exported):
    data = lerobot.LeRobotDataset(converted_dataset)
    rows = episodes(exported)
    assert [r["episode_index"] for r in rows] == list(range(data.num_episodes))
    files = sorted(exported.glob("data/chunk-*/file-*.parquet"))
    assert len(files) > 1  # episodes spread over several files (small limits)
    for row, episode in zip(rows, data.episodes):
        assert row["length"] == episode["length"] and row["tasks"] == episode["tasks"]
        assert row["dataset_to_index"] - row["dataset_from_index"] == episode["length"]
        path = exported / export.DATA_PATH.format(
            chunk_index=row["data/chunk_index"], file_index=row["data/file_index"]
        )
        table = pq.read_table(path)
        first = table.column("index").to_pylist().index(row["dataset_from_index"])
        assert table.slice(first, episode["length"]).equals(data.read_table(episode["episode_index"]))
    assert rows[-1]["dataset_to_index"] == sum(e["length"] for e in data.episodes)
    assert sum(pq.read_metadata(f).num_rows for f in files) == rows[-1]["dataset_to_index"]


def test_video_frames_are_the_source_frames_at_their_timestamps(converted_dataset, exported):
    data = lerobot.LeRobotDataset(converted_dataset)
    rows = episodes(exported)
    files = {}
    for row in rows:
        files.setdefault((row[f"videos/{CAMERA}/chunk_index"], row[f"videos/{CAMERA}/file_index"]), []).append(row)
    assert 1 < len(files) < len(rows)  # some files hold several episodes
    for (chunk, number), members in files.items():
        path = exported / export.VIDEO_PATH.format(video_key=CAMERA, chunk_index=chunk, file_index=number)
        decoded = video.read_frames(path)
        assert members[0][f"videos/{CAMERA}/from_timestamp"] == 0.0
        for row in members:
            start = round(row[f"videos/{CAMERA}/from_timestamp"] * data.fps)
            assert row[f"videos/{CAMERA}/to_timestamp"] == pytest.approx((start + row["length"]) / data.fps)
            source = data.read_video(row["episode_index"], CAMERA)
            np.testing.assert_array_equal(decoded[start : start + row["length"]], source)  # stream copy: same pixels
        assert len(decoded) == sum(r["length"] for r in members)


def test_gr00t_meta_kept_and_camera_stats_added(converted_dataset, exported):
    source_stats = lerobot.read_json(converted_dataset / "meta/stats.json")
    stats = lerobot.read_json(exported / "meta/stats.json")
    assert {k: stats[k] for k in source_stats} == source_stats  # GR00T's entries, q01/q99 included, as they are
    assert list(stats) == [*source_stats, CAMERA]
    lines = lerobot.read_jsonl(converted_dataset / "meta/episodes_stats.jsonl")
    counts = np.array([line["stats"][CAMERA]["count"][0] for line in lines], dtype=float)
    means = np.array([line["stats"][CAMERA]["mean"] for line in lines])
    weighted = (counts[:, None, None, None] * means).sum(0) / counts.sum()
    np.testing.assert_allclose(stats[CAMERA]["mean"], weighted, rtol=1e-12)
    assert np.asarray(stats[CAMERA]["std"]).shape == (3, 1, 1) and stats[CAMERA]["count"] == [int(counts.sum())]
    for name in ("modality.json", "source.json"):
        assert (exported / "meta" / name).read_bytes() == (converted_dataset / "meta" / name).read_bytes()
    # per-episode stats travel as stats/<feature>/<stat> columns, as lerobot's converter writes them
    row = episodes(exported)[2]
    assert row[f"stats/{CAMERA}/mean"] == lines[2]["stats"][CAMERA]["mean"]
    assert row["stats/action/max"] == lines[2]["stats"]["action"]["max"]


def test_tasks_parquet_reads_back_as_lerobot_expects(exported, converted_dataset):
    tasks = pq.read_table(exported / "meta/tasks.parquet").to_pandas()
    text = lerobot.LeRobotDataset(converted_dataset).tasks[0]
    assert tasks.iloc[0].name == text and int(tasks.loc[text, "task_index"]) == 0  # lerobot: tasks.iloc[i].name


def test_files_per_chunk():
    assert export.file_index(0, 1000) == {"chunk_index": 0, "file_index": 0}
    assert export.file_index(1000, 1000) == {"chunk_index": 1, "file_index": 0}
    assert export.file_index(1234, 1000) == {"chunk_index": 1, "file_index": 234}


def test_missing_stats_are_an_error_and_nothing_is_written(copy_dataset, tmp_path, capsys):
    dataset = copy_dataset()
    lines = lerobot.read_jsonl(dataset / "meta/episodes_stats.jsonl")
    del lines[3]["stats"][CAMERA]  # written by an older `posttrain stats`
    write_text_atomic(dataset / "meta/episodes_stats.jsonl", lerobot.jsonl(lines))
    out = tmp_path / "v3"
    assert run_cli("export", "--format", "lerobot-v3", dataset, "--output", out) == 2
    err = capsys.readouterr().err
    assert "episodes_stats.jsonl: episode 3: no stats of camera observation.images.ego_view" in err
    assert "rerun `posttrain stats" in err and not out.exists()
    (dataset / "meta/stats.json").unlink()
    assert run_cli("export", "--format", "lerobot-v3", dataset, "--output", out) == 2
    assert "stats.json: missing; run `posttrain stats" in capsys.readouterr().err


def test_task_indices_lerobot_cannot_look_up_are_refused(copy_dataset, tmp_path, capsys):
    dataset = copy_dataset()
    write_text_atomic(dataset / "meta/tasks.jsonl", lerobot.jsonl([{"task_index": 3, "task": "reach"}]))
    assert run_cli("export", "--format", "lerobot-v3", dataset, "--output", tmp_path / "v3") == 2
    err = capsys.readouterr().err
    assert "tasks.jsonl: task_index values [3]; lerobot v3.0 needs 0..0" in err and "convert.task_index" in err


def test_output_may_not_be_the_input(converted_dataset, capsys):
    assert run_cli("export", "--format", "lerobot-v3", converted_dataset, "--output", converted_dataset / "v3") == 2
    assert "is inside the input" in capsys.readouterr().err


def test_episodes_table_keeps_int_and_bool_stats(converted_dataset):
    data = lerobot.LeRobotDataset(converted_dataset)
    stats = {
        line["episode_index"]: line["stats"]
        for line in lerobot.read_jsonl(converted_dataset / "meta/episodes_stats.jsonl")
    }
    table = export.episodes_table(data, [{} for _ in data.episodes], stats)
    assert table.schema.field("stats/index/min").type == pa.list_(pa.int64())
    assert table.schema.field("stats/next.done/max").type == pa.list_(pa.bool_())
    assert table.schema.field(f"stats/{CAMERA}/mean").type == pa.list_(pa.list_(pa.list_(pa.float64())))
    assert (
        stats_math.image_sample_count(data.episodes[0]["length"])
        == table.column(f"stats/{CAMERA}/count").to_pylist()[0][0]
    )
    assert json.dumps(table.column("tasks").to_pylist()[0]) == json.dumps(data.episodes[0]["tasks"])
