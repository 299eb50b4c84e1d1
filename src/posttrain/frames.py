"""`posttrain frames DATASET --image-size S --output FRAMES_DIR`: every video frame of a dataset,
decoded once at the model's resolution, for the trainer to read at random.

Why: decoding costs per episode (a whole H.264 episode for one frame), so a trainer that decodes
on demand either holds every decoded episode in each DataLoader worker's memory or decodes one
episode per sample once the dataset outgrows its cache. Here each frame is decoded once per
dataset and image size; a sample then costs one read of S*S*3 bytes, whatever the dataset size.
The file is shared by every worker and process through the page cache (one copy in RAM, or none:
reads go to disk when it does not fit), so memory does not multiply by workers x GPUs.

Layout (written to a temporary directory renamed at the end):
    FRAMES_DIR/camera-K.npy   (total_frames, S, S, 3) uint8, camera K of index.json, rows in
                              meta/episodes.jsonl order (np.load(path, mmap_mode="r") by hand)
    FRAMES_DIR/index.json     image size, how frames were fitted to it, cameras, each episode's
                              first row and length, and the byte size of every source video (a
                              stale directory is refused)
The pixels are exactly those of `posttrain.data`'s decode path and of eval: the same
`decode_camera` call (ffmpeg cuts the centre square and scales it while decoding, area filter;
see `posttrain.video.square_filter`). The trainer reads them with `FrameStore`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import errno
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, check_output, write_json_atomic
from posttrain.lerobot import LeRobotDataset

log = logging.getLogger("posttrain.frames")

FORMAT = 1
INDEX = "index.json"
STAGE = "frames"
# How a camera's H x W frames become the policy's S x S: its centre square, scaled. Frames made
# before non-square cameras were cropped (stretched instead) lack the key: refused for such cameras.
FIT = "centre-square"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_DIR", type=Path, help="LeRobot v2.1 dataset directory")
    parser.add_argument(
        "--image-size",
        type=int,
        required=True,
        help="square size the policy reads (its preset's image_size: tiny 64, base 224); "
        "a non-square camera gives its centre square",
    )
    parser.add_argument("--output", type=Path, required=True, help="frames directory to write")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="videos decoded at once (each by its own ffmpeg process; default: CPU count)",
    )


def run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.image_size < 1:
        raise PosttrainError(f"--image-size must be >= 1, got {args.image_size}")
    if args.workers < 1:
        raise PosttrainError(f"--workers must be >= 1, got {args.workers}")
    dataset = LeRobotDataset(args.dataset)
    check_output(args.output, STAGE, inputs=[dataset.root])  # before any decoding; again when writing
    write_frames(dataset, args.image_size, args.output, args.workers)
    return 0


# --- writing -------------------------------------------------------------------------------------
def plan_index(dataset: LeRobotDataset, image_size: int) -> dict:
    """index.json: rows of each episode (episodes.jsonl order) and the source videos' sizes."""
    cameras = dataset.video_keys
    if not cameras:
        raise PosttrainError(f"{dataset.root / 'meta' / 'info.json'}: no video features: nothing to decode")
    episodes, offset = [], 0
    for row in dataset.episodes:
        episodes.append({"episode_index": row["episode_index"], "offset": offset, "length": row["length"]})
        offset += row["length"]
    return {
        "format": FORMAT,
        "image_size": image_size,
        "fit": FIT,
        "total_frames": offset,
        "cameras": {camera: f"camera-{k}.npy" for k, camera in enumerate(cameras)},
        "episodes": episodes,
        "videos": video_sizes(dataset, [e["episode_index"] for e in episodes], cameras),
    }


def video_sizes(dataset: LeRobotDataset, episodes: list[int], cameras: list[str]) -> dict[str, dict[str, int]]:
    """camera -> {video path relative to the dataset: bytes}."""
    sizes = {camera: {} for camera in cameras}
    for episode in episodes:
        for camera in cameras:
            path = dataset.video_path(episode, camera)
            if not path.is_file():
                raise PosttrainError(f"{path}: episode {episode}: video file not found")
            sizes[camera][path.relative_to(dataset.root).as_posix()] = path.stat().st_size
    return sizes


