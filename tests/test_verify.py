"""`posttrain verify`: passes on a fresh conversion, fails with a clear one-line message on damaged copies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from posttrain import lerobot
from posttrain.video import encode_video, probe, read_frames

SOURCE_CHECKS = {"source_length", "source_state", "source_action", "video_psnr"}


def verify(dataset, output, *extra):
    return run_cli("verify", dataset, "--output", output, "--workers", "2", *extra)


def failed(capsys, output):
    """The one error line, and the failure report (report.json must not exist)."""
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    assert not (output / "report.json").exists()
    report = json.loads((output / "report.failed.json").read_text())
    assert report["passed"] is False and report["failures"] >= 1
    return err[0], report


def failures(report):
    return {(c["name"], c["episode"]) for c in report["checks"] if not c["passed"] and not c.get("summary")}


def test_fresh_conversion_passes_with_source(converted_dataset, synth_hdf5, tmp_path):
    out = tmp_path / "verify"
    (out).mkdir()
    (out / "report.failed.json").write_text("{}")  # stale failure from an earlier run
    assert verify(converted_dataset, out, "--source", synth_hdf5, "--sampled-frames", "4") == 0
    assert not (out / "report.failed.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is True and report["failures"] == 0
    names = {c["name"] for c in report["checks"]}
    assert (
        SOURCE_CHECKS | {"info_totals", "video_frames", "timestamps", "index", "finite", "stats_json", "episodes_stats"}
        <= names
    )
    assert all(c["passed"] for c in report["checks"])
    # 4 samples per episode and their neighbours in the video: 2 + 3 + 3 + 2 frames
    assert report["psnr_db"]["min"] >= 35 and report["psnr_db"]["frames_compared"] == 6 * 10
    assert report["episodes"] == 6

    import matplotlib.image as mpimg

    joints = mpimg.imread(out / "preview" / "episode_000000_joints.png")
    assert joints.ndim == 3 and joints.shape[0] > 300 and joints.shape[1] > 300 and joints.std() > 0
    sheet = mpimg.imread(out / "preview" / "contact_sheet.png")
    assert sheet.ndim == 3 and sheet.shape[1] > sheet.shape[0] > 100  # 2 rows x 6 columns of frames
    assert sorted(p.name for p in (out / "preview").iterdir() if not p.name.startswith(".")) == [
        "contact_sheet.png",
        "episode_000000_joints.png",
        "episode_000001_joints.png",
    ]


def test_without_source_only_internal_checks(converted_dataset, tmp_path):
    out = tmp_path / "verify"
    assert verify(converted_dataset, out, "--preview-episodes", "0") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["psnr_db"] is None
    assert not SOURCE_CHECKS & {c["name"] for c in report["checks"]}


def test_video_with_a_frame_too_few(copy_dataset, tmp_path, capsys):
    ds = copy_dataset()
    data = lerobot.LeRobotDataset(ds)
    path = data.video_path(2, data.video_keys[0])
    encode_video(path, read_frames(path)[:-1], fps=data.fps)
    assert probe(path, count_frames=True).num_frames == data.episodes[2]["length"] - 1
    out = tmp_path / "verify"
    out.mkdir()
    (out / "report.json").write_text('{"passed": true}')  # stale pass must not survive a failure
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "episode 2: video_frames:" in line and "episode_000002.mp4" in line and "report.failed.json" in line
    assert failures(report) == {("video_frames", 2)}


def test_shifted_action_column(copy_dataset, synth_hdf5, tmp_path, capsys):
    ds = copy_dataset()
    path = lerobot.LeRobotDataset(ds).parquet_path(1)
    table = pq.read_table(path)
    action = lerobot.column_to_numpy(table.column("action"))
    rolled = np.roll(action, 1, axis=0).astype(np.float32)
    column = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rolled.size + 1, 26, dtype=np.int32)),
        pa.array(rolled.reshape(-1)),
        type=lerobot.FLOAT_LIST,
    )
    lerobot.write_table(path, table.set_column(table.schema.get_field_index("action"), "action", column))
    out = tmp_path / "verify"
    assert verify(ds, out, "--source", synth_hdf5, "--sampled-frames", "2", "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "episode 1: source_action:" in line and "frame 0" in line
    assert failures(report) == {("source_action", 1)}  # the same values, so the stats still agree


def test_stale_stats_after_a_parquet_edit(copy_dataset, tmp_path, capsys):
    ds = copy_dataset()
    path = lerobot.LeRobotDataset(ds).parquet_path(3)
    table = pq.read_table(path)
    state = lerobot.column_to_numpy(table.column("observation.state")).copy()
    action = lerobot.column_to_numpy(table.column("action")).copy()
    action[5, 0] += 1.0
    first_index = int(table.column("index")[0].as_py())
    lerobot.write_table(path, lerobot.episode_columns(state, action, 3, first_index, 50, 0))
    out = tmp_path / "verify"
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "episode 3: episodes_stats:" in line and "action" in line and "1 more failures" in line
    assert failures(report) == {("episodes_stats", 3), ("stats_json", None)}
    stats_detail = next(c["detail"] for c in report["checks"] if c["name"] == "stats_json")
    assert stats_detail.startswith("meta/stats.json: action.") and "stale" in stats_detail


def test_edited_stats_json(copy_dataset, tmp_path, capsys):
    ds = copy_dataset()
    stats = json.loads((ds / "meta/stats.json").read_text())
    stats["observation.state"]["q99"][4] += 0.01
    (ds / "meta/stats.json").write_text(json.dumps(stats))
    out = tmp_path / "verify"
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "FAILED: stats_json: meta/stats.json: observation.state.q99[4]" in line
    assert failures(report) == {("stats_json", None)}


def test_wrong_info_totals(copy_dataset, tmp_path, capsys):
    ds = copy_dataset()
    info = json.loads((ds / "meta/info.json").read_text())
    info["total_frames"] += 1
    info["total_videos"] = 1
    (ds / "meta/info.json").write_text(json.dumps(info))
    out = tmp_path / "verify"
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "FAILED: info_totals: meta/info.json: total_frames=" in line and "total_videos=1" in line
    assert "more failures" not in line
    assert failures(report) == {("info_totals", None)}


def test_stale_relative_stats(copy_dataset, tmp_path, capsys):
    ds = copy_dataset()
    assert run_cli("stats", ds, "--relative-groups", "right_arm", "--action-horizon", "4") == 0
    assert verify(ds, tmp_path / "ok", "--preview-episodes", "0") == 0
    rel = json.loads((ds / "meta/relative_stats.json").read_text())
    rel["right_arm"]["max"][3][2] += 0.5
    (ds / "meta/relative_stats.json").write_text(json.dumps(rel))
    out = tmp_path / "verify"
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "relative_stats: meta/relative_stats.json: right_arm.max[3, 2]" in line


@pytest.mark.parametrize("damage", ["missing_parquet", "nan", "index_gap", "timestamps"])
def test_broken_parquet(copy_dataset, tmp_path, capsys, damage):
    ds = copy_dataset()
    path = lerobot.LeRobotDataset(ds).parquet_path(4)
    if damage == "missing_parquet":
        path.unlink()
        expected = "FAILED: info_totals: meta/info.json: 5 parquet files under data/, but 6 episodes"
    elif damage in ("index_gap", "timestamps"):
        table = pq.read_table(path)
        state, action = (lerobot.column_to_numpy(table.column(c)) for c in ("observation.state", "action"))
        first = int(table.column("index")[0].as_py())
        if damage == "index_gap":  # as if episode 3 had one row more
            lerobot.write_table(path, lerobot.episode_columns(state, action, 4, first + 1, 50, 0))
            expected = f"episode 4: index: index column at row 0 is {first + 1}, expected {first}"
        else:  # written at 30 fps although info.json says 50
            lerobot.write_table(path, lerobot.episode_columns(state, action, 4, first, 30, 0))
            last = table.num_rows - 1  # the largest error is named
            expected = f"episode 4: timestamps: frame {last}: timestamp {last / 30:.6f} s, expected {last / 50:.6f} s"
    else:
        table = pq.read_table(path)
        rewards = table.column("next.reward").to_numpy().copy()
        rewards[2] = np.nan
        lerobot.write_table(
            path, table.set_column(table.schema.get_field_index("next.reward"), "next.reward", pa.array(rewards))
        )
        expected = "episode 4: finite: next.reward: 1 non-finite values, first at row 2"
    out = tmp_path / "verify"
    assert verify(ds, out, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert expected in line
    if damage == "missing_parquet":  # the episode itself, and stats that cannot be recomputed without it
        assert failures(report) == {
            ("info_totals", None),
            ("parquet_rows", 4),
            ("stats_json", None),
            ("episodes_stats", None),
        }
        detail = next(c["detail"] for c in report["checks"] if c["name"] == "parquet_rows" and c["episode"] == 4)
        assert detail.startswith("data/chunk-000/episode_000004.parquet: unreadable")


def test_bad_source_is_a_one_line_error(converted_dataset, tmp_path, capsys):
    out = tmp_path / "verify"
    out.mkdir()
    (out / "report.json").write_text('{"passed": true}')
    missing = tmp_path / "nope.hdf5"
    assert verify(converted_dataset, out, "--source", missing) == 2
    err = capsys.readouterr().err
    assert f"error: {missing}: not a readable HDF5 file" in err
    assert not (out / "report.json").exists()


def test_wrong_drop_frame_is_caught_by_alignment(copy_dataset, synth_hdf5, tmp_path, capsys):
    """Smooth footage can pass the PSNR threshold one frame off (a low threshold here); alignment must not."""
    ds = copy_dataset()
    source = json.loads((ds / "meta/source.json").read_text())
    assert source["drop_frame"] == "first"
    source["drop_frame"] = "last"
    (ds / "meta/source.json").write_text(json.dumps(source))
    out = tmp_path / "verify"
    assert (
        verify(
            ds, out, "--source", synth_hdf5, "--sampled-frames", "6", "--preview-episodes", "0", "--min-psnr-db", "20"
        )
        == 2
    )
    line, report = failed(capsys, out)
    assert "episode 0: video_alignment:" in line and "frame j+1" in line and "wrong drop_frame 'last'" in line
    assert {name for name, _ in failures(report)} == {"video_alignment"}


def test_near_tie_is_not_a_frame_shift(tmp_path):
    """A correct conversion whose episode 3 leaned 0.2 dB towards frame j+1 (40.5 vs 40.3 dB) with 6 samples.

    x264's skipped blocks repeat the previous frame, so on slow footage a decoded frame can sit a
    little closer to a neighbouring HDF5 frame; only a clear margin over the pooled samples is a shift.
    """
    hdf5, out = tmp_path / "demos.hdf5", tmp_path / "lerobot"
    assert (
        run_cli(
            "synth",
            hdf5,
            "--episodes",
            "4",
            "--min-frames",
            "70",
            "--max-frames",
            "100",
            "--image-size",
            "64",
            "--seed",
            "1",
        )
        == 0
    )
    assert run_cli("convert", "--input", hdf5, "--output", out, "--workers", "2") == 0
    assert run_cli("stats", out) == 0
    assert verify(out, tmp_path / "verify", "--source", hdf5, "--sampled-frames", "6", "--preview-episodes", "0") == 0


def test_video_of_another_episode_fails(copy_dataset, synth_hdf5, tmp_path, capsys):
    """Smooth footage: the shortest episode's video holds another episode's frames (cut to its length)."""
    ds = copy_dataset()
    data = lerobot.LeRobotDataset(ds)
    key = data.video_keys[0]
    lengths = [e["length"] for e in data.episodes]
    short = int(np.argmin(lengths))
    other = (short + 1) % len(lengths)
    encode_video(data.video_path(short, key), read_frames(data.video_path(other, key))[: lengths[short]], fps=data.fps)
    out = tmp_path / "verify"
    assert verify(ds, out, "--source", synth_hdf5, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert f"episode {short}: video_psnr:" in line and "verify.min_psnr_db (35)" in line
    assert {ep for _, ep in failures(report)} == {short}


def test_corrupted_frames_fail(copy_dataset, synth_hdf5, tmp_path, capsys):
    """Smooth footage: a grey band over a stretch of episode 2's frames, as a damaged stream decodes."""
    ds = copy_dataset()
    data = lerobot.LeRobotDataset(ds)
    path = data.video_path(2, data.video_keys[0])
    frames = read_frames(path).copy()
    frames[10:30, 24:40] = 128
    encode_video(path, frames, fps=data.fps)
    out = tmp_path / "verify"
    assert verify(ds, out, "--source", synth_hdf5, "--preview-episodes", "0") == 2
    line, report = failed(capsys, out)
    assert "episode 2: video_psnr:" in line
    assert failures(report) == {("video_psnr", 2)}
