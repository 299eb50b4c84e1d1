"""LeRobot v2.1 datasets on disk: the one format every stage after conversion reads.

Layout (shared/docs/lerobot_v21_and_video.md §1):

    meta/info.json  meta/episodes.jsonl  meta/tasks.jsonl  meta/modality.json
    meta/stats.json  meta/episodes_stats.jsonl  [meta/relative_stats.json]   (written by `posttrain stats`)
    meta/source.json                          demo -> episode mapping and conversion settings (ours)
    data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
    videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4

Parquet columns follow Arena's GR1 converter (and its golden episode) so GR00T N1.6 and Arena tools
read our output unchanged: state/action as `list<float>`, `timestamp` float64, int64 indices,
the annotation column, `next.reward`, `next.done`, `observation.img_state_delta`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posttrain.errors import PosttrainError

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def episode_relpaths(episode_index: int, chunks_size: int, video_keys) -> tuple[str, dict[str, str]]:
    """Where a dataset (or a conversion shard) keeps an episode, relative to its root: the parquet file,
    and each camera's video by video key."""
    chunk = episode_index // chunks_size
    data = DATA_PATH.format(episode_chunk=chunk, episode_index=episode_index)
    videos = {
        key: VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=episode_index) for key in video_keys
    }
    return data, videos


STATE = "observation.state"
ACTION = "action"
DEFAULT_ANNOTATION = "annotation.human.action.task_description"
FLOAT_LIST = pa.list_(pa.field("element", pa.float32()))  # the child name pandas/Arena write
DOUBLE_LIST = pa.list_(pa.field("element", pa.float64()))  # G1's eef poses


