"""Encode and decode episode videos (H.264, yuv420p, MP4) through the ffmpeg binary of imageio-ffmpeg.

Why a pipe to ffmpeg and not PyAV: at 512² the colour conversion and x264 run in the ffmpeg
process, in parallel with Python, which measured 15-60 % faster (shared/docs/lerobot_v21_and_video.md §9),
and imageio-ffmpeg is a plain wheel with a static ffmpeg (no system FFmpeg, no torchcodec pairing).
One encoder thread per process: parallelism comes from one process per core.
"""

from __future__ import annotations

import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np

from posttrain.errors import PosttrainError
from posttrain.settings import X264_PRESETS

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _not_our_scaling(record: logging.LogRecord) -> bool:
    """imageio-ffmpeg warns, once per video, that the decoded size differs from the source: here that
    is always read_frames' own `-vf scale` (the trainer reads 512² videos at 224²), so drop it."""
    return not record.getMessage().startswith("The frame size for reading")


logging.getLogger("imageio_ffmpeg").addFilter(_not_our_scaling)


@dataclass(frozen=True)
class VideoSettings:
    crf: int = 18
    gop: int = 50
    preset: str = "veryfast"
    threads: int = 1


def check_video_settings(settings: VideoSettings, where: str = "") -> None:
    """Refuse settings libx264 would reject, before any frame is encoded (config keys convert.video.*)."""
    if settings.preset not in X264_PRESETS:
        raise PosttrainError(
            f"{where}--preset {settings.preset!r} (convert.video.preset) is not a libx264 preset; "
            f"use one of {', '.join(X264_PRESETS)}"
        )
    if not 0 <= settings.crf <= 51:
        raise PosttrainError(f"{where}--crf {settings.crf} (convert.video.crf) is outside libx264's 0..51")
    if settings.gop < 1:
        raise PosttrainError(f"{where}--gop {settings.gop} (convert.video.gop) must be >= 1")


