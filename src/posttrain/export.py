"""`posttrain export --format lerobot-v3 DATASET_DIR --output DIR`: a LeRobot v3.0 copy of a v2.1 dataset.

lerobot >= 0.4 reads only v3.0 (many episodes per file); GR00T N1.6 reads only v2.1. The copy keeps
GR00T's meta/modality.json and its stats (q01/q99 included) beside lerobot's own meta, so one copy
serves lerobot directly and GR00T after GR00T's own v3 -> v2 conversion. Layout and keys follow
lerobot 0.4's reader (shared/docs/lerobot_v21_and_video.md §4):

    data/chunk-{c:03d}/file-{f:03d}.parquet        whole episodes in order, up to DATA_FILE_MB per file
    videos/{key}/chunk-{c:03d}/file-{f:03d}.mp4     per camera, episodes concatenated, up to VIDEO_FILE_MB
    meta/info.json                                  codebase_version v3.0, the v3 path templates, file sizes,
                                                    per-feature fps; totals of chunks and videos dropped
    meta/tasks.parquet                              task_index, with the task text as (pandas) index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: tasks, length, data and video file,
                                                    dataset_from/to_index, videos/{key}/from/to_timestamp,
                                                    stats/{feature}/{stat} (from episodes_stats.jsonl)
    meta/stats.json                                 GR00T's stats.json, every column unchanged, plus each
                                                    camera's stats aggregated as lerobot does (its image
                                                    normaliser reads them from here)
    meta/modality.json  [meta/relative_stats.json]  copied (GR00T); meta/source.json copied (provenance)

Parquet rows and video frames are copied, never recomputed: a data file is the episodes' tables
appended, and a video file is ffmpeg's concat demuxer with stream copy (no re-encoding, so every
frame decodes to the same pixels). An episode's frame i then sits at from_timestamp + i / fps,
which is checked by counting the frames of each written file. Needs `posttrain stats` first.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posttrain import stats_math
from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, write_json_atomic
from posttrain.lerobot import LeRobotDataset, read_json, read_jsonl

log = logging.getLogger("posttrain.export")

FORMATS = ("lerobot-v3",)
V3 = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200  # lerobot 0.4's defaults
COPIED_META = ("modality.json", "relative_stats.json", "source.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_DIR", help="LeRobot v2.1 dataset (after `posttrain stats`)")
    parser.add_argument("--format", required=True, choices=FORMATS, help="lerobot-v3: LeRobot v3.0 (lerobot >= 0.4)")
    parser.add_argument("--output", type=Path, required=True, help="directory of the copy")


def run(args: argparse.Namespace) -> int:
    export_v3(Path(args.dataset), args.output)
    return 0


# --- checks and meta ------------------------------------------------------------------------------
def load_source(root: Path) -> tuple[LeRobotDataset, dict, dict[int, dict]]:
    """The v2.1 dataset with its stats: what the copy needs, checked before anything is written."""
    dataset = LeRobotDataset(root)
    meta = dataset.root / "meta"
    if dataset.info.get("codebase_version") != "v2.1":
        raise PosttrainError(
            f"{meta / 'info.json'}: codebase_version {dataset.info.get('codebase_version')!r}, expected 'v2.1'"
        )
    if [e.get("episode_index") for e in dataset.episodes] != list(range(len(dataset.episodes))) or not dataset.episodes:
        raise PosttrainError(
            f"{meta / 'episodes.jsonl'}: episodes must be listed as 0, 1, 2, ... "
            "(run `posttrain verify` to see what is wrong)"
        )
    if sorted(dataset.tasks) != list(range(len(dataset.tasks))):
        # lerobot 0.4 looks a task up by row position (`tasks.iloc[task_index]`)
        raise PosttrainError(
            f"{meta / 'tasks.jsonl'}: task_index values {sorted(dataset.tasks)}; lerobot v3.0 "
            f"needs 0..{len(dataset.tasks) - 1} (convert with --task-index 0, config "
            "convert.task_index)"
        )
    stats_path, episodes_path = meta / "stats.json", meta / "episodes_stats.jsonl"
    for path in (stats_path, episodes_path):
        if not path.is_file():
            raise PosttrainError(f"{path}: missing; run `posttrain stats {root}` first")
    episode_stats = {line.get("episode_index"): line.get("stats") or {} for line in read_jsonl(episodes_path)}
    for episode in dataset.episodes:
        ep = episode["episode_index"]
        missing = [k for k in dataset.video_keys if k not in episode_stats.get(ep, {})]
        if ep not in episode_stats or missing:
            what = "no line" if ep not in episode_stats else f"no stats of camera {missing[0]}"
            raise PosttrainError(f"{episodes_path}: episode {ep}: {what}; rerun `posttrain stats {root}`")
    return dataset, read_json(stats_path), episode_stats


def v3_info(info: dict) -> dict:
    """info.json as lerobot 0.4 writes it for a converted dataset (same features, v3 templates)."""
    features = {
        key: (dict(feature) if feature.get("dtype") == "video" else dict(feature, fps=int(info["fps"])))
        for key, feature in info["features"].items()
    }
    return {
        "codebase_version": V3,
        "robot_type": info.get("robot_type"),
        "total_episodes": info["total_episodes"],
        "total_frames": info["total_frames"],
        "total_tasks": info["total_tasks"],
        "chunks_size": info["chunks_size"],
        "data_files_size_in_mb": DATA_FILE_MB,
        "video_files_size_in_mb": VIDEO_FILE_MB,
        "fps": int(info["fps"]),
        "splits": info.get("splits", {}),
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if info.get("video_path") else None,
        "features": features,
    }


def combined_stats(gr00t: dict, episode_stats: list[dict], cameras: list[str]) -> dict:
    """GR00T's stats.json, every entry as it is, plus each camera aggregated over the episodes."""
    out = dict(gr00t)
    for key in cameras:
        aggregated = stats_math.aggregate_episode_stats([stats[key] for stats in episode_stats])
        out[key] = {name: np.asarray(value).tolist() for name, value in aggregated.items()}
    return out


