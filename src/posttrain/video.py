"""Encode and decode episode videos (H.264, yuv420p, MP4) through the ffmpeg binary of imageio-ffmpeg.

Why a pipe to ffmpeg and not PyAV: at 512² the colour conversion and x264 run in the ffmpeg
process, in parallel with Python, which measured 15-60 % faster (shared/docs/lerobot_v21_and_video.md §9),
and imageio-ffmpeg is a plain wheel with a static ffmpeg (no system FFmpeg, no torchcodec pairing).
One encoder thread per process: parallelism comes from one process per core.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from posttrain.errors import PosttrainError

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoSettings:
    crf: int = 18
    gop: int = 50
    preset: str = "veryfast"
    threads: int = 1


class VideoWriter:
    """Stream RGB uint8 frames of one camera into an MP4 (libx264, yuv420p, constant fps).

    Frames arrive in any batch size (`write` takes (H, W, 3) or (N, H, W, 3)); nothing is
    buffered in Python beyond the batch being written.
    """

    def __init__(self, path: str | Path, fps: int, width: int, height: int,
                 settings: VideoSettings = VideoSettings()):
        if width % 2 or height % 2:
            raise PosttrainError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
        self.path, self.width, self.height = Path(path), width, height
        self.frames_written = 0
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
            quality=None, macro_block_size=1,  # never let imageio resize; never pick a CRF for us
            output_params=["-crf", str(settings.crf), "-g", str(settings.gop), "-preset", settings.preset,
                           "-threads", str(settings.threads), "-an", "-movflags", "+faststart",
                           "-fflags", "+bitexact", "-flags:v", "+bitexact"],
            ffmpeg_log_level="error",
        )
        self._gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise PosttrainError(f"{self.path}: frames must be uint8 (N, {self.height}, {self.width}, 3), "
                                 f"got {frames.dtype} {frames.shape}")
        self._gen.send(np.ascontiguousarray(frames))
        self.frames_written += len(frames)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


def encode_video(path: str | Path, frames: np.ndarray, fps: int, settings: VideoSettings = VideoSettings()) -> None:
    """Encode a whole (N, H, W, 3) uint8 array at once."""
    frames = np.asarray(frames)
    with VideoWriter(path, fps, frames.shape[2], frames.shape[1], settings) as writer:
        writer.write(frames)


def read_frames(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode every frame of a video to (N, H, W, 3) uint8 RGB.

    `size=(width, height)` lets ffmpeg scale while decoding (area filter), which is how the
    trainer reads 512² episodes at the model's resolution without paying for full-size arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise PosttrainError(f"{path}: video file not found")
    info = probe(path)
    width, height = size or (info.width, info.height)
    output_params = ["-vf", f"scale={width}:{height}:flags=area"] if size else None
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=output_params)
    reader.__next__()  # the metadata dict
    frame_bytes = width * height * 3
    frames = [np.frombuffer(buf, np.uint8, frame_bytes).reshape(height, width, 3) for buf in reader]
    if not frames:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack(frames)


def read_frames_at(path: str | Path, indices, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode only the frames at `indices` (any order, repeats allowed) to (K, H, W, 3) uint8.

    ffmpeg's select filter drops the other frames before the RGB conversion, so memory holds only
    the samples (a whole 512² × 330-frame episode would be ~260 MB).
    """
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    info = probe(path)
    width, height = size or (info.width, info.height)
    if not wanted:
        return np.zeros((0, height, width, 3), np.uint8)
    if wanted[0] < 0:
        raise PosttrainError(f"{path}: negative frame index {wanted[0]}")
    filters = "select=" + "+".join(f"eq(n\\,{i})" for i in wanted)
    if size:
        filters += f",scale={width}:{height}:flags=area"
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24",
                                        output_params=["-vf", filters, "-fps_mode", "passthrough"])
    next(reader)  # the metadata dict
    frames = [np.frombuffer(buf, np.uint8).reshape(height, width, 3) for buf in reader]
    if len(frames) != len(wanted):
        raise PosttrainError(f"{path}: decoded {len(frames)} of the frames {wanted} (video too short?)")
    position = {index: k for k, index in enumerate(wanted)}
    return np.stack([frames[position[int(i)]] for i in indices])


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    codec: str
    pix_fmt: str
    num_frames: int


_STREAM_RE = re.compile(r"Stream #\S+.*?: Video: (?P<codec>\w+)[^,]*, (?P<pix_fmt>\w+)(\([^)]*\))?, "
                        r"(?P<w>\d+)x(?P<h>\d+)")
_FPS_RE = re.compile(r"(?P<fps>[\d.]+) (fps|tbr)")


def probe(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Codec, pixel format, size and fps from ffmpeg's stream line; frames counted by decoding.

    imageio-ffmpeg ships no ffprobe, so the header is parsed from `ffmpeg -i`. Counting frames
    decodes the file (`-f null`), which is exact even where the container's frame count is not.
    """
    path = Path(path)
    if not path.is_file():
        raise PosttrainError(f"{path}: video file not found")
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-i", str(path)]
    if count_frames:
        cmd += ["-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    stream = _STREAM_RE.search(result.stderr)
    if stream is None:
        raise PosttrainError(f"{path}: not a readable video ({result.stderr.strip().splitlines()[-1:]})")
    fps = _FPS_RE.search(result.stderr[stream.end():])
    num_frames = -1
    if count_frames:
        counts = re.findall(r"frame=\s*(\d+)", result.stderr)
        num_frames = int(counts[-1]) if counts else 0
    return VideoInfo(width=int(stream["w"]), height=int(stream["h"]), fps=float(fps["fps"]) if fps else 0.0,
                     codec=stream["codec"], pix_fmt=stream["pix_fmt"], num_frames=num_frames)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