class VideoWriter:
    """Stream RGB uint8 frames of one camera into an MP4 (libx264, yuv420p, constant fps).

    Frames arrive in any batch size (`write` takes (H, W, 3) or (N, H, W, 3)); nothing is
    buffered in Python beyond the batch being written.
    """

    def __init__(self, path: str | Path, fps: int, width: int, height: int, settings: VideoSettings = VideoSettings()):
        if width % 2 or height % 2:
            raise PosttrainError(f"{path}: yuv420p needs even frame sizes, got {width}x{height}")
        self.path, self.width, self.height = Path(path), width, height
        self.frames_written = 0
        self._gen = imageio_ffmpeg.write_frames(
            str(self.path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,  # never let imageio resize; never pick a CRF for us
            output_params=[
                "-crf",
                str(settings.crf),
                "-g",
                str(settings.gop),
                "-preset",
                settings.preset,
                "-threads",
                str(settings.threads),
                "-an",
                "-movflags",
                "+faststart",
                "-fflags",
                "+bitexact",
                "-flags:v",
                "+bitexact",
            ],
            ffmpeg_log_level="error",
        )
        self._gen.send(None)

    def write(self, frames: np.ndarray) -> None:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.height, self.width, 3):
            raise PosttrainError(
                f"{self.path}: frames must be uint8 (N, {self.height}, {self.width}, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
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
    return _decode(path, width, height, f"scale={width}:{height}:flags=area" if size else None)


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(top, left, side) of the largest centred square of an H x W image (offsets rounded down)."""
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side


def square_filter(height: int, width: int, size: int) -> str:
    """The ffmpeg filter giving `read_square_frames`' pixels from H x W frames.

    The centre square is cut in source pixels, then scaled (area filter): GR00T's "shortest edge
    to size, centre crop" without rounding the long side. A non-square source is converted to RGB
    first, so the crop is exact at any offset (ffmpeg rounds crops of yuv420p to even offsets) and
    the scaling matches `posttrain.policy.images_to_tensor`'s torch resize closely (37-48 dB,
    tests/test_nonsquare.py) for ~30 % more decode time. A square source gets exactly
    `read_frames(size=(size, size))`'s filter (scaled in YUV), so square datasets decode as before.
    """
    top, left, side = centre_square(height, width)
    scale = f"scale={size}:{size}:flags=area"
    if side == height == width:
        return scale
    return f"format=rgb24,crop={side}:{side}:{left}:{top},{scale}"


def read_square_frames(path: str | Path, size: int) -> np.ndarray:
    """Decode every frame to (N, size, size, 3) uint8 RGB: the centre square, scaled while decoding.

    The pixels the native policy sees, for cameras of any shape (posttrain.frames, the trainer's
    decode fallback and eval all decode this way; `posttrain.policy.images_to_tensor` does the
    same in torch for raw frames).
    """
    path = Path(path)
    if not path.is_file():
        raise PosttrainError(f"{path}: video file not found")
    info = probe(path)
    return _decode(path, size, size, square_filter(info.height, info.width, size))


def _decode(path: Path, width: int, height: int, filters: str | None) -> np.ndarray:
    """Every frame of `path` through the ffmpeg filter chain `filters`, as (N, height, width, 3) uint8."""
    output_params = ["-vf", filters] if filters else None
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
    reader = imageio_ffmpeg.read_frames(
        str(path), pix_fmt="rgb24", output_params=["-vf", filters, "-fps_mode", "passthrough"]
    )
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


_STREAM_RE = re.compile(
    r"Stream #\S+.*?: Video: (?P<codec>\w+)[^,]*, (?P<pix_fmt>\w+)(\([^)]*\))?, "
    r"(?P<w>\d+)x(?P<h>\d+)"
)
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
    fps = _FPS_RE.search(result.stderr[stream.end() :])
    num_frames = -1
    if count_frames:
        counts = re.findall(r"frame=\s*(\d+)", result.stderr)
        num_frames = int(counts[-1]) if counts else 0
    return VideoInfo(
        width=int(stream["w"]),
        height=int(stream["h"]),
        fps=float(fps["fps"]) if fps else 0.0,
        codec=stream["codec"],
        pix_fmt=stream["pix_fmt"],
        num_frames=num_frames,
    )


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# --- what the encoder alone loses (for `posttrain verify`) -----------------------------------------
# x264 records its options in the stream (an SEI "x264 - core ... options: ... crf=18.0 ..."). The
# preset is not named there, but each preset sets its own subpixel-refinement level `subme`.
_X264_PRESET_BY_SUBME = {
    0: "ultrafast",
    1: "superfast",
    2: "veryfast",
    4: "faster",
    6: "fast",
    7: "medium",
    8: "slow",
    9: "slower",
    10: "veryslow",
    11: "placebo",
}
_X264_OPTIONS_RE = re.compile(rb"x264 - core \d+[^\0]*? options: ([^\0]*)")
_X264_HEADER_BYTES = 4 << 20  # the SEI sits in the first frame, after the moov box (+faststart)


def x264_settings(path: str | Path) -> VideoSettings | None:
    """The crf, preset and GOP an x264-encoded video was made with (None: no x264 CRF record found)."""
    with open(path, "rb") as f:
        head = f.read(_X264_HEADER_BYTES)
    found = _X264_OPTIONS_RE.search(head)
    if found is None:
        return None
    options = dict(re.findall(r"(\w+)=(\S+)", found[1].decode("ascii", "replace")))
    try:
        crf = float(options["crf"])
        subme, gop = int(options.get("subme", -1)), int(options.get("keyint", VideoSettings.gop))
    except (KeyError, ValueError):
        return None  # not a CRF encode (bitrate mode), or a record we cannot read
    return VideoSettings(
        crf=int(crf) if crf.is_integer() else crf,
        gop=gop,
        preset=_X264_PRESET_BY_SUBME.get(subme, VideoSettings.preset),
    )


def yuv420p_round_trip(frames: np.ndarray) -> np.ndarray:
    """RGB frames converted to yuv420p and back exactly as encoding and decoding here convert them.

    The same ffmpeg, with the same (default) conversion as VideoWriter's input and read_frames'
    output: BT.601 limited range, chroma averaged over 2x2 pixels. A lossless encode decodes to
    exactly these frames, so any remaining difference to a decoded frame is the codec's loss (or a
    conversion fault), not the colour subsampling, which alone costs 8-13 dB on fine colour texture.
    """
    frames = np.ascontiguousarray(frames, np.uint8)
    n, height, width, _ = frames.shape
    cmd = [
        FFMPEG,
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{width}x{height}",
        "-i",
        "-",
        "-vf",
        "format=yuv420p",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-",
    ]
    result = subprocess.run(cmd, input=frames.tobytes(), capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) != frames.nbytes:
        raise PosttrainError(
            f"ffmpeg rgb24 -> yuv420p -> rgb24 of {n} {width}x{height} frames failed: "
            f"{result.stderr.decode(errors='replace').strip()[-300:]}"
        )
    return np.frombuffer(result.stdout, np.uint8).reshape(frames.shape)


def encoder_round_trip(frames: np.ndarray, fps: int, settings: VideoSettings = VideoSettings()) -> np.ndarray:
    """The frames encoded as one clip with `settings` and decoded again: what the encoder alone loses."""
    import tempfile

    frames = np.asarray(frames)
    with tempfile.TemporaryDirectory(prefix="posttrain-round-trip-") as tmp:
        path = Path(tmp) / "clip.mp4"
        encode_video(path, frames, fps, settings)
        # decoded as read_frames does, without its 10 s wait for ffmpeg's header (a busy machine hits it)
        cmd = [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-i",
            str(path),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ]
        result = subprocess.run(cmd, capture_output=True, check=False)
    if result.returncode != 0 or len(result.stdout) != frames.nbytes:
        raise PosttrainError(
            f"ffmpeg round trip of {len(frames)} frames through libx264 failed: "
            f"{result.stderr.decode(errors='replace').strip()[-300:]}"
        )
    return np.frombuffer(result.stdout, np.uint8).reshape(frames.shape)
