"""`posttrain stats DATASET_DIR`: GR00T-compatible meta/stats.json (+ episodes_stats.jsonl, relative_stats.json).

- `meta/stats.json`: for every numeric parquet column (float, int and bool, as in the golden Arena
  episode) {mean, std, min, max, q01, q99} per dimension over all frames, exact (the math and its
  dtype semantics are in `posttrain.stats_math`).
- `meta/episodes_stats.jsonl`: lerobot v2.1 per-episode {min, max, mean, std, count} of the same
  numeric columns (min/max in the column's type), and of every camera the way lerobot computes them:
  per RGB channel on frames scaled to [0, 1], shape (3, 1, 1), over a bounded sample of decoded
  frames (every frame up to 100, then max(100, length**0.75) evenly spaced ones, at most 10,000;
  sides of 300 px or more strided to ~150 px; `posttrain.stats_math.image_sample_indices`). lerobot
  builds a policy's image normaliser from these entries (ACT, Diffusion: `make_policy` fails without them).
- `meta/relative_stats.json`: only with `--relative-groups`: stats of action chunks minus the current
  state of the same group, shape (horizon, D) per statistic, as GR00T's `generate_rel_stats`.
  Without relative groups a stale file is removed.

Memory: exact quantiles need every value of a column at once. Only numeric columns are kept, as
float32: 4 bytes × (sum of column widths) per frame, 61 values = 244 B/frame for the GR1 layout,
i.e. about 0.8 GB for 10k episodes × 330 frames, plus one column copy for the partial sort. Each
worker also holds at most FRAME_BATCH decoded frames of one camera (160 MB at 512², 200 frames).
Time: each camera of each episode is decoded once by ffmpeg (about 0.3 s for 330 frames at 512²).
"""

from __future__ import annotations

import argparse
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from posttrain import stats_math
from posttrain.errors import PosttrainError
from posttrain.files import write_json_atomic, write_text_atomic
from posttrain.lerobot import LeRobotDataset, column_to_numpy, jsonl

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_DIR", help="LeRobot v2.1 dataset directory")
    parser.add_argument(
        "--relative-groups",
        default="",
        help="comma-separated action groups that are RELATIVE (action minus current state); "
        "writes meta/relative_stats.json",
    )
    parser.add_argument("--action-horizon", type=int, default=16, help="chunk length H for relative stats")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="threads reading parquet files (default: CPU count)"
    )


def run(args: argparse.Namespace) -> int:
    groups = [g.strip() for g in args.relative_groups.split(",") if g.strip()]
    write_stats(args.dataset, relative_groups=groups, action_horizon=args.action_horizon, workers=args.workers)
    return 0


# --- reading -------------------------------------------------------------------------------------
def numeric_columns(dataset: LeRobotDataset, episode_index: int) -> list[str]:
    """Numeric columns in parquet schema order (the order of the golden stats.json)."""
    path = dataset.parquet_path(episode_index)
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as err:
        raise PosttrainError(f"{path}: cannot read episode {episode_index} ({err})") from None
    return stats_math.numeric_columns(schema)


FRAME_BATCH = 200  # sampled frames decoded per ffmpeg pass (one pass per camera up to ~1,200-frame episodes)


@dataclass
class EpisodeColumns:
    episode_index: int
    columns: dict[str, np.ndarray]  # (T, D) in the stored dtype
    stats: dict[str, dict]  # lerobot per-episode stats


