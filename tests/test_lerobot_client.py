"""lerobot's own reader and stock policies on our datasets, fully offline, in isolated environments.

- lerobot 0.3.3 (the last release that reads v2.1) loads the converted dataset with
  `LeRobotDataset(repo_id, root=PATH)`, decodes every frame (its timestamp check: 1e-4 s) and builds
  ACT and Diffusion Policy from the dataset's metadata (their normalisers need every camera's stats).
- lerobot 0.4.4 (v3.0 only) loads `posttrain export --format lerobot-v3`, and ACT's preprocessor
  normalises the camera with the exported stats.

Environments. Not our torch 2.13: lerobot's dataset module imports torchvision, and the only
torchvision for torch 2.13 on PyPI (0.28) is a CUDA build whose C extension needs libc10_cuda.so and
libtorch_cuda.so, which the CPU torch lacks (`import torchvision` fails with "operator
torchvision::nms does not exist"); lerobot 0.3.3's pyav backend also needs torchvision.io.VideoReader,
which torchvision 0.28 no longer has. So they use lerobot's own pin, torch 2.7.1 + torchvision 0.22.1
from PyPI (CUDA wheels: about 2.7 GB to download, 5.3 GB on disk), installed once into a base venv.
Each lerobot version is a small venv on top (a .pth file puts the base's site-packages after its
own): lerobot without its dependencies, plus the ones its reader and policies import (not the robot,
teleoperation and UI packages: pynput alone needs a compiler for evdev). Built on first use under
$POSTTRAIN_LEROBOT_CACHE (default ~/.cache/posttrain-lerobot-venv), each named by a hash of its
package list; a build that fails (no network) skips these tests with pip's last words.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from posttrain import export, lerobot

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("POSTTRAIN_LEROBOT_CACHE") or Path.home() / ".cache" / "posttrain-lerobot-venv")
BASE = ["torch==2.7.1", "torchvision==0.22.1"]  # the newest pair lerobot 0.3.3 accepts; 0.4.4 accepts it too
LEROBOT = {  # lerobot's own requirement ranges, for what `LeRobotDataset` and the policies import
    "0.3.3": [
        "datasets==3.6.0",
        "huggingface-hub>=0.34.2,<0.35",
        "jsonlines>=4",
        "draccus==0.10.0",
        "einops>=0.8",
        "av>=14.2",
        "safetensors",
        "pyserial>=3.5",
        "diffusers>=0.27.2",
        "imageio>=2.34,<3",
        "deepdiff>=7,<9",
        "gymnasium>=0.29.1,<1",
    ],
    "0.4.4": [
        "datasets>=4,<5",
        "huggingface-hub>=0.34.2,<0.36",
        "jsonlines>=4,<5",
        "draccus==0.10.0",
        "einops>=0.8,<0.9",
        "av>=15,<16",
        "safetensors",
        "pyserial>=3.5,<4",
        "diffusers>=0.27.2,<0.36",
        "imageio>=2.34,<3",
        "deepdiff>=7,<9",
        "gymnasium>=1.1.1,<2",
        "accelerate>=1.10,<2",
        "termcolor>=2.4,<4",
    ],
}
CAMERA = "observation.images.ego_view"
HORIZON = 16
_failed: dict[Path, str] = {}  # builds that failed in this session: skip at once, do not retry


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def build_venv(name: str, packages: list[str], no_deps: list[str] = (), base: Path | None = None) -> Path:
    """The python of a cached venv with `packages` (and `no_deps` installed without dependencies),
    built on first use; it is renamed into place only when complete."""
    spec = json.dumps([sys.version, packages, list(no_deps), str(base)])
    target = CACHE / f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"
    if (target / "bin" / "python").exists():
        return target
    if target in _failed:
        pytest.skip(_failed[target])
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (two test runs, two users of one cache)
        if (target / "bin" / "python").exists():
            return target
        tmp = CACHE / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        pip = [
            str(tmp / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--no-cache-dir",
            "--disable-pip-version-check",
        ]
        try:
            subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, capture_output=True, text=True)
            if base is not None:
                (site_packages(tmp) / "_posttrain_base.pth").write_text(
                    f"import site; site.addsitedir({str(site_packages(base))!r})\n"
                )
            if no_deps:
                subprocess.run(pip + ["--no-deps", *no_deps], check=True, capture_output=True, text=True, timeout=1800)
            subprocess.run(pip + packages, check=True, capture_output=True, text=True, timeout=1800)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            words = " ".join((err.stderr or "").strip().splitlines()[-2:]) if isinstance(err.stderr, str) else ""
            _failed[target] = f"cannot build the {name} environment in {CACHE} (no network?): {words or err}"
            pytest.skip(_failed[target])
        tmp.rename(target)
        (CACHE / f"{target.name}.build_seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    return target


def lerobot_python(version: str) -> Path:
    base = build_venv("torch-2.7.1", BASE)
    return build_venv(f"lerobot-{version}", LEROBOT[version], no_deps=[f"lerobot=={version}"], base=base) / "bin/python"


def run_client(version: str, script: str, root: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """Run `script` in lerobot `version`'s environment, offline; its JSON result and decoded frames."""
    python = lerobot_python(version)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "PYTHON", "POSTTRAIN_"))}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONNOUSERSITE="1",
        OMP_NUM_THREADS="1",
    )
    frames = tmp_path / f"frames_{version}.npy"
    (tmp_path / "client.py").write_text(script)
    result = subprocess.run(
        [str(python), str(tmp_path / "client.py"), str(root), str(frames)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(frames)


# Both scripts read every frame through lerobot's own __getitem__ (video decode at each frame's
# timestamp, 16-step action chunks padded at episode ends) and build a stock ACT policy.
READ_FRAMES = """
import json, sys
import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import make_policy
from lerobot.policies.act.configuration_act import ACTConfig

root, frames_out = sys.argv[1], sys.argv[2]
meta = LeRobotDatasetMetadata("local/posttrain", root=root)
camera = meta.camera_keys[0]
ds = LeRobotDataset("local/posttrain", root=root, video_backend="pyav",
                    delta_timestamps={"action": [i / meta.fps for i in range(16)]})
frames, pads = [], []
for i in range(len(ds)):
    item = ds[i]
    frames.append((item[camera].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0))
    pads.append(item["action_is_pad"].tolist())
np.save(frames_out, np.stack(frames))
result = {"names": meta.names, "frames": len(ds), "pads": pads, "cameras": meta.camera_keys,
          "episode_index": [int(x) for x in ds.hf_dataset["episode_index"]],
          "tasks": sorted({ds[i]["task"] for i in (0, len(ds) - 1)})}
act_config = ACTConfig(pretrained_backbone_weights=None, device="cpu", chunk_size=16, n_action_steps=16)
act = make_policy(act_config, ds_meta=meta)
batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)))
"""

CLIENT_V21 = (
    READ_FRAMES
    + """
from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
camera_buffer = getattr(act.normalize_inputs, "buffer_" + camera.replace(".", "_"))
result["act_camera_mean"] = camera_buffer["mean"].flatten().tolist()
result["act_camera_std"] = camera_buffer["std"].flatten().tolist()
result["act_state_mean"] = act.normalize_inputs.buffer_observation_state["mean"].tolist()
act.train()
result["act_loss"] = float(act.forward(batch)[0])
diffusion = make_policy(DiffusionConfig(device="cpu", crop_shape=None, horizon=16, n_action_steps=8,
                                        pretrained_backbone_weights=None), ds_meta=meta)
state = diffusion.normalize_inputs.buffer_observation_state
result["diffusion_state_min"] = state["min"].tolist()
result["diffusion_state_max"] = state["max"].tolist()
print(json.dumps(result))
"""
)

CLIENT_V30 = (
    READ_FRAMES
    + """
from lerobot.policies.factory import make_pre_post_processors
pre, post = make_pre_post_processors(act_config, dataset_stats=meta.stats)
normaliser = next(step for step in pre.steps if type(step).__name__ == "NormalizerProcessorStep")
raw = batch[camera].clone()
out = pre(batch)
mean, std = normaliser._tensor_stats[camera]["mean"], normaliser._tensor_stats[camera]["std"]
result["normalised"] = sorted(normaliser._tensor_stats)
result["camera_mean"] = mean.flatten().tolist()
result["camera_normalised_by_mean_std"] = bool(torch.allclose(out[camera], (raw - mean) / (std + 1e-8), atol=1e-5))
result["state_q01"] = meta.stats["observation.state"]["q01"].tolist()
act.train()
result["act_loss"] = float(act.forward(out)[0])
print(json.dumps(result))
"""
)


def expected_pads(lengths: list[int]) -> list[list[bool]]:
    """action_is_pad of every frame: the chunk runs past the episode's last frame."""
    return [[frame + k >= length for k in range(HORIZON)] for length in lengths for frame in range(length)]


def camera_aggregate(root: Path, stat: str) -> np.ndarray:
    """The camera's dataset-wide mean or std from episodes_stats.jsonl, weighted by sampled frames."""
    lines = lerobot.read_jsonl(root / "meta/episodes_stats.jsonl")
    counts = np.array([line["stats"][CAMERA]["count"][0] for line in lines], float)
    means = np.array([np.ravel(line["stats"][CAMERA]["mean"]) for line in lines])
    mean = counts @ means / counts.sum()
    if stat == "mean":
        return mean
    stds = np.array([np.ravel(line["stats"][CAMERA]["std"]) for line in lines])
    return np.sqrt(counts @ (stds**2 + (means - mean) ** 2) / counts.sum())


def our_frames(root: Path) -> np.ndarray:
    data = lerobot.LeRobotDataset(root)
    return np.concatenate([data.read_video(e["episode_index"], CAMERA) for e in data.episodes])


def test_lerobot_033_loads_the_v21_dataset_and_builds_act_and_diffusion(converted_dataset, tmp_path):
    result, frames = run_client("0.3.3", CLIENT_V21, converted_dataset, tmp_path)
    data = lerobot.LeRobotDataset(converted_dataset)
    lengths = [e["length"] for e in data.episodes]
    assert result["names"] == {key: feature["names"] for key, feature in data.info["features"].items()}
    assert result["cameras"] == [CAMERA] and result["frames"] == sum(lengths)
    assert result["episode_index"] == [i for i, n in enumerate(lengths) for _ in range(n)]
    np.testing.assert_array_equal(frames, our_frames(converted_dataset))  # every frame, as we decode it
    assert result["pads"] == expected_pads(lengths)
    np.testing.assert_allclose(result["act_camera_mean"], camera_aggregate(converted_dataset, "mean"), rtol=1e-6)
    np.testing.assert_allclose(result["act_camera_std"], camera_aggregate(converted_dataset, "std"), rtol=1e-5)
    stats = lerobot.read_json(converted_dataset / "meta/stats.json")["observation.state"]
    np.testing.assert_allclose(result["act_state_mean"], stats["mean"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(result["diffusion_state_min"], stats["min"], rtol=1e-6)
    np.testing.assert_allclose(result["diffusion_state_max"], stats["max"], rtol=1e-6)
    assert np.isfinite(result["act_loss"])


def test_lerobot_044_loads_the_v3_export_and_normalises_the_camera(converted_dataset, tmp_path, monkeypatch):
    data = lerobot.LeRobotDataset(converted_dataset)
    sizes = [data.video_path(e["episode_index"], CAMERA).stat().st_size for e in data.episodes]
    monkeypatch.setattr(export, "VIDEO_FILE_MB", 2.5 * max(sizes) / 2**20)  # episodes spread over video files
    v3 = tmp_path / "v3"
    assert run_cli("export", "--format", "lerobot-v3", converted_dataset, "--output", v3) == 0
    assert len(list(v3.glob("videos/*/chunk-*/file-*.mp4"))) > 1
    result, frames = run_client("0.4.4", CLIENT_V30, v3, tmp_path)
    lengths = [e["length"] for e in data.episodes]
    assert result["frames"] == sum(lengths) and result["tasks"] == sorted(data.tasks.values())
    np.testing.assert_array_equal(frames, our_frames(converted_dataset))  # from_timestamp lands on each episode
    assert result["pads"] == expected_pads(lengths)
    assert CAMERA in result["normalised"] and result["camera_normalised_by_mean_std"]
    np.testing.assert_allclose(result["camera_mean"], camera_aggregate(converted_dataset, "mean"), rtol=1e-6)
    gr00t = lerobot.read_json(converted_dataset / "meta/stats.json")["observation.state"]
    assert result["state_q01"] == gr00t["q01"]  # GR00T's q01, read back by lerobot unchanged
    assert np.isfinite(result["act_loss"])
