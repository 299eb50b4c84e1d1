"""The shared format modules: video encode/decode, LeRobot v2.1 tables and metadata, atomic writes."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import GOLDEN
from posttrain import lerobot, video
from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, write_json_atomic


def smooth_frames(n=30, h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    frames = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = (x * 3 + i * 2) % 256
        frames[i, ..., 1] = 128 + 60 * np.sin((y + i) / 8)
        frames[i, ..., 2] = 90
    return frames


def test_encode_decode_round_trip_keeps_count_size_and_quality(tmp_path):
    frames = smooth_frames()
    path = tmp_path / "ep.mp4"
    video.encode_video(path, frames, fps=50)
    info = video.probe(path, count_frames=True)
    assert (info.width, info.height, info.num_frames, info.codec, info.pix_fmt) == (64, 48, 30, "h264", "yuv420p")
    assert info.fps == 50.0
    decoded = video.read_frames(path)
    assert decoded.shape == frames.shape
    assert min(video.psnr(a, b) for a, b in zip(decoded, frames)) > 35


def test_streaming_writer_accepts_batches_and_single_frames(tmp_path):
    frames = smooth_frames(12)
    path = tmp_path / "ep.mp4"
    with video.VideoWriter(path, 50, 64, 48) as writer:
        writer.write(frames[:5])
        for frame in frames[5:]:
            writer.write(frame)
    assert writer.frames_written == 12
    assert video.probe(path, count_frames=True).num_frames == 12


def test_read_frames_scales_while_decoding(tmp_path):
    path = tmp_path / "ep.mp4"
    video.encode_video(path, smooth_frames(), fps=50)
    assert video.read_frames(path, size=(32, 24)).shape == (30, 24, 32, 3)


def test_read_frames_at_matches_full_decode_in_any_order(tmp_path):
    path = tmp_path / "ep.mp4"
    video.encode_video(path, smooth_frames(), fps=50)
    full = video.read_frames(path)
    picks = [17, 0, 3, 17, 29]
    np.testing.assert_array_equal(video.read_frames_at(path, picks), full[picks])
    with pytest.raises(PosttrainError, match="decoded 1 of the frames"):
        video.read_frames_at(path, [29, 30])


def test_writer_rejects_odd_sizes_and_wrong_frames(tmp_path):
    with pytest.raises(PosttrainError, match="even frame sizes"):
        video.VideoWriter(tmp_path / "x.mp4", 50, 63, 48)
    with video.VideoWriter(tmp_path / "y.mp4", 50, 64, 48) as writer:
        with pytest.raises(PosttrainError, match=r"uint8 \(N, 48, 64, 3\)"):
            writer.write(np.zeros((2, 48, 64, 3), np.float32))
        writer.write(smooth_frames(2))


def test_probe_names_a_file_that_is_not_a_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(PosttrainError, match="bad.mp4: not a readable video"):
        video.probe(bad)


def test_episode_table_matches_golden_schema_except_annotation_name(tmp_path):
    golden = pq.read_table(GOLDEN / "data/chunk-000/episode_000000.parquet")
    ours = lerobot.episode_columns(
        np.ones((4, 26)), np.zeros((4, 26)), episode_index=3, first_index=10, fps=50, task_index=0
    )
    renamed = [
        ("annotation.human.action.task_description" if n == "human.task_description" else n)
        for n in golden.schema.names
    ]
    assert ours.schema.names == renamed
    for name, golden_name in zip(ours.schema.names, golden.schema.names):
        assert ours.schema.field(name).type == golden.schema.field(golden_name).type, name
    row = ours.to_pylist()[-1]
    assert row["index"] == 13 and row["frame_index"] == 3 and row["episode_index"] == 3
    assert row["timestamp"] == pytest.approx(3 / 50) and row["next.done"] and row["next.reward"] == 1.0


def test_same_table_gives_same_parquet_bytes(tmp_path):
    table = lerobot.episode_columns(np.random.default_rng(0).random((20, 26)), np.zeros((20, 26)), 0, 0, 50, 0)
    lerobot.write_table(tmp_path / "a.parquet", table)
    lerobot.write_table(tmp_path / "b.parquet", table)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_build_info_counts_chunks_in_use_and_splits_all_episodes():
    info = lerobot.build_info(
        robot_type="gr1",
        episode_lengths=[5] * 1001,
        num_tasks=1,
        fps=50,
        chunks_size=1000,
        features={},
        video_keys=["observation.images.ego_view"],
    )
    assert info["total_chunks"] == 2 and info["splits"] == {"train": "0:1001"}
    assert info["total_frames"] == 5005 and info["total_videos"] == 1001
    golden_keys = list(lerobot.read_json(GOLDEN / "meta/info.json"))
    assert list(info) == golden_keys


def test_dataset_reader_reads_golden_episode():
    data = lerobot.LeRobotDataset(GOLDEN)
    episode = data.read_episode(0)
    assert episode["observation.state"].shape == (152, 26) and episode["observation.state"].dtype == np.float32
    assert [g.name for g in data.groups("action")] == ["left_arm", "right_arm", "left_hand", "right_hand"]
    assert data.parquet_path(0).is_file()


def test_reader_names_a_directory_that_is_not_a_dataset(tmp_path):
    with pytest.raises(PosttrainError, match="not a LeRobot dataset"):
        lerobot.LeRobotDataset(tmp_path)


def test_atomic_directory_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    for text in ("one", "two"):
        with atomic_directory(final) as tmp:
            write_json_atomic(tmp / "f.json", {"v": text})
    assert lerobot.read_json(final / "f.json") == {"v": "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_outputs_are_readable_by_others(tmp_path):
    write_json_atomic(tmp_path / "a.json", {})
    with atomic_directory(tmp_path / "d"):
        pass
    assert (tmp_path / "a.json").stat().st_mode & 0o044 == 0o044
    assert (tmp_path / "d").stat().st_mode & 0o055 == 0o055


def test_atomic_file_keeps_the_old_file_when_writing_fails(tmp_path):
    from posttrain.files import atomic_file

    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o044 == 0o044


def test_every_feature_has_names_and_the_video_both_spellings():
    table = lerobot.episode_columns(np.zeros((3, 26)), np.zeros((3, 26)), 0, 0, 50, 0)
    features = lerobot.tabular_features(table, {"action": [f"j{i}" for i in range(26)]})
    assert all("names" in entry for entry in features.values())  # lerobot's meta.names reads every one
    assert features["action"]["names"][25] == "j25" and features["timestamp"]["names"] is None
    assert features["index"] == {"dtype": "int64", "shape": [1], "names": None}
    feature = lerobot.video_feature(480, 640, 50.0)
    assert feature["names"] == ["height", "width", "channels"]  # lerobot's spelling (Arena's: "channel")
    assert feature["video_info"]["video.fps"] == 50.0 and feature["video_info"]["video.width"] == 640  # GR00T's
    assert feature["info"] == {
        "video.height": 480,
        "video.width": 640,
        "video.codec": "h264",
        "video.pix_fmt": "yuv420p",
        "video.is_depth_map": False,
        "video.fps": 50,
        "video.channels": 3,
        "has_audio": False,
    }