def read_episode(dataset: LeRobotDataset, episode: dict, columns: list[str]) -> EpisodeColumns:
    """One episode's numeric columns, checked (expected row count, width, finite values), and its
    lerobot per-episode stats (columns and cameras)."""
    ep, length = episode["episode_index"], episode["length"]
    path = dataset.parquet_path(ep)
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as err:
        raise PosttrainError(f"{path}: cannot read columns {columns} of episode {ep} ({err})") from None
    if table.num_rows != length:
        raise PosttrainError(f"{path}: episode {ep} has {table.num_rows} rows, meta/episodes.jsonl says {length}")
    values = {}
    for name in columns:
        array = column_to_numpy(table.column(name))
        array = array[:, None] if array.ndim == 1 else array
        if array.dtype != np.bool_ and not np.isfinite(array).all():
            row = int(np.argwhere(~np.isfinite(array))[0][0])
            raise PosttrainError(f"{path}: episode {ep}: column {name}: non-finite value at frame {row}")
        values[name] = array
    stats = {
        **camera_stats(dataset, episode),
        **{name: stats_math.episode_stats(array) for name, array in values.items()},
    }
    return EpisodeColumns(ep, values, stats)


def camera_stats(dataset: LeRobotDataset, episode: dict) -> dict[str, dict]:
    """lerobot's per-episode stats of every camera, from its sampled frames (module docstring)."""
    from posttrain.video import read_frames_at  # only datasets with videos decode anything

    ep, length = episode["episode_index"], episode["length"]
    indices = stats_math.image_sample_indices(length)
    out = {}
    for key in dataset.video_keys:
        path = dataset.video_path(ep, key)
        sampled = []
        try:
            for start in range(0, len(indices), FRAME_BATCH):
                frames = read_frames_at(path, indices[start : start + FRAME_BATCH])
                stride = stats_math.downsample_stride(*frames.shape[1:3])
                sampled.append(np.ascontiguousarray(frames[:, ::stride, ::stride]))  # drop the full frames
        except PosttrainError as err:
            raise PosttrainError(f"episode {ep}, camera {key}: {err}") from None
        out[key] = stats_math.image_stats(np.concatenate(sampled))
    return out


def read_all(dataset: LeRobotDataset, workers: int) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:
    """Every numeric column of every episode, concatenated in episode order as float32 (N, D)."""
    if not dataset.episodes:
        raise PosttrainError(f"{dataset.root / 'meta/episodes.jsonl'}: no episodes")
    columns = numeric_columns(dataset, dataset.episodes[0]["episode_index"])
    total = sum(e["length"] for e in dataset.episodes)
    buffers: dict[str, np.ndarray] = {}
    episode_stats, offset = [], 0
    with ThreadPoolExecutor(max(1, workers)) as pool:  # pyarrow reads release the GIL
        results = pool.map(lambda e: read_episode(dataset, e, columns), dataset.episodes)
        for episode in tqdm(results, total=len(dataset.episodes), desc="stats: read", unit="ep"):
            for name, array in episode.columns.items():
                if name not in buffers:
                    buffers[name] = np.empty((total, array.shape[1]), np.float32)
                if array.shape[1] != buffers[name].shape[1]:
                    raise PosttrainError(
                        f"{dataset.parquet_path(episode.episode_index)}: episode {episode.episode_index}: column "
                        f"{name} has {array.shape[1]} values per row, episode 0 has {buffers[name].shape[1]}"
                    )
                buffers[name][offset : offset + len(array)] = array
            offset += len(next(iter(episode.columns.values())))
            episode_stats.append({"episode_index": episode.episode_index, "stats": episode.stats})
    return columns, buffers, episode_stats


def check_episode_list(dataset: LeRobotDataset) -> None:
    """meta/episodes.jsonl must list every episode on disk, as 0, 1, 2, ... (what verify checks too):
    stats over a subset would describe other data than the trainer reads."""
    path = dataset.root / "meta" / "episodes.jsonl"
    for position, episode in enumerate(dataset.episodes):
        if episode.get("episode_index") != position:
            raise PosttrainError(
                f"{path}: line {position + 1}: episode_index {episode.get('episode_index')!r}, "
                f"expected {position} (episodes are listed in order from 0)"
            )
    listed = {dataset.parquet_path(e["episode_index"]) for e in dataset.episodes}
    unlisted = sorted(set(dataset.root.glob("data/*/*.parquet")) - listed)
    if unlisted:
        names = ", ".join(str(p.relative_to(dataset.root)) for p in unlisted[:3])
        raise PosttrainError(
            f"{path}: lists {len(dataset.episodes)} episodes, but {len(unlisted)} more are on disk "
            f"({names}{' ...' if len(unlisted) > 3 else ''}); the dataset is incomplete or stale: "
            "convert it again"
        )
    total = dataset.info.get("total_episodes")
    if total != len(dataset.episodes):
        raise PosttrainError(
            f"{dataset.root / 'meta' / 'info.json'}: total_episodes={total!r}, but {path.name} "
            f"lists {len(dataset.episodes)}"
        )


