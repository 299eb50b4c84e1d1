"""Benchmark `posttrain train` (native backend) and its data loader; prints ONE JSON line.

    python bench/train.py [--preset tiny --steps 60 --batch 32 --workers 1 --episodes 8 --image-size 64]

1. `posttrain synth` + `convert` + `stats` build a small synthetic dataset in a temp dir (not timed).
2. The loader alone: the trainer's DataLoader (same sampler, samples and workers) is iterated for
   `--steps` batches: samples/s, with the first batch (worker start + episode decoding) reported
   separately as `loader_first_batch_s`.
3. The trainer itself runs in-process for `--steps` steps (logging every step); from its
   trainer_state.json: samples/s and the step time split into data wait and compute, over the steps
   after the first 5 (warm-up). Peak memory: CUDA max_memory_allocated on GPU, else peak RSS.

Runs on the GPU when torch sees one, else on the CPU. Targets (not asserted): on CPU, data wait
< 10 % of the step time with one worker; on GPU the loader should keep up (data_wait_s << compute_s).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from posttrain.cli import main as cli


def measure_loader(dataset: Path, batch: int, steps: int, workers: int, preset: str) -> dict:
    from posttrain.data import StepSampler, TrainingSamples, camera_keys, split_episodes
    from posttrain.lerobot import ACTION, STATE, LeRobotDataset
    from posttrain.policy import Normalizer, PolicyConfig

    ds = LeRobotDataset(dataset)
    features = ds.info["features"]
    config = PolicyConfig.from_preset(preset, state_dim=features[STATE]["shape"][0],
                                      action_dim=features[ACTION]["shape"][0], num_cameras=len(camera_keys(ds)))
    samples = TrainingSamples(ds, split_episodes(ds, 1)["train_episodes"], Normalizer(ds.stats, ds.modality, config),
                              color_jitter_params={"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08})
    sampler = StepSampler(len(samples), batch, 1, 0, 1, seed=0, start_step=0, max_steps=steps + 1)
    loader = torch.utils.data.DataLoader(samples, batch_sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0)
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    return {"loader_samples_per_s": round(steps * batch / seconds, 1), "loader_first_batch_s": round(first, 3)}


def peak_memory() -> dict:
    if torch.cuda.is_available():
        return {"peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1), "peak_memory_kind": "cuda_allocated"}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # includes the dataset build
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # largest DataLoader worker
    return {"peak_memory_mb": round(rss_kb / 1024, 1), "peak_worker_rss_mb": round(children_kb / 1024, 1),
            "peak_memory_kind": "rss"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        quiet = open(os.devnull, "w")
        stderr, sys.stderr = sys.stderr, quiet  # keep the one-JSON-line output clean
        try:
            assert cli(["synth", str(tmp / "raw.hdf5"), "--episodes", str(args.episodes), "--min-frames",
                        str(args.frames), "--max-frames", str(args.frames), "--image-size", str(args.image_size)]) == 0
            assert cli(["convert", "--input", str(tmp / "raw.hdf5"), "--output", str(tmp / "lerobot")]) == 0
            assert cli(["stats", str(tmp / "lerobot")]) == 0
            loader = measure_loader(tmp / "lerobot", args.batch, args.steps, args.workers, args.preset)
            start = time.perf_counter()
            assert cli(["train", "--dataset", str(tmp / "lerobot"), "--output", str(tmp / "run"), "--preset", args.preset,
                        "--holdout-episodes", "1", "--global-batch-size", str(args.batch), "--max-steps", str(args.steps),
                        "--save-steps", str(args.steps), "--logging-steps", "1",
                        "--dataloader-num-workers", str(args.workers)]) == 0
            wall = time.perf_counter() - start
        finally:
            sys.stderr = stderr
            quiet.close()
        state = json.loads((tmp / "run" / f"checkpoint-{args.steps}" / "trainer_state.json").read_text())
    steady = state["log_history"][5:] or state["log_history"]
    data_wait = float(np.mean([e["data_wait_s"] for e in steady]))
    compute = float(np.mean([e["compute_s"] for e in steady]))
    print(json.dumps({
        "bench": "train", "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(), "preset": args.preset, "batch": args.batch, "steps": args.steps,
        "workers": args.workers, "image_size": args.image_size,
        "samples_per_s": round(args.batch / (data_wait + compute), 1),
        "step_time_s": round(data_wait + compute, 4), "data_wait_s": round(data_wait, 4), "compute_s": round(compute, 4),
        "train_wall_s": round(wall, 2), **loader, **peak_memory(),
    }))


if __name__ == "__main__":
    main()
