"""The statistics math that defines meta/stats.json, episodes_stats.jsonl and relative_stats.json.

Pure numpy (and arrow types), no file access: `posttrain stats` writes these numbers and `posttrain verify`
recomputes them to catch a stale file, so both import this module (stages never import each other).

GR00T semantics (gr00t/data/stats.py, reproduced bit for bit on the golden Arena episode):
values are concatenated over all frames and cast to float32; q01/q99 are numpy's "linear"
quantile as numpy 1.x computed it for float32 input: the two neighbouring order statistics are
subtracted in float32, the interpolation is done in float64 (`_lerp`, with the `b - d*(1-t)` form
for t >= 0.5). numpy 2 returns float32 there, which differs from GR00T's files by ~1e-8.
mean/std are accumulated in float64 over the float32 values (GR00T's float32 accumulator agrees to
~1e-7 relative on the golden episode, and drifts on millions of frames; float64 does not).

lerobot semantics (v2.1 `compute_episode_stats`, shared/docs/lerobot_v21_and_video.md §11) for
episodes_stats.jsonl: per-dimension {min, max, mean, std, count} of each numeric column, min/max in
the column's own type (ints stay ints, bools stay bools, as numpy's `tolist` gives them to lerobot);
camera features from a sample of frames (`image_sample_indices`), per channel on [0, 1], shape (3, 1, 1).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")
RELATIVE_STAT_KEYS = ("max", "min", "q01", "q99", "mean", "std")  # GR00T's key order


def is_numeric(arrow_type: pa.DataType) -> bool:
    """Columns that get stats: int, float and bool, and lists of them (strings etc. do not)."""
    if pa.types.is_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def numeric_columns(schema: pa.Schema) -> list[str]:
    """Numeric columns in schema order (the order of GR00T's stats.json)."""
    return [field.name for field in schema if is_numeric(field.type)]


def as_2d_float32(values: np.ndarray) -> np.ndarray:
    """(N,) or (N, D) numbers (float, int or bool) as a (N, D) float32 array, like GR00T's concat."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    return np.asarray(values, dtype=np.float32)


def quantile_linear(values32: np.ndarray, q: float) -> np.ndarray:
    """numpy 1.x `np.quantile(values32, q, axis=0)` (method "linear") for float32 input, as float64.

    Uses a partial sort (two order statistics) instead of a full sort; memory is one copy of the column.
    """
    n = len(values32)
    virtual = (n - 1) * q
    lo = int(math.floor(virtual))
    hi = min(lo + 1, n - 1)
    gamma = virtual - lo
    part = np.partition(values32, sorted({lo, hi}), axis=0)
    a, b = part[lo], part[hi]
    diff = (b - a).astype(np.float64)  # float32 subtraction, as numpy 1.x did
    if gamma >= 0.5:
        return b.astype(np.float64) - diff * (1.0 - gamma)
    return a.astype(np.float64) + diff * gamma


def feature_stats(values: np.ndarray) -> dict[str, list[float]]:
    """GR00T stats of one column over all frames: {mean, std, min, max, q01, q99}, each a list per dim."""
    x = as_2d_float32(values)
    if len(x) == 0:
        raise ValueError("no frames")
    return {
        "mean": x.mean(axis=0, dtype=np.float64).tolist(),
        "std": x.std(axis=0, dtype=np.float64).tolist(),  # population (ddof=0), like np.std
        "min": x.min(axis=0).astype(np.float64).tolist(),
        "max": x.max(axis=0).astype(np.float64).tolist(),
        "q01": quantile_linear(x, 0.01).tolist(),
        "q99": quantile_linear(x, 0.99).tolist(),
    }


def episode_stats(values: np.ndarray) -> dict[str, list]:
    """lerobot v2.1 per-episode stats of one numeric feature: {min, max, mean, std, count} per dim.

    min/max keep the stored type (an int column's are ints, a bool column's are bools, as lerobot
    writes them); mean/std are float64 over the stored values (bools count as 0/1), population std.
    """
    x = np.asarray(values)
    if x.ndim == 1:
        x = x[:, None]
    wide = x.astype(np.float64)
    return {
        "min": x.min(axis=0).tolist(),
        "max": x.max(axis=0).tolist(),
        "mean": wide.mean(axis=0).tolist(),
        "std": wide.std(axis=0).tolist(),
        "count": [len(x)],
    }


# --- camera features (lerobot's frame sample) ---------------------------------------------------
IMAGE_MIN_SAMPLES, IMAGE_MAX_SAMPLES, IMAGE_SAMPLE_POWER = 100, 10_000, 0.75
IMAGE_TARGET_SIDE, IMAGE_DOWNSAMPLE_FROM = 150, 300  # pixels


def image_sample_count(length: int) -> int:
    """How many frames of an episode the camera stats use: every frame up to 100, then
    max(100, length**0.75) up to 10,000 (lerobot's `estimate_num_samples`: 100 at 500 frames,
    177 at 1,000, 1,000 at 10,000), so the cost per episode stays bounded."""
    floor = min(IMAGE_MIN_SAMPLES, length)
    return max(floor, min(int(length**IMAGE_SAMPLE_POWER), IMAGE_MAX_SAMPLES))


def image_sample_indices(length: int) -> list[int]:
    """The sampled frame indices: evenly spaced over the episode, first and last frame included."""
    return np.round(np.linspace(0, length - 1, image_sample_count(length))).astype(int).tolist()


def downsample_stride(height: int, width: int) -> int:
    """Pixel stride lerobot applies before the camera stats: frames with a side of 300 px or more
    are strided down to about 150 px (a 512x512 frame by 3), which leaves mean/std nearly unchanged."""
    if max(height, width) < IMAGE_DOWNSAMPLE_FROM:
        return 1
    return int(max(height, width) / IMAGE_TARGET_SIDE)


def image_stats(frames: np.ndarray) -> dict[str, list]:
    """lerobot per-episode stats of a camera from its sampled (N, H, W, 3) uint8 RGB frames (already
    strided): per channel over all sampled pixels, on [0, 1], each of shape (3, 1, 1); count = [N]."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected (N, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    axes = (0, 1, 2)

    def per_channel(values: np.ndarray) -> list:
        return (np.asarray(values, np.float64) / 255.0).reshape(3, 1, 1).tolist()

    return {
        "min": per_channel(frames.min(axis=axes)),
        "max": per_channel(frames.max(axis=axes)),
        "mean": per_channel(frames.mean(axis=axes, dtype=np.float64)),
        "std": per_channel(frames.std(axis=axes, dtype=np.float64)),
        "count": [len(frames)],
    }


def check_image_stats(stats, length: int) -> str | None:
    """What is wrong with one stored camera entry of episodes_stats.jsonl, or None: the keys, the
    (3, 1, 1) shapes, values in [0, 1] with min <= mean <= max, and the sample count for `length`."""
    if not isinstance(stats, dict) or set(stats) != {"min", "max", "mean", "std", "count"}:
        keys = sorted(stats) if isinstance(stats, dict) else type(stats).__name__
        return f"keys {keys}, expected count, max, mean, min, std"
    try:
        values = {key: np.asarray(stats[key], dtype=np.float64) for key in ("min", "max", "mean", "std")}
    except (TypeError, ValueError):
        return "values are not numbers"
    for key, value in values.items():
        if value.shape != (3, 1, 1):
            return f"{key}: shape {list(value.shape)}, expected [3, 1, 1] (one value per RGB channel)"
    if not all(((v >= 0) & (v <= 1)).all() for v in values.values()):
        return "values outside [0, 1] (frames are scaled by 1/255)"
    if not ((values["min"] <= values["mean"] + 1e-12).all() and (values["mean"] <= values["max"] + 1e-12).all()):
        return "mean outside [min, max]"
    expected = image_sample_count(length)
    if stats["count"] != [expected]:
        return f"count {stats['count']}, expected [{expected}] sampled frames of {length}"
    return None


def aggregate_episode_stats(per_episode: list[dict[str, list]]) -> dict[str, np.ndarray]:
    """lerobot's `aggregate_stats` for one feature: count-weighted mean and pooled variance.

    Works for any stat shape: (D,) columns and (3, 1, 1) cameras (weighted by sampled frames)."""
    means = np.array([s["mean"] for s in per_episode], dtype=np.float64)
    stds = np.array([s["std"] for s in per_episode], dtype=np.float64)
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64).reshape(-1, *[1] * (means.ndim - 1))
    total = counts.sum()
    mean = (counts * means).sum(axis=0) / total
    var = (counts * (stds**2 + (means - mean) ** 2)).sum(axis=0) / total
    return {
        "min": np.min([s["min"] for s in per_episode], axis=0),
        "max": np.max([s["max"] for s in per_episode], axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)]),
    }


