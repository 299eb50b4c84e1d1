"""Benchmark the training data path at the seed's scale; prints one JSON line per configuration.

    python bench/train.py                      # loader: tiny and base x 25/100/400 episodes x 1 and 2 workers
    python bench/train.py --presets base --episodes 100 --workers 2     # one configuration
    python bench/train.py --decode --presets base --episodes 100 --workers 1 --steps 4   # the old path
    python bench/train.py --trainer --presets base --batch 16 --steps 30 [--mixed-precision bf16]

The dataset has the seed's shape: `posttrain synth --episodes 100 --min-frames 330 --max-frames 330
--image-size 512`, converted and with stats. Building it takes many minutes on 2 cores, so it is
cached under ~/.cache/posttrain-bench/ (override: $POSTTRAIN_BENCH_CACHE), keyed by its parameters,
together with each `posttrain frames` directory (one per image size). 25 episodes = the first 25
of that dataset; 400 = a dataset whose episodes 100..399 are the first 100 again under new indices
(hard links, same bytes), with its own frames directory (the file is 4x larger, as it would be).

Loader (the default): each configuration runs in a fresh process. The trainer's own
TrainingSamples + StepSampler + DataLoader (batch --batch, colour jitter as the workflow's config)
read from the frames directory (or, with --decode, decode videos into the per-worker cache as
without one). Reported: first-batch latency (worker start + first reads), samples/s over --steps
batches after --warmup batches, peak RSS (VmHWM) of each worker and of the main process and their
sum, and the final PSS (shared pages split between the processes that map them) of all of them.

Trainer (--trainer): `posttrain train` in-process with --frames for --steps steps, from its
trainer_state.json: samples/s, step time split into data wait and compute (steps after the first
5), peak memory (CUDA max_memory_allocated on GPU, else peak RSS). bench/gpu.sh uses this mode.

Targets (not asserted), on the 2-core CPU: base loader >= 300 samples/s with 2 workers after
warm-up, within 20 % from 25 to 400 episodes, worker peak RSS < 600 MB whatever the episode count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
JITTER = {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08}  # config/config.yaml's
CACHE = Path(os.environ.get("POSTTRAIN_BENCH_CACHE", Path.home() / ".cache" / "posttrain-bench"))


def posttrain(*args) -> None:
    """`posttrain ARGS` in a child process, quiet; its stderr tail on failure."""
    result = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", *map(str, args)], capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise SystemExit(f"posttrain {' '.join(map(str, args[:2]))} failed:\n{result.stderr[-2000:]}")


# --- the cached datasets -------------------------------------------------------------------------
def source_dataset(episodes: int, frames: int, image_size: int) -> Path:
    """The synthetic LeRobot dataset of this shape (built once: synth, convert, stats)."""
    root = CACHE / f"synth-e{episodes}-f{frames}-s{image_size}-seed0"
    if not (root / "lerobot" / "meta" / "stats.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        print(f"building {root} (once; minutes) ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            tmp = Path(tmp)
            posttrain(
                "synth",
                tmp / "raw.hdf5",
                "--episodes",
                episodes,
                "--min-frames",
                frames,
                "--max-frames",
                frames,
                "--image-size",
                image_size,
                "--seed",
                0,
            )
            posttrain("convert", "--input", tmp / "raw.hdf5", "--output", tmp / "lerobot")
            posttrain("stats", tmp / "lerobot")
            shutil.rmtree(root / "lerobot", ignore_errors=True)
            os.replace(tmp / "lerobot", root / "lerobot")
    return root / "lerobot"


def repeated_dataset(source: Path, episodes: int) -> Path:
    """`episodes` episodes: the source's, then the source's again under new indices (hard links)."""
    from posttrain.lerobot import LeRobotDataset, jsonl

    src = LeRobotDataset(source)
    if episodes <= src.num_episodes:
        return source
    root = source.parent / f"repeat-{episodes}"
    if (root / "meta" / "stats.json").is_file():
        return root
    tmp = Path(tempfile.mkdtemp(dir=source.parent, prefix=f".repeat-{episodes}-"))
    rows = []
    for new in range(episodes):
        old = src.episodes[new % src.num_episodes]
        for path, target in zip(
            episode_files(src.info, old["episode_index"], src.video_keys), episode_files(src.info, new, src.video_keys)
        ):
            (tmp / target).parent.mkdir(parents=True, exist_ok=True)
            os.link(source / path, tmp / target)
        rows.append({**old, "episode_index": new})
    shutil.copytree(source / "meta", tmp / "meta")
    (tmp / "meta" / "episodes.jsonl").write_text(jsonl(rows))
    info = json.loads((tmp / "meta" / "info.json").read_text())
    info.update(
        total_episodes=episodes,
        total_frames=sum(r["length"] for r in rows),
        total_videos=episodes * len(src.video_keys),
        splits={"train": f"0:{episodes}"},
    )
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    return root


def episode_files(info: dict, episode: int, video_keys: list[str]) -> list[Path]:
    """The parquet file, then each camera's video, of an episode (relative paths, v2.1 templates)."""
    chunk = episode // info["chunks_size"]
    return [
        Path(info["data_path"].format(episode_chunk=chunk, episode_index=episode)),
        *[
            Path(info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=episode))
            for key in video_keys
        ],
    ]