def tasks_table(tasks: dict[int, str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes lerobot's DataFrame: task_index, indexed by the task text."""
    table = pa.table(
        {
            "task_index": pa.array(sorted(tasks), pa.int64()),
            "task": pa.array([tasks[i] for i in sorted(tasks)], pa.string()),
        }
    )
    pandas_meta = {  # what pandas reads to restore the index (pyarrow's pandas metadata)
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


# --- files holding many episodes ------------------------------------------------------------------
def group_by_size(paths: list[Path], limit_mb: int) -> list[list[int]]:
    """Positions of `paths`, in order, split into files of at most `limit_mb` (an episode larger
    than the limit gets a file of its own; episodes are never split)."""
    groups, size = [], 0.0
    for position, path in enumerate(paths):
        mb = path.stat().st_size / 2**20
        if not groups or size + mb > limit_mb:
            groups.append([])
            size = 0.0
        groups[-1].append(position)
        size += mb
    return groups


def file_index(number: int, chunks_size: int) -> dict[str, int]:
    """The chunk and file of the number-th file (lerobot: at most chunks_size files per chunk)."""
    return {"chunk_index": number // chunks_size, "file_index": number % chunks_size}


def write_data(dataset: LeRobotDataset, root: Path, rows: list[dict]) -> None:
    paths = [dataset.parquet_path(e["episode_index"]) for e in dataset.episodes]
    first_row = 0
    for number, group in enumerate(group_by_size(paths, DATA_FILE_MB)):
        where = file_index(number, dataset.info["chunks_size"])
        target = root / DATA_PATH.format(**where)
        target.parent.mkdir(parents=True, exist_ok=True)
        schema = pq.read_schema(paths[group[0]])
        with pq.ParquetWriter(target, schema, compression="snappy") as writer:
            for position in group:
                table = dataset.read_table(dataset.episodes[position]["episode_index"])
                if not table.schema.equals(schema):
                    raise PosttrainError(f"{paths[position]}: columns differ from {paths[group[0]]}'s")
                writer.write_table(table)  # one row group per episode
                rows[position].update(
                    {
                        "data/chunk_index": where["chunk_index"],
                        "data/file_index": where["file_index"],
                        "dataset_from_index": first_row,
                        "dataset_to_index": first_row + table.num_rows,
                    }
                )
                first_row += table.num_rows


def write_videos(dataset: LeRobotDataset, root: Path, rows: list[dict], key: str) -> None:
    from posttrain.video import FFMPEG, probe

    paths = [dataset.video_path(e["episode_index"], key) for e in dataset.episodes]
    for number, group in enumerate(group_by_size(paths, VIDEO_FILE_MB)):
        where = file_index(number, dataset.info["chunks_size"])
        target = root / VIDEO_PATH.format(video_key=key, **where)
        target.parent.mkdir(parents=True, exist_ok=True)
        listing = target.with_suffix(".ffconcat")
        listing.write_text("ffconcat version 1.0\n" + "".join(f"file {concat_quote(paths[p])}\n" for p in group))
        command = [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-f",
            "concat",
            "-safe",
            "0",
            "-i",
            str(listing),
            "-map",
            "0:v",
            "-c",
            "copy",
            "-movflags",
            "+faststart",
            str(target),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        listing.unlink()
        if result.returncode != 0:
            raise PosttrainError(
                f"{target}: ffmpeg could not concatenate the videos of episodes "
                f"{group[0]}..{group[-1]}: {result.stderr.strip()[-300:]}"
            )
        lengths = [dataset.episodes[p]["length"] for p in group]
        frames = probe(target, count_frames=True).num_frames
        if frames != sum(lengths):
            raise PosttrainError(f"{target}: {frames} frames after concatenation, the episodes have {sum(lengths)}")
        start = 0
        for position, length in zip(group, lengths):
            rows[position].update(
                {
                    f"videos/{key}/chunk_index": where["chunk_index"],
                    f"videos/{key}/file_index": where["file_index"],
                    f"videos/{key}/from_timestamp": start / dataset.fps,
                    f"videos/{key}/to_timestamp": (start + length) / dataset.fps,
                }
            )
            start += length


def concat_quote(path: Path) -> str:
    """An absolute path quoted for ffmpeg's concat list (a ' inside becomes '\\'')."""
    return "'" + str(path.resolve()).replace("'", "'\\''") + "'"


def episodes_table(dataset: LeRobotDataset, rows: list[dict], episode_stats: dict[int, dict]) -> pa.Table:
    """meta/episodes rows in the column order of lerobot's converter; stats flattened to stats/{feature}/{stat}."""
    full = []
    for episode, row in zip(dataset.episodes, rows):
        stats = {
            f"stats/{feature}/{name}": value
            for feature, entry in episode_stats[episode["episode_index"]].items()
            for name, value in entry.items()
        }
        full.append(
            {
                "episode_index": episode["episode_index"],
                **row,
                "tasks": list(episode["tasks"]),
                "length": episode["length"],
                **stats,
                "meta/episodes/chunk_index": 0,
                "meta/episodes/file_index": 0,
            }
        )
    return pa.Table.from_pylist(full)


# --- the stage ------------------------------------------------------------------------------------
def export_v3(source: Path, output: Path) -> None:
    dataset, gr00t_stats, episode_stats = load_source(source)
    meta = dataset.root / "meta"
    with atomic_directory(output, "export", inputs=[source]) as root:
        rows = [{} for _ in dataset.episodes]
        write_data(dataset, root, rows)
        for key in dataset.video_keys:
            write_videos(dataset, root, rows, key)
        (root / EPISODES_PATH).parent.mkdir(parents=True)
        pq.write_table(episodes_table(dataset, rows, episode_stats), root / EPISODES_PATH)
        pq.write_table(tasks_table(dataset.tasks), root / "meta" / "tasks.parquet")
        write_json_atomic(root / "meta" / "info.json", v3_info(dataset.info), indent=4)
        listed = [episode_stats[e["episode_index"]] for e in dataset.episodes]
        write_json_atomic(
            root / "meta" / "stats.json", combined_stats(gr00t_stats, listed, dataset.video_keys), indent=4
        )
        for name in COPIED_META:
            if (meta / name).is_file():
                shutil.copyfile(meta / name, root / "meta" / name)
    log.info(
        "wrote %s: LeRobot %s, %d episodes, %d frames", output, V3, dataset.num_episodes, dataset.info["total_frames"]
    )
