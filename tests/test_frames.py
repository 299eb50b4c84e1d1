"""`posttrain frames` and the trainer's frames path: the same pixels and samples as decoding videos,
stale or foreign frames refused with one line, no partial output, training identical with or
without --frames; the imageio-ffmpeg size warning is gone; the `base` preset trains (slow).

Small data: the session's converted dataset (6 episodes × 40-56 frames, 64²; tests/conftest.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ENV, run_cli, train_command
from posttrain.data import TrainingSamples
from posttrain.errors import PosttrainError
from posttrain.frames import decode_camera
from posttrain.lerobot import LeRobotDataset
from posttrain.policy import Normalizer, PolicyConfig
from posttrain.video import VideoSettings, encode_video, read_frames

CAMERA = "observation.images.ego_view"
JITTER = {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08}


@pytest.fixture(scope="module")
def frames32(converted_dataset, tmp_path_factory) -> Path:
    """The converted 64² dataset's frames at 32² (scaled while decoding, as for a 224² policy)."""
    out = tmp_path_factory.mktemp("frames") / "frames"
    assert run_cli("frames", converted_dataset, "--image-size", 32, "--output", out, "--workers", 2) == 0
    return out


def samples(dataset: Path, frames: Path | None, image_size: int = 32) -> TrainingSamples:
    ds = LeRobotDataset(dataset)
    config = PolicyConfig.from_preset("tiny", image_size=image_size)
    return TrainingSamples(
        ds,
        [e["episode_index"] for e in ds.episodes],
        Normalizer(ds.stats, ds.modality, config),
        color_jitter_params=JITTER,
        state_dropout_prob=0.5,
        seed=7,
        frames=frames,
    )


def error_line(capsys, *args) -> str:
    assert run_cli(*args) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_frames_hold_exactly_the_decoded_pixels(converted_dataset, frames32):
    ds = LeRobotDataset(converted_dataset)
    index = json.loads((frames32 / "index.json").read_text())
    array = np.load(frames32 / index["cameras"][CAMERA], mmap_mode="r")
    assert array.shape == (sum(e["length"] for e in ds.episodes), 32, 32, 3) and array.dtype == np.uint8
    for episode in index["episodes"]:
        decoded = decode_camera(ds, episode["episode_index"], CAMERA, 32)  # the trainer's and eval's decode call
        rows = array[episode["offset"] : episode["offset"] + episode["length"]]
        assert np.array_equal(rows, decoded), episode
    assert json.loads((frames32 / ".posttrain.json").read_text()) == {"stage": "frames"}
    assert [p.name for p in frames32.parent.iterdir()] == ["frames"]  # no temporary directory or lock left


def test_samples_from_frames_are_bit_identical_to_decoded_samples(converted_dataset, frames32):
    decoded, framed = samples(converted_dataset, None), samples(converted_dataset, frames32)
    assert len(decoded) == len(framed)
    for index in range(len(decoded)):  # every sample, with jitter, state dropout and noise drawn
        a, b = decoded[(index, 1000 + index)], framed[(index, 1000 + index)]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), index
    # DataLoader workers read through their own file descriptors, with the same result.
    loader = torch.utils.data.DataLoader(
        framed, batch_size=None, sampler=[(i, i) for i in range(0, 60, 7)], num_workers=2
    )
    for (index, _), sample in zip([(i, i) for i in range(0, 60, 7)], loader):
        assert torch.equal(sample["images"], decoded[(index, index)]["images"])


def test_frames_of_another_size_or_dataset_are_refused(converted_dataset, frames32, tmp_path):
    with pytest.raises(PosttrainError, match=r"frames are 32², the policy reads 64²; make them with `posttrain fr"):
        samples(converted_dataset, frames32, image_size=64)
    with pytest.raises(PosttrainError, match=r"not a frames directory \(index.json missing\)"):
        samples(converted_dataset, tmp_path)

    other = tmp_path / "other"  # a re-encoded video (other CRF): same lengths, other pixels
    shutil.copytree(converted_dataset, other)
    video = LeRobotDataset(other).video_path(2, CAMERA)
    encode_video(video, read_frames(video), fps=50, settings=VideoSettings(crf=35))
    with pytest.raises(PosttrainError, match=f"{video}: not the video these frames were decoded from"):
        samples(other, frames32)

    lengths = tmp_path / "lengths"  # meta/episodes.jsonl of another conversion
    shutil.copytree(converted_dataset, lengths)
    rows = LeRobotDataset(lengths).episodes[0]["length"]
    episodes = (lengths / "meta" / "episodes.jsonl").read_text()
    episodes = episodes.replace(f'"length": {rows}}}', f'"length": {rows + 1}}}', 1)
    (lengths / "meta" / "episodes.jsonl").write_text(episodes)
    with pytest.raises(PosttrainError, match=f"episode 0: {rows} frames, meta/episodes.jsonl says length {rows + 1}"):
        samples(lengths, frames32)