def write_frames(dataset: LeRobotDataset, image_size: int, output: Path, workers: int) -> None:
    index = plan_index(dataset, image_size)
    frame_bytes = image_size * image_size * 3
    needed = index["total_frames"] * frame_bytes * len(index["cameras"])
    with atomic_directory(output, STAGE, inputs=[dataset.root]) as tmp:
        free = shutil.disk_usage(tmp).free
        if needed > free:
            raise PosttrainError(
                f"{output}: needs {needed / 2**30:.2f} GiB for {index['total_frames']} frames × "
                f"{len(index['cameras'])} camera(s) at {image_size}², {free / 2**30:.2f} GiB free"
            )
        files = {}
        try:
            for camera, name in index["cameras"].items():
                header = np.lib.format.open_memmap(
                    tmp / name, mode="w+", dtype=np.uint8, shape=(index["total_frames"], image_size, image_size, 3)
                )
                files[camera] = (os.open(tmp / name, os.O_WRONLY), header.offset)
                del header  # the file has its header and full (sparse) length; rows are written with pwrite
            jobs = [(episode, camera) for episode in index["episodes"] for camera in index["cameras"]]
            with (
                concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(jobs)))) as pool,
                tqdm(total=len(jobs), desc="frames", unit="video") as progress,
            ):
                # Threads suffice: ffmpeg decodes and scales in its own process, Python only copies bytes.
                futures = [
                    pool.submit(decode_into, dataset, episode, camera, image_size, *files[camera])
                    for episode, camera in jobs
                ]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        future.result()
                        progress.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        finally:
            for fd, _ in files.values():
                os.close(fd)
        write_json_atomic(tmp / INDEX, index, indent=None)
    log.info(
        "wrote %s: %d frames × %d camera(s) at %d² (%.2f GiB)",
        output,
        index["total_frames"],
        len(index["cameras"]),
        image_size,
        needed / 2**30,
    )


def decode_into(
    dataset: LeRobotDataset, episode: dict, camera: str, image_size: int, fd: int, data_offset: int
) -> None:
    """Decode one episode's camera at image_size² and write its rows into the camera's array."""
    episode_index, rows = episode["episode_index"], episode["length"]
    video = decode_camera(dataset, episode_index, camera, image_size)
    if len(video) != rows:
        raise PosttrainError(
            f"{dataset.video_path(episode_index, camera)}: episode {episode_index}: "
            f"{len(video)} video frames, expected {rows} (meta/episodes.jsonl length)"
        )
    data = memoryview(np.ascontiguousarray(video)).cast("B")
    position = data_offset + episode["offset"] * image_size * image_size * 3
    try:
        while data:  # pwrite may write less than asked
            written = os.pwrite(fd, data, position)
            data, position = data[written:], position + written
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise PosttrainError(
                f"{dataset.video_path(episode_index, camera)}: episode {episode_index}: "
                "no space left on the device of the frames directory"
            ) from None
        raise


def decode_camera(dataset: LeRobotDataset, episode_index: int, camera: str, image_size: int) -> np.ndarray:
    """One episode's camera as the policy sees it: (T, S, S, 3) uint8, the centre square scaled to S.

    The one decode call of every path that feeds the native policy (this stage, the trainer without
    frames, eval), so that they all see the same pixels.
    """
    from posttrain.video import read_square_frames  # decoding is only needed by some readers

    return read_square_frames(dataset.video_path(episode_index, camera), image_size)


