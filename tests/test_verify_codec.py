"""`posttrain verify` on fine image texture: valid conversions pass, conversion faults still fail.

The yuv420p round trip alone (chroma shared by 2x2 pixels) costs colour noise, checkerboards and
text 8-25 dB of PSNR, and x264 at CRF 18 loses more on noise than on smooth footage, so a fixed
threshold against the raw HDF5 frame fails valid demos. These tests write Mimic HDF5 files with
such frames, convert them for real and verify them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import run_cli
from posttrain import lerobot
from posttrain.mimic import MimicFile
from posttrain.synth import CAMERA
from posttrain.video import VideoSettings, encode_video, psnr, read_frames, x264_settings, yuv420p_round_trip


def texture(kind: str, frames: int, size: int, seed: int) -> np.ndarray:
    """(frames, size, size, 3) uint8 high-frequency footage that changes every frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    if kind == "noise":  # uniform colour noise, new every frame: the worst case for any codec
        return rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    out = np.empty((frames, size, size, 3), np.uint8)
    if kind == "checker":  # 1-pixel colour checkerboard; every frame its own colours
        colours = rng.integers(0, 256, (frames, 2, 3), dtype=np.uint8)
        for t in range(frames):
            out[t] = colours[t][(yy + xx) % 2]
        return out
    assert kind == "text"  # rows of 5x7 "glyphs" in red and blue on white, scrolling a pixel a frame
    glyphs = rng.random((size // 8 + 1, size // 6 + frames)) < 0.5
    ink = np.kron(glyphs, np.ones((8, 6), bool)) & (np.arange(8 * len(glyphs))[:, None] % 8 < 7)
    ink &= rng.random(ink.shape) < 0.7  # stroke texture inside each glyph cell
    for t in range(frames):
        page = ink[:size, t : t + size]
        out[t] = 250
        out[t][page & (yy % 16 < 8)] = (200, 20, 30)
        out[t][page & (yy % 16 >= 8)] = (20, 40, 210)
    return out


def textured_hdf5(path: Path, kind: str, size: int, episodes: int, frames: int) -> Path:
    """A synthetic Mimic HDF5 whose camera frames are replaced by `texture` (each demo its own seed)."""
    assert (
        run_cli(
            "synth",
            path,
            "--episodes",
            episodes,
            "--min-frames",
            frames,
            "--max-frames",
            frames,
            "--image-size",
            16,
            "--seed",
            0,
        )
        == 0
    )
    with h5py.File(path, "a") as f:
        for i, demo in enumerate(sorted(f["data"], key=lambda name: int(name.split("_")[1]))):
            key = f"data/{demo}/camera_obs/{CAMERA}"
            del f[key]
            f.create_dataset(
                key, data=texture(kind, frames, size, seed=100 * size + i), chunks=True, compression="gzip"
            )
    return path


def convert(tmp_path: Path, kind: str, size: int, episodes: int, frames: int) -> tuple[Path, Path]:
    hdf5 = textured_hdf5(tmp_path / f"{kind}{size}.hdf5", kind, size, episodes, frames)
    out = tmp_path / f"{kind}{size}"
    assert run_cli("convert", "--input", hdf5, "--output", out, "--workers", 2) == 0
    assert run_cli("stats", out) == 0
    return hdf5, out


def verify(dataset: Path, hdf5: Path, output: Path, *extra) -> int:
    return run_cli(
        "verify", dataset, "--source", hdf5, "--output", output, "--preview-episodes", 0, "--workers", 2, *extra
    )


def raw_psnr(dataset: Path, hdf5: Path, episode: int) -> float:
    """The old metric: decoded frames against the raw HDF5 frames (drop_frame first), worst frame."""
    data = lerobot.LeRobotDataset(dataset)
    decoded = read_frames(data.video_path(episode, data.video_keys[0]))
    with MimicFile(hdf5) as mimic:
        source = np.concatenate(list(mimic.iter_camera_frames(f"demo_{episode}", CAMERA)))[1:]
    return min(psnr(d, s) for d, s in zip(decoded, source))


def failures(output: Path) -> dict[tuple[str, int | None], str]:
    assert not (output / "report.json").exists()
    report = json.loads((output / "report.failed.json").read_text())
    return {
        (c["name"], c["episode"]): c["detail"] for c in report["checks"] if not c["passed"] and not c.get("summary")
    }


# --- valid conversions pass --------------------------------------------------------------------
@pytest.mark.parametrize("size", [64, 128, 512])
@pytest.mark.parametrize("kind", ["noise", "checker", "text"])
def test_fine_texture_verifies_clean(tmp_path, kind, size):
    episodes, frames = (2, 10) if size == 512 else (3, 14)
    hdf5, dataset = convert(tmp_path, kind, size, episodes, frames)
    # the data is hard: against the raw frames this valid conversion is far below 35 dB
    assert raw_psnr(dataset, hdf5, 0) < 35
    out = tmp_path / "verify"
    assert verify(dataset, hdf5, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["psnr_db"]["frames_compared"] >= episodes * 8  # samples and neighbours


# --- faults still fail -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """Fine text at 128², three demos of equal length (so their videos can be swapped)."""
    return convert(tmp_path_factory.mktemp("text"), "text", 128, 3, 16)


@pytest.fixture
def text_copy(text_dataset, tmp_path) -> tuple[Path, Path]:
    hdf5, dataset = text_dataset
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    return hdf5, copy


def test_fine_texture_one_frame_shift_fails(text_copy, tmp_path, capsys):
    hdf5, dataset = text_copy
    source = json.loads((dataset / "meta/source.json").read_text())
    source["drop_frame"] = "last"  # video frame j is HDF5 frame j+1; now claimed to be frame j
    (dataset / "meta/source.json").write_text(json.dumps(source))
    out = tmp_path / "verify"
    assert verify(dataset, hdf5, out) == 2
    found = failures(out)
    assert {("video_alignment", ep) for ep in range(3)} <= set(found)
    assert "frame j+1" in found[("video_alignment", 0)] and "convert.drop_frame" in found[("video_alignment", 0)]
    assert "error: verify" in capsys.readouterr().err


def test_fine_texture_swapped_episodes_fail(text_copy, tmp_path, capsys):
    hdf5, dataset = text_copy
    data = lerobot.LeRobotDataset(dataset)
    first, second = (data.video_path(ep, data.video_keys[0]) for ep in (0, 1))
    first.rename(first.with_suffix(".tmp"))
    second.rename(first)
    first.with_suffix(".tmp").rename(second)
    out = tmp_path / "verify"
    assert verify(dataset, hdf5, out) == 2
    found = failures(out)
    assert {("video_psnr", 0), ("video_psnr", 1)} <= set(found) and {ep for _, ep in found} == {0, 1}
    assert "verify.min_psnr_db" in found[("video_psnr", 0)]
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(line) == 1 and "episode 0: video_psnr:" in line[0] and "verify.min_psnr_db" in line[0]


def test_fine_texture_corrupted_frames_fail(text_copy, tmp_path):
    hdf5, dataset = text_copy
    data = lerobot.LeRobotDataset(dataset)
    path = data.video_path(2, data.video_keys[0])
    frames = read_frames(path).copy()
    frames[4:11, 40:72] = 128  # a grey band over frames 4..10, as a damaged stretch of the stream
    encode_video(path, frames, data.fps, x264_settings(path))
    out = tmp_path / "verify"
    assert verify(dataset, hdf5, out) == 2
    assert set(failures(out)) == {("video_psnr", 2)}


# --- the reference conversion is the encoder's -------------------------------------------------
def test_lossless_encode_decodes_to_the_yuv420p_round_trip(tmp_path):
    """yuv420p_round_trip is the colour conversion VideoWriter and read_frames really apply."""
    frames = np.concatenate([texture("noise", 2, 64, 1), texture("text", 2, 64, 2)])
    path = tmp_path / "lossless.mp4"
    encode_video(path, frames, 50, VideoSettings(crf=0))
    decoded = read_frames(path)
    reference = yuv420p_round_trip(frames)
    assert np.array_equal(decoded, reference)
    assert psnr(reference, frames) < 20  # the conversion alone loses that much on colour noise
    red = yuv420p_round_trip(np.full((1, 16, 16, 3), (255, 0, 0), np.uint8))
    assert np.abs(red.astype(int) - (255, 0, 0)).max() <= 2  # flat colour survives (full-range RGB)


def test_x264_settings_are_read_back_from_the_video(tmp_path):
    path = tmp_path / "clip.mp4"
    encode_video(path, texture("noise", 3, 32, 0), 50, VideoSettings(crf=27, gop=9, preset="medium"))
    assert x264_settings(path) == VideoSettings(crf=27, gop=9, preset="medium")
    (tmp_path / "not_x264.mp4").write_bytes(b"\0" * 1000)
    assert x264_settings(tmp_path / "not_x264.mp4") is None