def test_bad_video_fails_with_one_line_and_leaves_no_output(copy_dataset, tmp_path, capsys):
    dataset = copy_dataset()
    ds = LeRobotDataset(dataset)
    video, rows = ds.video_path(1, CAMERA), ds.episodes[1]["length"]
    encode_video(video, ds.read_video(1, CAMERA)[: rows - 3], fps=ds.fps)
    out = tmp_path / "out" / "frames"
    assert (
        error_line(capsys, "frames", dataset, "--image-size", 32, "--output", out, "--workers", 2)
        == f"error: {video}: episode 1: {rows - 3} video frames, expected {rows} (meta/episodes.jsonl length)"
    )
    assert not out.exists() and list(out.parent.iterdir()) == []

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "this stage only replaces its own outputs" in error_line(
        capsys, "frames", dataset, "--image-size", 32, "--output", foreign
    )
    assert (foreign / "notes.txt").read_text() == "mine"


def test_frames_stage_runs_without_torch(converted_dataset, tmp_path):
    """The frames rule runs in the data environment (envs/convert.yaml): no torch there."""
    blocked = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'torch', 'accelerate', 'safetensors'}:\n"
        "            raise ImportError(name + ' is not in the data extra')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from posttrain.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    command = [
        sys.executable,
        "-c",
        blocked,
        "frames",
        str(converted_dataset),
        "--image-size",
        "16",
        "--output",
        str(tmp_path / "frames"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "frame size for reading" not in done.stderr  # imageio-ffmpeg's per-video warning is silenced


def test_scaled_decoding_logs_no_size_warning(converted_dataset, caplog):
    caplog.set_level(logging.WARNING)
    frames = read_frames(LeRobotDataset(converted_dataset).video_path(0, CAMERA), size=(32, 32))
    assert frames.shape[1:] == (32, 32, 3)
    assert not [r for r in caplog.records if "frame size" in r.getMessage()]


def train(dataset: Path, output: Path, *extra) -> subprocess.CompletedProcess:
    command = train_command(
        dataset,
        output,
        "--holdout-episodes",
        "1",
        "--global-batch-size",
        "4",
        "--max-steps",
        "4",
        "--save-steps",
        "4",
        "--logging-steps",
        "1",
        "--dataloader-num-workers",
        "1",
        *map(str, extra),
    )
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_training_with_frames_is_the_same_run(converted_dataset, tmp_path):
    frames = tmp_path / "frames64"
    assert run_cli("frames", converted_dataset, "--image-size", 64, "--output", frames) == 0
    train(converted_dataset, tmp_path / "decoded")
    train(converted_dataset, tmp_path / "framed", "--frames", frames)
    a, b = tmp_path / "decoded" / "checkpoint-4", tmp_path / "framed" / "checkpoint-4"
    losses = [[e["loss"] for e in json.loads((c / "trainer_state.json").read_text())["log_history"]] for c in (a, b)]
    assert losses[0] == losses[1] and len(losses[0]) == 4
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    # The frames directory is derived from the dataset: it is not part of the run identity, so a run
    # started without it resumes with it (and the workflow can switch to it without retraining).
    assert json.loads((a / "identity.json").read_text())["id"] == json.loads((b / "identity.json").read_text())["id"]


@pytest.mark.slow
def test_base_preset_loss_falls_on_cpu(converted_dataset, tmp_path):
    """`base` (the GPU profiles' preset) at full width and depth, but 64² images (224² takes ~10 s a
    step on 2 cores), trained as `posttrain train` does for 40 steps on CPU: the loss falls."""
    from posttrain.data import StepSampler
    from posttrain.policy import PolicyModel

    frames = tmp_path / "frames"
    assert run_cli("frames", converted_dataset, "--image-size", 64, "--output", frames) == 0
    ds = LeRobotDataset(converted_dataset)
    config = PolicyConfig.from_preset("base", image_size=64, vision_tokens_per_side=4)  # 4x4 patches of 16
    data = TrainingSamples(
        ds,
        [0, 1, 2, 3, 4],
        Normalizer(ds.stats, ds.modality, config),
        color_jitter_params=JITTER,
        seed=0,
        frames=frames,
    )
    loader = torch.utils.data.DataLoader(data, batch_sampler=StepSampler(len(data), 8, 1, 0, 1, 0, 0, 40))
    torch.manual_seed(0)
    model = PolicyModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-5)
    losses = []
    for batch in loader:
        loss = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    print(json.dumps([round(x, 3) for x in losses]))
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8]), losses
