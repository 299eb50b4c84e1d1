"""Benchmark `posttrain stats`; prints ONE JSON line.

    python bench/stats.py [--episodes 50 --frames 330 --image-size 512 --workers N]

1. `posttrain synth` + `posttrain convert` build a dataset in a temp dir (not timed). The image size
   matters: besides the parquet columns, stats decodes a sample of each episode's video frames for the
   camera statistics of meta/episodes_stats.jsonl (lerobot's), so the default is the seed's 512²
   (`--image-size 16` measures the parquet part alone).
2. `posttrain stats` runs in a child process (timed); the child reports its own peak RSS
   (getrusage ru_maxrss), so synth/convert memory is not counted.

Output: {"episodes", "image_size", "frames", "seconds", "frames_per_s", "peak_rss_mb", "workers"}.
Expected memory: interpreter + imports (~100 MB) + 244 B/frame for the GR1 columns (float32) +
one column copy for the partial sort.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--frames", type=int, default=330, help="recorded steps per demo (rows = frames - 1)")
    parser.add_argument("--image-size", type=int, default=512, help="camera size of the synthetic demos")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--measure", metavar="DATASET", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.workers)

    cli = [sys.executable, "-m", "posttrain.cli"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        hdf5, dataset = Path(tmp) / "bench.hdf5", Path(tmp) / "lerobot"
        subprocess.run(
            cli
            + [
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
            **quiet,
        )
        subprocess.run(
            cli + ["convert", "--input", str(hdf5), "--output", str(dataset), "--workers", str(args.workers)], **quiet
        )
        child = subprocess.run(
            [sys.executable, __file__, "--measure", str(dataset), "--workers", str(args.workers)],
            capture_output=True,
            text=True,
            check=True,
        )
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        frames = json.loads((dataset / "meta" / "info.json").read_text())["total_frames"]
    print(
        json.dumps(
            {
                "episodes": args.episodes,
                "image_size": args.image_size,
                "frames": frames,
                "seconds": round(measured["seconds"], 3),
                "frames_per_s": round(frames / measured["seconds"], 1),
                "peak_rss_mb": round(measured["peak_rss_mb"], 1),
                "workers": args.workers,
            }
        )
    )


def measure(dataset: str, workers: int) -> None:
    import logging

    os.environ["TQDM_DISABLE"] = "1"  # read by tqdm at import

    from posttrain.stats import write_stats  # imported before timing: import cost is not stats cost

    logging.disable(logging.INFO)
    start = time.perf_counter()
    write_stats(dataset, workers=workers)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