def chunk_starts(episode_lengths: list[int], horizon: int) -> np.ndarray:
    """Global row of every chunk start: step i of an episode with i < length - (horizon - 1).

    GR00T's `generate_rel_stats` loop; episodes shorter than the horizon give no chunk.
    """
    starts, offset = [], 0
    for length in episode_lengths:
        count = max(0, length - (horizon - 1))
        starts.append(np.arange(offset, offset + count, dtype=np.int64))
        offset += length
    return np.concatenate(starts) if starts else np.zeros(0, np.int64)


def relative_stats(
    state: np.ndarray, action: np.ndarray, episode_lengths: list[int], horizon: int
) -> dict[str, list[list[float]]]:
    """Stats of `action[i:i+H] - state[i]` over every chunk start i, one set per chunk step.

    `state`, `action`: (N, D) rows of one group for all episodes concatenated in episode order.
    Returns {max, min, q01, q99, mean, std}, each (H, D) as nested lists. Computed one chunk step
    at a time, so memory is one (chunks, D) array, not (chunks, H, D).
    """
    state, action = as_2d_float32(state), as_2d_float32(action)
    starts = chunk_starts(episode_lengths, horizon)
    if len(starts) == 0:
        raise ValueError(f"no episode has at least {horizon} frames (the action horizon)")
    per_step = [feature_stats(action[starts + h] - state[starts]) for h in range(horizon)]
    return {key: [step[key] for step in per_step] for key in RELATIVE_STAT_KEYS}