def episode_columns(
    state: np.ndarray,
    action: np.ndarray,
    episode_index: int,
    first_index: int,
    fps: int,
    task_index: int,
    annotation_key: str = DEFAULT_ANNOTATION,
    extra: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """The parquet table of one episode, in the column order and arrow types of the golden episodes.

    `extra`: an embodiment's own (T, D) columns, float32 or float64 as given (G1's eef poses and
    teleop commands), placed after `timestamp` in the given order, as in the golden G1 episode.
    """
    n = len(state)
    frame_index = np.arange(n, dtype=np.int64)
    last = frame_index == n - 1

    def float_lists(values: np.ndarray, dtype=np.float32) -> pa.Array:
        values = np.ascontiguousarray(values, dtype=dtype)
        offsets = np.arange(0, values.size + 1, values.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(
            pa.array(offsets),
            pa.array(values.reshape(-1)),
            type=DOUBLE_LIST if values.dtype == np.float64 else FLOAT_LIST,
        )

    columns = {
        STATE: float_lists(state),
        ACTION: float_lists(action),
        # frame_index * (1 / fps), not frame_index / fps: the golden GR1 and G1 episodes hold exactly
        # these values (the two differ in the last bit on some rows)
        "timestamp": pa.array(frame_index * (1.0 / fps), pa.float64()),
        **{name: float_lists(values, values.dtype) for name, values in (extra or {}).items()},
        annotation_key: pa.array(np.full(n, task_index, np.int64)),
        "episode_index": pa.array(np.full(n, episode_index, np.int64)),
        "task_index": pa.array(np.full(n, task_index, np.int64)),
        "index": pa.array(first_index + frame_index),
        "frame_index": pa.array(frame_index),
        "next.reward": pa.array(last.astype(np.float64)),
        "next.done": pa.array(last),
        "observation.img_state_delta": pa.array(np.zeros(n, np.float64)),
    }
    return pa.table(columns)


def write_table(path: str | Path, table: pa.Table) -> None:
    """Parquet with fixed settings, so the same table always gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="snappy", write_statistics=True, store_schema=True)


def tabular_features(table: pa.Table, names: dict[str, list[str]] | None = None) -> dict:
    """info.json `features` entries of the parquet columns: numpy dtype name, shape, joint names.

    Every entry has "names" (lerobot's `LeRobotDatasetMetadata.names` reads it for every feature):
    the given joint names, or null as lerobot writes for its own scalar columns."""
    features = {}
    for field in table.schema:
        if pa.types.is_list(field.type):
            first = table.column(field.name)[0].values
            dtype, shape = first.type.to_pandas_dtype().__name__, [len(first)]
        else:
            dtype, shape = np.dtype(field.type.to_pandas_dtype()).name, [1]
        column_names = (names or {}).get(field.name)
        features[field.name] = {
            "dtype": dtype,
            "shape": shape,
            "names": list(column_names) if column_names is not None else None,
        }
    return features


def video_feature(height: int, width: int, fps: float, codec: str = "h264", pix_fmt: str = "yuv420p") -> dict:
    """A video entry of info.json `features` that both readers understand: `video_info` as GR00T's
    demo data and Arena write it, and the same facts under `info` in lerobot's current spelling
    (int fps, its key order); names use lerobot's "channels" (GR00T reads neither names nor info)."""
    return {
        "dtype": "video",
        "shape": [height, width, 3],
        "names": ["height", "width", "channels"],
        "video_info": {
            "video.width": width,
            "video.height": height,
            "video.fps": float(fps),
            "video.codec": codec,
            "video.pix_fmt": pix_fmt,
            "video.channels": 3,
            "video.is_depth_map": False,
            "has_audio": False,
        },
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": codec,
            "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False,
            "video.fps": round(fps),
            "video.channels": 3,
            "has_audio": False,
        },
    }


def build_info(
    *,
    robot_type: str | None,
    episode_lengths: list[int],
    num_tasks: int,
    fps: int,
    chunks_size: int,
    features: dict,
    video_keys: list[str],
) -> dict:
    """info.json with true totals: chunks in use (≥ 1) and a split covering every episode."""
    n = len(episode_lengths)
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": n,
        "total_frames": int(sum(episode_lengths)),
        "total_tasks": num_tasks,
        "total_videos": n * len(video_keys),
        "total_chunks": max(1, -(-n // chunks_size)),
        "chunks_size": chunks_size,
        "fps": fps,
        "splits": {"train": f"0:{n}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH if video_keys else None,
        "features": features,
    }


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as err:
        raise PosttrainError(f"{path}: cannot read JSON lines ({err})") from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PosttrainError(f"{path}: cannot read JSON ({err})") from None


@dataclass(frozen=True)
class Group:
    """A modality.json group: a [start, end) slice of a parquet column."""

    name: str
    column: str
    start: int
    end: int

    @property
    def dims(self) -> int:
        return self.end - self.start


class LeRobotDataset:
    """Read-only view of a v2.1 dataset directory. Only metadata is read on construction."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not (self.root / "meta" / "info.json").is_file():
            raise PosttrainError(f"{self.root}: not a LeRobot dataset (meta/info.json missing)")
        self.info = read_json(self.root / "meta" / "info.json")
        self.episodes = read_jsonl(self.root / "meta" / "episodes.jsonl")
        self.tasks = {row["task_index"]: row["task"] for row in read_jsonl(self.root / "meta" / "tasks.jsonl")}

    # --- metadata ---------------------------------------------------------------------------
    @property
    def fps(self) -> int:
        return self.info["fps"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, v in self.info["features"].items() if v.get("dtype") == "video"]

    @cached_property
    def modality(self) -> dict:
        return read_json(self.root / "meta" / "modality.json")

    def groups(self, kind: str) -> list[Group]:
        """State or action groups in modality.json key order (the order GR00T concatenates them)."""
        default_column = STATE if kind == "state" else ACTION
        return [
            Group(name, spec.get("original_key", default_column), spec["start"], spec["end"])
            for name, spec in self.modality[kind].items()
        ]

    @cached_property
    def stats(self) -> dict:
        path = self.root / "meta" / "stats.json"
        if not path.is_file():
            raise PosttrainError(f"{path}: missing; run `posttrain stats {self.root}` first")
        return read_json(path)

    @cached_property
    def source(self) -> dict:
        """meta/source.json: which HDF5 demo each episode came from and how it was converted."""
        return read_json(self.root / "meta" / "source.json")

    def task_text(self, task_index: int) -> str:
        return self.tasks[task_index]

    # --- per-episode files ------------------------------------------------------------------
    def episode_index(self, position: int) -> int:
        return self.episodes[position]["episode_index"]

    def parquet_path(self, episode_index: int) -> Path:
        chunk = episode_index // self.info["chunks_size"]
        return self.root / self.info["data_path"].format(episode_chunk=chunk, episode_index=episode_index)

    def video_path(self, episode_index: int, video_key: str) -> Path:
        chunk = episode_index // self.info["chunks_size"]
        return self.root / self.info["video_path"].format(
            episode_chunk=chunk, video_key=video_key, episode_index=episode_index
        )

    def read_table(self, episode_index: int, columns: list[str] | None = None) -> pa.Table:
        path = self.parquet_path(episode_index)
        try:
            return pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as err:
            raise PosttrainError(f"{path}: cannot read episode {episode_index} ({err})") from None

    def read_episode(self, episode_index: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """Columns of one episode as numpy arrays: list columns become (T, D) float32 arrays."""
        table = self.read_table(episode_index, columns)
        return {name: column_to_numpy(table.column(name)) for name in table.column_names}

    def read_video(self, episode_index: int, video_key: str, size: tuple[int, int] | None = None) -> np.ndarray:
        from posttrain.video import read_frames  # decoding is only needed by some readers

        return read_frames(self.video_path(episode_index, video_key), size)


# Parts of a dataset a trainer learns from. meta/source.json is provenance, not content: it names
# the source HDF5's path, which may move without the data changing.
CONTENT_PARTS = ("meta", "data", "videos")
PROVENANCE = ("meta/source.json",)


def content_fingerprint(root: str | Path) -> dict[str, str]:
    """sha256 of a dataset's content, by part: each meta/ file on its own (so a change can be named),
    then all of data/ and all of videos/ (relative names and bytes, in path order). The dataset's own
    location never counts: a moved or re-spelled path gives the same fingerprint. About 1 s per GB."""
    root = Path(root)
    parts = {}
    for part in CONTENT_PARTS:
        digest = hashlib.sha256()
        for path in sorted((root / part).rglob("*")):
            name = path.relative_to(root).as_posix()
            hidden = any(piece.startswith(".") for piece in name.split("/"))  # temporary files of a writer
            if not path.is_file() or hidden or name in PROVENANCE:
                continue
            with open(path, "rb") as f:
                file_hash = hashlib.file_digest(f, "sha256").hexdigest()
            if part == "meta":
                parts[name] = file_hash
            else:
                digest.update(f"{name}\0{file_hash}\0".encode())
        if part != "meta":
            parts[part] = digest.hexdigest()
    return parts


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A parquet column as numpy: a list<float> column becomes a 2-D array."""
    column = column.combine_chunks()
    if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
        if len(column) == 0:
            return np.zeros((0, 0), np.float32)
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False)