# --- reading -------------------------------------------------------------------------------------
class FrameStore:
    """Random access to a frames directory: `images(episode, step)` -> (V, S, S, 3) uint8.

    Checked against the dataset on construction (image size, cameras, episodes and their lengths,
    source video sizes), so a directory made from another dataset or at another size is refused.
    Frames are read with pread, not mapped: the bytes come from the page cache that every process
    shares, and a worker's own memory holds one sample at a time (a mapping would count every page
    a worker ever touched in its RSS). Files are opened lazily in each process (DataLoader workers).
    """

    def __init__(self, root: str | Path, dataset: LeRobotDataset, image_size: int, cameras: list[str]):
        self.root = Path(root)
        index = read_index(self.root)
        self.image_size, self.cameras = image_size, list(cameras)
        self._rows = {e["episode_index"]: (e["offset"], e["length"]) for e in index["episodes"]}
        self._check(index, dataset)
        self._frame_bytes = image_size * image_size * 3
        self._files = [self.root / index["cameras"][camera] for camera in self.cameras]
        self._offsets = [self._data_offset(path, index["total_frames"]) for path in self._files]
        self._fds: list[int] | None = None
        self._pid = None

    def _check(self, index: dict, dataset: LeRobotDataset) -> None:
        where = self.root / INDEX
        make = f"`posttrain frames {dataset.root} --image-size {self.image_size} --output {self.root}`"
        if index.get("format") != FORMAT:
            raise PosttrainError(f"{where}: format {index.get('format')}, expected {FORMAT}; re-make it with {make}")
        if index["image_size"] != self.image_size:
            raise PosttrainError(
                f"{where}: frames are {index['image_size']}², the policy reads {self.image_size}²; "
                f"make them with {make}"
            )
        missing = [c for c in self.cameras if c not in index["cameras"]]
        if missing:
            raise PosttrainError(f"{where}: no frames of camera(s) {missing}; re-make it with {make}")
        shapes = {c: dataset.info["features"][c].get("shape", [0, 0])[:2] for c in self.cameras}
        stretched = [c for c, (h, w) in shapes.items() if h != w]
        if stretched and index.get("fit") != FIT:
            raise PosttrainError(
                f"{where}: camera(s) {stretched} are not square and these frames were stretched "
                f"to {self.image_size}² by an older posttrain (now: the centre square); "
                f"re-make them with {make}"
            )
        for row in dataset.episodes:
            if row["episode_index"] not in self._rows:
                raise PosttrainError(
                    f"{where}: no episode {row['episode_index']}: made from another dataset; re-make it with {make}"
                )
            rows = self._rows[row["episode_index"]][1]
            if rows != row["length"]:
                raise PosttrainError(
                    f"{where}: episode {row['episode_index']}: {rows} frames, meta/episodes.jsonl "
                    f"says length {row['length']}: made from another dataset; re-make it with {make}"
                )
        for name, size in ((n, s) for c in self.cameras for n, s in index["videos"][c].items()):
            path = dataset.root / name
            if not path.is_file() or path.stat().st_size != size:
                raise PosttrainError(
                    f"{path}: not the video these frames were decoded from ({where}); re-make them with {make}"
                )

    def _data_offset(self, path: Path, total_frames: int) -> int:
        try:
            array = np.load(path, mmap_mode="r")  # reads the header only
        except (OSError, ValueError) as err:
            raise PosttrainError(f"{path}: cannot read the frames array ({err})") from None
        shape = (total_frames, self.image_size, self.image_size, 3)
        if array.dtype != np.uint8 or array.shape != shape or not array.flags.c_contiguous:
            raise PosttrainError(f"{path}: {array.dtype} {array.shape}, expected uint8 {shape}")
        return array.offset

    def images(self, episode_index: int, step: int) -> np.ndarray:
        """Frame `step` of episode `episode_index`, every camera in `cameras` order: (V, S, S, 3) uint8."""
        if self._pid != os.getpid():  # first use in this process (a forked worker must not share seeks)
            self._fds, self._pid = [os.open(path, os.O_RDONLY | os.O_CLOEXEC) for path in self._files], os.getpid()
        offset, length = self._rows[episode_index]
        if not 0 <= step < length:
            raise IndexError(f"episode {episode_index}: step {step} outside 0..{length - 1}")
        out = np.empty((len(self._files), self.image_size, self.image_size, 3), np.uint8)
        for view, fd, data_offset in zip(out, self._fds, self._offsets):
            position = data_offset + (offset + step) * self._frame_bytes
            if os.preadv(fd, [view], position) != self._frame_bytes:
                raise PosttrainError(f"{self.root}: episode {episode_index} step {step}: short read (file truncated?)")
        return out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None, "_pid": None}  # descriptors are per process


def read_index(root: Path) -> dict:
    path = root / INDEX
    if not path.is_file():
        raise PosttrainError(
            f"{root}: not a frames directory ({INDEX} missing); make it with "
            "`posttrain frames DATASET --image-size S --output DIR`"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise PosttrainError(f"{path}: not valid JSON ({err})") from None