# --- relative groups -----------------------------------------------------------------------------
def relative_group_slices(dataset: LeRobotDataset, names: list[str]):
    """(name, state column, state slice, action column, action slice) of each relative group."""
    modality = dataset.root / "meta" / "modality.json"
    state = {g.name: g for g in dataset.groups("state")}
    action = {g.name: g for g in dataset.groups("action")}
    out = []
    for name in names:
        if name not in action:
            raise PosttrainError(
                f"{modality}: relative group {name!r} is not an action group (action groups: {', '.join(action)})"
            )
        if name not in state:
            raise PosttrainError(f"{modality}: relative group {name!r} has no state group of the same name")
        s, a = state[name], action[name]
        if s.dims != a.dims:
            raise PosttrainError(f"{modality}: relative group {name!r}: state has {s.dims} dims, action {a.dims}")
        out.append((name, s.column, slice(s.start, s.end), a.column, slice(a.start, a.end)))
    return out


def compute_relative_stats(
    dataset: LeRobotDataset, buffers: dict[str, np.ndarray], names: list[str], horizon: int
) -> dict:
    if horizon < 1:
        raise PosttrainError(f"--action-horizon must be >= 1, got {horizon}")
    lengths = [e["length"] for e in dataset.episodes]
    result = {}
    for name, s_col, s_slice, a_col, a_slice in relative_group_slices(dataset, names):
        for column in (s_col, a_col):
            if column not in buffers:
                raise PosttrainError(
                    f"{dataset.root / 'meta/modality.json'}: group {name!r} refers to column "
                    f"{column!r}, which is not a numeric parquet column"
                )
        try:
            result[name] = stats_math.relative_stats(
                buffers[s_col][:, s_slice], buffers[a_col][:, a_slice], lengths, horizon
            )
        except ValueError as err:
            raise PosttrainError(f"{dataset.root}: relative stats of group {name!r}: {err}") from None
    return result


# --- the stage -----------------------------------------------------------------------------------
def write_stats(root, relative_groups: list[str] = (), action_horizon: int = 16, workers: int = 1) -> None:
    dataset = LeRobotDataset(root)
    meta = dataset.root / "meta"
    check_episode_list(dataset)
    relative_groups = list(relative_groups)
    if relative_groups:  # fail on a bad group name before the expensive pass
        relative_group_slices(dataset, relative_groups)
    columns, buffers, episode_stats = read_all(dataset, workers)
    log.info(
        "%d episodes, %d frames, columns: %s",
        len(dataset.episodes),
        len(next(iter(buffers.values()))),
        ", ".join(columns),
    )
    stats = {name: stats_math.feature_stats(buffers[name]) for name in tqdm(columns, desc="stats: columns")}
    relative = compute_relative_stats(dataset, buffers, relative_groups, action_horizon) if relative_groups else None

    write_json_atomic(meta / "stats.json", stats, indent=4)
    write_text_atomic(meta / "episodes_stats.jsonl", jsonl(episode_stats))
    relative_path = meta / "relative_stats.json"
    if relative is not None:
        write_json_atomic(relative_path, relative, indent=4)
    elif relative_path.exists():
        log.info("removing stale %s (no relative groups)", relative_path)
        relative_path.unlink()
    written = ["stats.json", "episodes_stats.jsonl"] + (["relative_stats.json"] if relative else [])
    log.info("wrote %s", ", ".join(str(meta / name) for name in written))