def frames_dir(dataset: Path, image_size: int) -> Path:
    """`posttrain frames` of the dataset at image_size (built once; its build time is printed)."""
    out = dataset.parent / f"frames-{dataset.name}-{image_size}"
    if not (out / "index.json").is_file():
        start = time.perf_counter()
        posttrain("frames", dataset, "--image-size", image_size, "--output", out)
        seconds = time.perf_counter() - start
        index = json.loads((out / "index.json").read_text())
        print(
            json.dumps(
                {
                    "bench": "frames",
                    "dataset": str(dataset),
                    "image_size": image_size,
                    "frames": index["total_frames"],
                    "seconds": round(seconds, 1),
                    "frames_per_s": round(index["total_frames"] / seconds, 1),
                    "gib": round(sum(f.stat().st_size for f in out.glob("*.npy")) / 2**30, 2),
                }
            ),
            flush=True,
        )
    return out


# --- memory of a process tree --------------------------------------------------------------------
def memory_mb(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) from /proc/PID/status and Pss from /proc/PID/smaps_rollup, in MB."""
    values = {}
    for name, key in (("status", "VmHWM:"), ("smaps_rollup", "Pss:")):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key):
                values[key.rstrip(":")] = int(line.split()[1]) / 1024
                break
    return {"peak_rss": values.get("VmHWM", 0.0), "pss": values.get("Pss", 0.0)}


def cpu_seconds(pid: int) -> np.ndarray:
    """[user, system] CPU seconds of a process so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return np.array([int(fields[11]), int(fields[12])]) / os.sysconf("SC_CLK_TCK")


# --- one loader configuration (in its own process) ------------------------------------------------
def measure_loader(
    dataset: Path, frames: Path | None, preset: str, episodes: int, workers: int, batch: int, warmup: int, steps: int
) -> dict:
    import torch

    from posttrain.data import StepSampler, TrainingSamples, camera_keys
    from posttrain.lerobot import ACTION, STATE, LeRobotDataset
    from posttrain.policy import Normalizer, PolicyConfig

    ds = LeRobotDataset(dataset)
    features = ds.info["features"]
    config = PolicyConfig.from_preset(
        preset,
        state_dim=features[STATE]["shape"][0],
        action_dim=features[ACTION]["shape"][0],
        num_cameras=len(camera_keys(ds)),
    )
    train_episodes = [row["episode_index"] for row in ds.episodes[:episodes]]
    samples = TrainingSamples(
        ds,
        train_episodes,
        Normalizer(ds.stats, ds.modality, config),
        color_jitter_params=JITTER,
        state_dropout_prob=0.5,
        seed=0,
        frames=frames,
    )
    sampler = StepSampler(len(samples), batch, 1, 0, 1, seed=0, start_step=0, max_steps=1 + warmup + steps)
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0
    )
    start = time.perf_counter()
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    for _ in range(warmup):
        next(batches)
    pids = [w.pid for w in getattr(batches, "_workers", [])]
    cpu = [cpu_seconds(pid) for pid in pids], cpu_seconds(os.getpid())
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    worker_cpu = sum((cpu_seconds(pid) - before for pid, before in zip(pids, cpu[0])), np.zeros(2))
    main_cpu = cpu_seconds(os.getpid()) - cpu[1]
    per_worker = [memory_mb(pid) for pid in pids]
    main = memory_mb(os.getpid())
    del batches, loader
    return {
        "loader_samples_per_s": round(steps * batch / seconds, 1),
        "loader_first_batch_s": round(first, 3),
        # CPU time per sample (workers, main process): what the rate would be on idle cores
        "worker_cpu_ms_per_sample": round(1e3 * worker_cpu.sum() / (steps * batch), 3),
        "worker_sys_ms_per_sample": round(1e3 * worker_cpu[1] / (steps * batch), 3),  # of which in the kernel
        "main_cpu_ms_per_sample": round(1e3 * main_cpu.sum() / (steps * batch), 3),
        "train_samples": len(samples),
        "worker_peak_rss_mb": round(max((w["peak_rss"] for w in per_worker), default=0), 1),
        "main_peak_rss_mb": round(main["peak_rss"], 1),
        "total_peak_rss_mb": round(main["peak_rss"] + sum(w["peak_rss"] for w in per_worker), 1),
        "total_pss_mb": round(main["pss"] + sum(w["pss"] for w in per_worker), 1),
    }


