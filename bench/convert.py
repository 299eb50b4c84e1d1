"""Benchmark `posttrain convert` against the bound set by inflating and encoding alone; prints ONE JSON line.

    python bench/convert.py [--episodes 20 --frames 330 --image-size 512 --workers N] [--input HDF5]

1. `posttrain synth` writes a synthetic HDF5 into a temp dir (not timed; `--input` reuses one written
   with the same shape instead).
2. `posttrain convert` runs in a child process (timed). Its peak memory is reported from
   getrusage (the child's own ru_maxrss plus RUSAGE_CHILDREN: the largest of its workers and
   ffmpeg encoders) and, as a cross-check, the peak sum of RSS over its whole process tree
   sampled every 50 ms.
3. The bound, measured right after: the same number of worker processes takes the episodes of the
   SAME HDF5 and, per episode, only inflates its camera chunks as the converter must (posttrain.mimic's
   reader: read_direct_chunk + ISA-L, in the converter's batches) and pipes the frames through the same
   encoder (VideoWriter, same settings, one thread each): no parquet, state/action, probe or meta.
   Isaac Lab writes its cameras with create_dataset(..., compression="gzip"), so the inflate is part
   of any conversion of a real file; `posttrain synth` writes that layout (h5py's chunk guess).
4. For reference, the encoder alone: as many videos, one demo's frames held in RAM (no inflate).

CPU seconds (user + sys of the child and all its workers and encoders) are reported beside the wall
times: on a machine shared with other jobs they vary far less than frames/s.

Targets (not asserted): ratio = frames_per_s / bound_frames_per_s >= 0.85 at 512² on 2 cores;
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
    parser.add_argument("--input", type=Path, help="an HDF5 `posttrain synth` wrote with this shape (skips synth)")
    parser.add_argument("--measure-convert", nargs=2, metavar=("HDF5", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-bound", metavar="HDF5", help=argparse.SUPPRESS)
    parser.add_argument("--measure-raw", metavar="HDF5", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_convert:
        return measure_convert(*args.measure_convert, args.workers)
    if args.measure_bound:
        return measure_bound(args.measure_bound, args.workers)
    if args.measure_raw:
        return measure_raw(args.measure_raw, args.workers)

    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        hdf5 = args.input or Path(tmp) / "bench.hdf5"
        if args.input is None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "posttrain.cli",
                    "synth",
                    str(hdf5),
                    "--episodes",
                    str(args.episodes),
                    "--min-frames",
                    str(args.frames),
                    "--max-frames",
                    str(args.frames),
                    "--image-size",
                    str(args.image_size),
                    "--seed",
                    "0",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        load_before = os.getloadavg()[0]
        convert = run_child(
            ["--measure-convert", str(hdf5), str(Path(tmp) / "lerobot")], args.workers, sample_tree=True
        )
        # sampled as well, so that the sampler's CPU time (a few % of one core) weighs on both alike
        bound = run_child(["--measure-bound", str(hdf5)], args.workers, sample_tree=True)
        raw = run_child(["--measure-raw", str(hdf5)], args.workers)
        load_after = os.getloadavg()[0]
    if bound["frames"] != convert["frames"]:
        raise SystemExit(f"bench: the bound encoded {bound['frames']} frames, convert {convert['frames']}")
    frames_per_s = convert["frames"] / convert["seconds"]
    bound_fps = bound["frames"] / bound["seconds"]
    raw_fps = raw["frames"] / raw["seconds"]
    print(
        json.dumps(
            {
                "episodes": convert["episodes"],
                "image_size": args.image_size,
                "workers": args.workers,
                "frames": convert["frames"],
                "seconds": round(convert["seconds"], 3),
                "frames_per_s": round(frames_per_s, 1),
                "bound_frames_per_s": round(bound_fps, 1),
                "ratio": round(frames_per_s / bound_fps, 3),
                "raw_encode_frames_per_s": round(raw_fps, 1),
                "ratio_raw_encode": round(frames_per_s / raw_fps, 3),
                "cpu_s": round(convert["cpu_s"], 2),
                "bound_cpu_s": round(bound["cpu_s"], 2),
                "raw_encode_cpu_s": round(raw["cpu_s"], 2),
                "peak_rss_mb": round(convert["self_rss_mb"] + convert["children_rss_mb"], 1),
                "main_rss_mb": round(convert["self_rss_mb"], 1),
                "largest_child_rss_mb": round(convert["children_rss_mb"], 1),
                "tree_rss_peak_mb": round(convert["tree_rss_peak_mb"], 1),
                "bound_tree_rss_peak_mb": round(bound["tree_rss_peak_mb"], 1),
                # 1-minute load average before convert and after the encoder alone: other jobs sharing the cores
                # (after includes this benchmark's own workers and encoders, up to 2 per worker)
                "load_before": round(load_before, 2),
                "load_after": round(load_after, 2),
            }
        )
    )


def run_child(extra: list[str], workers: int, sample_tree: bool = False) -> dict:
    """Run this script in a measuring mode in a fresh process; its last stdout line is JSON."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *extra, "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
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

    cpu_before = cpu_seconds()
    start = time.perf_counter()
    code = posttrain(["convert", "--input", hdf5, "--output", out, "--workers", str(workers)])
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(code)
    info = json.loads((Path(out) / "meta" / "info.json").read_text())
    print(
        json.dumps(
            {
                "frames": info["total_frames"],
                "episodes": info["total_episodes"],
                "seconds": seconds,
                "cpu_s": cpu_seconds() - cpu_before,
                "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def cpu_seconds() -> float:
    """User + sys time of this process and every descendant it (or they) waited for: workers, ffmpeg."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_MIMIC = None  # in a bound worker: the HDF5, opened once per worker (the converter opens it per episode)


def _open_mimic(hdf5: str) -> None:
    global _MIMIC
    from posttrain.mimic import MimicFile

    _MIMIC = MimicFile(hdf5)


def _inflate_encode(demo: str, path: str) -> int:
    """One episode as the converter's video path alone: frames [1:] (drop-frame first) of the camera
    inflated by posttrain.mimic's reader in the converter's batches, piped into the same encoder."""
    from posttrain.convert import DEFAULTS, FRAME_BATCH
    from posttrain.mimic import DEFAULT_CAMERA
    from posttrain.video import VideoSettings, VideoWriter

    settings = VideoSettings(crf=DEFAULTS["crf"], gop=DEFAULTS["gop"], preset=DEFAULTS["preset"], threads=1)
    frames, height, width, _ = _MIMIC.camera_shape(demo, DEFAULT_CAMERA)
    with VideoWriter(path, DEFAULTS["fps"], width, height, settings) as writer:
        for batch in _MIMIC.iter_camera_frames(demo, DEFAULT_CAMERA, 1, frames, batch=FRAME_BATCH):
            writer.write(batch)
    return writer.frames_written


def measure_bound(hdf5: str, workers: int) -> None:
    """Inflate + encode every demo's camera of `hdf5` with `workers` processes (the converter's bound)."""
    import posttrain.convert  # noqa: F401  imported before forking, as in `posttrain convert`
    from posttrain.mimic import MimicFile

    with MimicFile(hdf5) as mimic:
        demos = mimic.demos
    with tempfile.TemporaryDirectory(prefix="bench-bound-") as tmp:
        paths = [str(Path(tmp) / f"episode_{i:06d}.mp4") for i in range(len(demos))]
        context = multiprocessing.get_context("fork")
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_open_mimic, initargs=(hdf5,)
        ) as pool:
            total = sum(pool.map(_inflate_encode, demos, paths))
        seconds = time.perf_counter() - start
    print(json.dumps({"frames": total, "seconds": seconds, "cpu_s": cpu_seconds() - cpu_before}))


_FRAMES: np.ndarray | None = None  # set before forking, shared copy-on-write by the encode workers


def _encode(path: str, fps: int) -> int:
    from posttrain.video import VideoSettings, VideoWriter

    frames = _FRAMES
    height, width = frames.shape[1:3]
    with VideoWriter(path, fps, width, height, VideoSettings(threads=1)) as writer:
        for first in range(0, len(frames), 32):  # the batch size the converter writes
            writer.write(frames[first : first + 32])
    return len(frames)


def measure_raw(hdf5: str, workers: int) -> None:
    """Encode as many videos as `hdf5` has demos, each of the first demo's (rows) frames held in RAM,
    with `workers` processes."""
    global _FRAMES
    from posttrain.mimic import DEFAULT_CAMERA, MimicFile  # the camera `posttrain synth` writes

    with MimicFile(hdf5) as mimic:
        demo, episodes = mimic.demos[0], len(mimic.demos)
        frames = mimic.length(demo)
        _FRAMES = np.concatenate(list(mimic.iter_camera_frames(demo, DEFAULT_CAMERA, 1, frames)))
    cpu_before = cpu_seconds()  # reading the demo above is not part of the encoder's time
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as tmp:
        paths = [str(Path(tmp) / f"episode_{i:06d}.mp4") for i in range(episodes)]
        context = multiprocessing.get_context("fork")
        start = time.perf_counter()
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            total = sum(pool.map(_encode, paths, [50] * episodes))
        seconds = time.perf_counter() - start
    print(json.dumps({"frames": total, "seconds": seconds, "cpu_s": cpu_seconds() - cpu_before}))


if __name__ == "__main__":
    main()