def compare_stats(stored, recomputed, rtol: float = 1e-5, atol: float = 1e-6, path: str = "") -> str | None:
    """First difference between two nested stats structures (dicts/lists of numbers), or None.

    Returns a short description like `action.mean[3]: stored 0.5, recomputed 0.51`.
    """
    if isinstance(recomputed, dict):
        if not isinstance(stored, dict):
            return f"{path}: expected an object"
        for key in recomputed:
            if key not in stored:
                return f"{path}{'.' if path else ''}{key}: missing"
        for key in stored:
            if key not in recomputed:
                return f"{path}{'.' if path else ''}{key}: not in the data"
        for key in recomputed:
            diff = compare_stats(stored[key], recomputed[key], rtol, atol, f"{path}{'.' if path else ''}{key}")
            if diff:
                return diff
        return None
    stored_arr = np.asarray(stored, dtype=np.float64)
    recomputed_arr = np.asarray(recomputed, dtype=np.float64)
    if stored_arr.shape != recomputed_arr.shape:
        return f"{path}: shape {list(stored_arr.shape)}, recomputed {list(recomputed_arr.shape)}"
    close = np.isclose(stored_arr, recomputed_arr, rtol=rtol, atol=atol, equal_nan=False)
    if not close.all():
        where = tuple(int(i) for i in np.argwhere(~close)[0])
        stored_value, recomputed_value = float(stored_arr[where]), float(recomputed_arr[where])
        return f"{path}{list(where)}: stored {stored_value:.9g}, recomputed {recomputed_value:.9g}"
    return None
