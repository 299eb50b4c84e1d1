"""Non-square cameras: every path that feeds the native policy sees the centre square, scaled.

The three paths (the `frames` stage, the trainer's decode fallback and eval, all through
`frames.decode_camera`; and `policy.images_to_tensor` on raw frames) must agree: the ffmpeg ones
bit for bit, the torch one closely. Square input must give exactly what it gave before.

Small data: a synthetic G1 dataset (one 48 x 64 head camera), 3 episodes of 20-24 frames.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli, synth_and_convert
from posttrain.data import EpisodeCache, TrainingSamples
from posttrain.errors import PosttrainError
from posttrain.eval import load_episode
from posttrain.layout import dataset_layouts
from posttrain.lerobot import LeRobotDataset
from posttrain.policy import Normalizer, PolicyConfig, images_to_tensor
from posttrain.video import centre_square, encode_video, psnr, read_frames, read_square_frames, square_filter

CAMERA = "observation.images.ego_view"
RED = np.array([255, 0, 0], np.uint8)


def barred_frames(height: int, width: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """Frames whose centre square is a grey pattern and whose margins outside it are pure red:
    a stretched (not cropped) image shows red, a cropped one only the encoder's chroma bleed."""
    rng = np.random.default_rng(seed)
    top, left, side = centre_square(height, width)
    frames = np.broadcast_to(RED, (count, height, width, 3)).copy()
    blocks = rng.integers(40, 216, (count, side // 4 + 1, side // 4 + 1, 1), dtype=np.uint8)
    pattern = blocks.repeat(4, axis=1).repeat(4, axis=2)[:, :side, :side].repeat(3, axis=3)
    frames[:, top : top + side, left : left + side] = pattern
    return frames


def reddest(images: np.ndarray) -> float:
    """How far the reddest pixel leans to red (R - max(G, B)); grey is 0."""
    images = images.astype(np.int16)
    return float((images[..., 0] - np.maximum(images[..., 1], images[..., 2])).max())


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """images_to_tensor's (B, 1, 3, S, S) floats back to (B, S, S, 3) uint8."""
    return pixels[:, 0].permute(0, 2, 3, 1).mul(255).round().byte().numpy()


@pytest.fixture(scope="module")
def g1_dataset(tmp_path_factory) -> Path:
    """A synthetic G1 dataset; episode 1's video replaced by red-barred frames of the same length."""
    _, out = synth_and_convert(
        tmp_path_factory.mktemp("g1_nonsquare"),
        "--embodiment",
        "g1",
        "--episodes",
        "3",
        "--min-frames",
        "20",
        "--max-frames",
        "24",
        "--image-size",
        "48x64",
        "--seed",
        "5",
        convert_args=["--embodiment", "g1"],
    )
    ds = LeRobotDataset(out)
    encode_video(ds.video_path(1, CAMERA), barred_frames(48, 64, ds.episodes[1]["length"]), fps=ds.fps)
    return out


@pytest.mark.parametrize("size", [32, 64])  # 48 x 64 camera: scaled down to 32, up to 64
def test_frames_loader_eval_and_raw_frames_agree(g1_dataset, tmp_path, size):
    ds = LeRobotDataset(g1_dataset)
    frames_dir = tmp_path / "frames"
    assert run_cli("frames", g1_dataset, "--image-size", size, "--output", frames_dir, "--workers", 2) == 0
    index = json.loads((frames_dir / "index.json").read_text())
    assert index["fit"] == "centre-square"
    stored = np.load(frames_dir / index["cameras"][CAMERA], mmap_mode="r")
    assert stored.shape == (sum(e["length"] for e in ds.episodes), size, size, 3)
    cache = EpisodeCache(ds, [CAMERA], size, 1 << 30, dataset_layouts(ds))
    for episode in index["episodes"]:
        e = episode["episode_index"]
        framed = stored[episode["offset"] : episode["offset"] + episode["length"]]
        decoded = cache.get(e).frames[0]  # the trainer without frames
        evaluated = load_episode(ds, e, [CAMERA], size).frames[:, 0]  # eval
        assert np.array_equal(framed, decoded) and np.array_equal(framed, evaluated), e
        if e == 1:
            continue  # the red-barred video: checked for its crop below (its block noise is the next test's)
        raw = read_frames(ds.video_path(e, CAMERA))  # 48 x 64, as a robot streams them
        assert raw.shape[1:] == (48, 64, 3)
        torched = to_uint8(images_to_tensor(raw[:, None], size))
        # measured: mean |difference| 0.3-0.5 levels, PSNR >= 49 dB
        assert np.abs(framed.astype(int) - torched.astype(int)).mean() < 1.0, e
        assert min(psnr(a, b) for a, b in zip(framed, torched)) > 40, e
    barred = stored[index["episodes"][1]["offset"] :][: ds.episodes[1]["length"]]
    assert reddest(barred) < 64  # cropped: the red margins stayed out (measured 17; stretched: 255)


@pytest.mark.parametrize("shape", [(48, 64), (64, 48), (48, 70)])  # landscape, portrait, odd crop offset (11)
def test_decoding_and_torch_cut_the_same_centre_square(tmp_path, shape):
    height, width = shape
    path = tmp_path / "clip.mp4"
    frames = barred_frames(height, width)
    encode_video(path, frames, fps=10)
    top, left, side = centre_square(height, width)
    assert (side, top + left) == (min(shape), (max(shape) - min(shape)) // 2)
    # at the square's own size nothing is resampled: both paths are the exact crop of the decoded frames
    raw = read_frames(path)
    exact = read_square_frames(path, side)
    assert np.array_equal(exact, raw[:, top : top + side, left : left + side])
    assert np.array_equal(exact, to_uint8(images_to_tensor(raw[:, None], side)))
    for size in (16, 32):
        scaled = read_square_frames(path, size)
        assert scaled.shape == (len(frames), size, size, 3)
        # no redder than the exact crop (whose edge holds some chroma bleed from encoding): the
        # pure red margins stayed out; a stretch to size² shows them at full strength (255)
        assert reddest(scaled) <= reddest(exact) + 4 and reddest(read_frames(path, size=(size, size))) > 250
        # 4-pixel random blocks resampled by non-integer ratios are the worst case for two different
        # area filters (ffmpeg's and torch's): measured >= 29.9 dB, 4.4 levels mean |difference|.
        torched = to_uint8(images_to_tensor(raw[:, None], size))
        assert min(psnr(a, b) for a, b in zip(scaled, torched)) > 28, size


def test_square_input_is_decoded_and_resized_as_before(converted_dataset):
    """Square cameras: the same ffmpeg filter and the same torch resize as before non-square support."""
    assert square_filter(64, 64, 32) == "scale=32:32:flags=area"
    path = LeRobotDataset(converted_dataset).video_path(0, CAMERA)
    assert np.array_equal(read_square_frames(path, 32), read_frames(path, size=(32, 32)))
    images = np.random.default_rng(0).integers(0, 256, (2, 1, 96, 96, 3), dtype=np.uint8)
    before = F.interpolate(
        torch.from_numpy(images[:, 0]).permute(0, 3, 1, 2).float() / 255.0, size=(64, 64), mode="area"
    )
    assert torch.equal(images_to_tensor(images, 64)[:, 0], before)


def test_stretched_frames_of_a_non_square_camera_are_refused(g1_dataset, tmp_path):
    frames_dir = tmp_path / "frames"
    assert run_cli("frames", g1_dataset, "--image-size", 32, "--output", frames_dir, "--workers", 2) == 0
    old = tmp_path / "old"
    shutil.copytree(frames_dir, old)
    index = json.loads((old / "index.json").read_text())
    del index["fit"]  # as written before non-square support (frames stretched to 32²)
    (old / "index.json").write_text(json.dumps(index))
    ds = LeRobotDataset(g1_dataset)
    config = PolicyConfig.from_preset("tiny", image_size=32, state_dim=57, action_dim=64)
    normalizer = Normalizer(ds.stats, ds.modality, config)
    TrainingSamples(ds, [0, 1], normalizer, frames=frames_dir)  # accepted
    with pytest.raises(
        PosttrainError,
        match=r"old/index.json: camera\(s\) \['observation.images.ego_view'\] are "
        r"not square and these frames were stretched to 32²",
    ):
        TrainingSamples(ds, [0, 1], normalizer, frames=old)
