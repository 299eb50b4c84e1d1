"""Benchmark `posttrain convert` against the bound set by the encoder alone; prints ONE JSON line.

    python bench/convert.py [--episodes 20 --frames 330 --image-size 512 --workers N]

1. `posttrain synth` writes a synthetic HDF5 into a temp dir (not timed).
2. `posttrain convert` runs in a child process (timed). Its peak memory is reported from
   getrusage (the child's own ru_maxrss plus RUSAGE_CHILDREN: the largest of its workers and
   ffmpeg encoders) and, as a cross-check, the peak sum of RSS over its whole process tree
   sampled every 50 ms.
3. The same number of frames goes through the same encoder (VideoWriter, same settings, one
   thread each) with the same worker count, frames pre-generated in RAM: the raw-encode bound.

Targets (not asserted): frames_per_s >= 0.75 x raw_encode_frames_per_s at 512² on 2 cores;
peak RSS < 1.5 GB at 100 demos.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--frames", type=int, default=330, help="recorded steps per demo (rows = frames - 1)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--measure-convert", nargs=2, metavar=("HDF5", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-raw", metavar="HDF5", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_convert:
        return measure_convert(*args.measure_convert, args.workers)
    if args.measure_raw:
        return measure_raw(args.measure_raw, args.episodes, args.workers)

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        hdf5 = Path(tmp) / "bench.hdf5"
        subprocess.run([sys.executable, "-m", "posttrain.cli", "synth", str(hdf5), "--episodes", str(args.episodes),
                        "--min-frames", str(args.frames), "--max-frames", str(args.frames),
                        "--image-size", str(args.image_size), "--seed", "0"],
                       check=True, stdout=subprocess.DEVNULL)
        convert = run_child(["--measure-convert", str(hdf5), str(Path(tmp) / "lerobot")], args.workers,
                            sample_tree=True)
        raw = run_child(["--measure-raw", str(hdf5), "--episodes", str(args.episodes)], args.workers)
    frames_per_s = convert["frames"] / convert["seconds"]
    raw_fps = raw["frames"] / raw["seconds"]
    print(json.dumps({
        "episodes": args.episodes, "image_size": args.image_size, "workers": args.workers,
        "frames": convert["frames"], "seconds": round(convert["seconds"], 3),
        "frames_per_s": round(frames_per_s, 1),
        "peak_rss_mb": round(convert["self_rss_mb"] + convert["children_rss_mb"], 1),
        "main_rss_mb": round(convert["self_rss_mb"], 1), "largest_child_rss_mb": round(convert["children_rss_mb"], 1),
        "tree_rss_peak_mb": round(convert["tree_rss_peak_mb"], 1),
        "raw_encode_frames_per_s": round(raw_fps, 1), "ratio": round(frames_per_s / raw_fps, 3),
    }))


def run_child(extra: list[str], workers: int, sample_tree: bool = False) -> dict:
    """Run this script in a measuring mode in a fresh process; its last stdout line is JSON."""
    proc = subprocess.Popen([sys.executable, __file__, *extra, "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = [0.0]
    if sample_tree:
        thread = threading.Thread(target=sample_tree_rss, args=(proc, peak), daemon=True)
        thread.start()
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench child {extra[0]} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["tree_rss_peak_mb"] = peak[0]
    return result


def sample_tree_rss(proc: subprocess.Popen, peak: list[float]) -> None:
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    while proc.poll() is None:
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = {proc.pid}, [proc.pid]
        while frontier:
            pid = frontier.pop()
            children = [c for c, p in parents.items() if p == pid and c not in tree]
            tree.update(children)
            frontier.extend(children)
        total = 0.0
        for pid in tree:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_mb
            except (OSError, IndexError, ValueError):
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.05)


def measure_convert(hdf5: str, out: str, workers: int) -> None:
    from posttrain.cli import main as posttrain
    start = time.perf_counter()
    code = posttrain(["convert", "--input", hdf5, "--output", out, "--workers", str(workers)])
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    frames = json.loads((Path(out) / "meta" / "info.json").read_text())["total_frames"]
    print(json.dumps({"frames": frames, "seconds": seconds,
                      "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))


_FRAMES: np.ndarray | None = None  # set before forking, shared copy-on-write by the encode workers


def _encode(path: str, fps: int) -> int:
    from posttrain.video import VideoSettings, VideoWriter
    frames = _FRAMES
    height, width = frames.shape[1:3]
    with VideoWriter(path, fps, width, height, VideoSettings(threads=1)) as writer:
        for first in range(0, len(frames), 32):  # the batch size the converter writes
            writer.write(frames[first:first + 32])
    return len(frames)


def measure_raw(hdf5: str, episodes: int, workers: int) -> None:
    """Encode `episodes` videos of one demo's (rows) frames, held in RAM, with `workers` processes."""
    global _FRAMES
    from posttrain.mimic import MimicFile
    with MimicFile(hdf5) as mimic:
        demo = mimic.demos[0]
        camera = "robot_pov_cam_rgb"  # the camera `posttrain synth` writes
        frames = mimic.length(demo)
        _FRAMES = np.concatenate(list(mimic.iter_camera_frames(demo, camera, 1, frames)))
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        paths = [str(Path(tmp) / f"episode_{i:06d}.mp4") for i in range(episodes)]
        context = multiprocessing.get_context("fork")
        start = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            total = sum(pool.map(_encode, paths, [50] * episodes))
        seconds = time.perf_counter() - start
    print(json.dumps({"frames": total, "seconds": seconds}))


if __name__ == "__main__":
    main()