def loader_matrix(args) -> None:
    source = source_dataset(args.source_episodes, args.frames, args.image_size)
    from posttrain.policy import PolicyConfig

    for preset in args.presets:
        size = PolicyConfig.from_preset(preset).image_size
        for episodes in args.episodes:
            dataset = repeated_dataset(source, episodes)
            frames = None if args.decode else frames_dir(dataset, size)
            for workers in args.workers:
                child = [
                    sys.executable,
                    __file__,
                    "--measure",
                    str(dataset),
                    str(frames or ""),
                    preset,
                    str(episodes),
                    str(workers),
                    "--batch",
                    str(args.batch),
                    "--warmup",
                    str(args.warmup),
                    "--steps",
                    str(args.steps),
                ]
                result = subprocess.run(
                    child, capture_output=True, text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"}
                )
                if result.returncode:
                    raise SystemExit(result.stderr[-3000:])
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                print(
                    json.dumps(
                        {
                            "bench": "loader",
                            "path": "decode" if args.decode else "frames",
                            "preset": preset,
                            "image_size": size,
                            "episodes": episodes,
                            "workers": workers,
                            "batch": args.batch,
                            "source": f"{args.source_episodes}x{args.frames}x{args.image_size}^2",
                            "load_avg_1m": round(os.getloadavg()[0], 2),
                            **measured,
                        }
                    ),
                    flush=True,
                )


# --- the trainer ----------------------------------------------------------------------------------
def trainer(args) -> None:
    import torch

    from posttrain.cli import main as cli
    from posttrain.policy import PolicyConfig

    dataset = source_dataset(args.source_episodes, args.frames, args.image_size)
    preset = args.presets[0]
    frames = frames_dir(dataset, PolicyConfig.from_preset(preset).image_size)
    workers = args.workers[0]
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        start = time.perf_counter()
        code = cli(
            [
                "train",
                "--dataset",
                str(dataset),
                "--frames",
                str(frames),
                "--output",
                f"{tmp}/run",
                "--preset",
                preset,
                "--holdout-episodes",
                "1",
                "--global-batch-size",
                str(args.batch),
                "--max-steps",
                str(args.steps),
                "--save-steps",
                str(args.steps),
                "--logging-steps",
                "1",
                "--dataloader-num-workers",
                str(workers),
                "--mixed-precision",
                args.mixed_precision,
                "--learning-rate",
                "1e-4",
                "--color-jitter-params",
                *[str(x) for item in JITTER.items() for x in item],
            ]
        )
        wall = time.perf_counter() - start
        if code:
            raise SystemExit(f"posttrain train exited with {code}")
        state = json.loads(Path(f"{tmp}/run/checkpoint-{args.steps}/trainer_state.json").read_text())
    steady = state["log_history"][5:] or state["log_history"]
    data_wait = float(np.mean([e["data_wait_s"] for e in steady]))
    compute = float(np.mean([e["compute_s"] for e in steady]))
    if torch.cuda.is_available():
        memory = {
            "peak_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "peak_memory_kind": "cuda_allocated",
        }
    else:
        memory = {"peak_memory_mb": round(memory_mb(os.getpid())["peak_rss"], 1), "peak_memory_kind": "rss"}
    step = data_wait + compute
    print(
        json.dumps(
            {
                "bench": "train",
                "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                "torch_threads": torch.get_num_threads(),
                "preset": preset,
                "batch": args.batch,
                "steps": args.steps,
                "workers": workers,
                "mixed_precision": args.mixed_precision,
                "samples_per_s": round(args.batch / step, 1),
                "step_time_s": round(step, 4),
                "data_wait_s": round(data_wait, 4),
                "compute_s": round(compute, 4),
                "train_wall_s": round(wall, 1),
                "projected_30000_steps_h": round(30000 * step / 3600, 2),
                "projected_20000_steps_h": round(20000 * step / 3600, 2),
                "first_loss": state["log_history"][0]["loss"],
                "last_loss": state["log_history"][-1]["loss"],
                **memory,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"])
    parser.add_argument("--episodes", nargs="+", type=int, default=[25, 100, 400], help="training episodes")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="DataLoader workers")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5, help="batches after the first, not timed")
    parser.add_argument("--steps", type=int, default=40, help="batches timed")
    parser.add_argument("--decode", action="store_true", help="no frames directory: decode videos per worker")
    parser.add_argument("--trainer", action="store_true", help="run `posttrain train` instead of the loader alone")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"], help="--trainer only")
    parser.add_argument("--source-episodes", type=int, default=100, help="synthetic dataset: demos")
    parser.add_argument("--frames", type=int, default=330, help="synthetic dataset: steps per demo")
    parser.add_argument("--image-size", type=int, default=512, help="synthetic dataset: camera size")
    parser.add_argument(
        "--measure", nargs=5, metavar=("DATASET", "FRAMES", "PRESET", "EPISODES", "WORKERS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.measure:
        dataset, frames, preset, episodes, workers = args.measure
        print(
            json.dumps(
                measure_loader(
                    Path(dataset),
                    Path(frames) if frames else None,
                    preset,
                    int(episodes),
                    int(workers),
                    args.batch,
                    args.warmup,
                    args.steps,
                )
            )
        )
    elif args.trainer:
        trainer(args)
    else:
        loader_matrix(args)


if __name__ == "__main__":
    main()
