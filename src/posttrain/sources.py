"""One LeRobot v2.1 dataset from several sources: `posttrain convert --output DATASET --gather SHARD_DIR ...`
without --input.

Each source (one Mimic HDF5, e.g. one Isaac Lab Arena task) is converted on its own into shard
directories, `posttrain convert --input H --output SHARD --shard K --num-shards N --source NAME
[--language-instruction TEXT] [--task-index I]`. Its shard.json records the source's name, its task
(where given) and its whole episode plan, so this gather needs neither the HDF5 files nor the
conversion flags. It

  - groups the shards by source, in the order given, and checks that each source's shards cover its
    episodes once and that all sources were converted alike (only the file and the task differ);
  - numbers the episodes across sources: the first source's episodes first, in demo order;
  - gives each source its task: `--source-instruction NAME=TEXT` / `--source-task-index NAME=N` over
    what its shards record; without an index, sources with the same instruction share a task and
    the others are numbered in order;
  - hardlinks the videos under their new episode numbers (no re-encoding) and rewrites each parquet's
    episode_index, index, task_index and annotation columns (state and action only: no frames);
  - writes meta/; source.json maps every episode to its source and demo.

So a new task text or index re-runs this gather only, never an encoder.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from posttrain import lerobot
from posttrain.convert import SHARD_FILE, check_features, link_or_copy, write_meta_files
from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, check_output

log = logging.getLogger("posttrain.sources")

# shard.json settings that may differ between sources; everything else must agree
PER_SOURCE = ("hdf5", "language_instruction", "task_index")
OUTPUT_ONLY = ("chunks_size", "annotation_key", "robot_type", "video")  # not in source.json (as for one source)
# conversion flags that a gather of several sources does not take (the shards' settings count)
CONVERSION_FLAGS = (
    "config",
    "embodiment",
    "language_instruction",
    "task_index",
    "fps",
    "drop_frame",
    "state_key",
    "action_key",
    "camera",
    "chunks_size",
    "crf",
    "gop",
    "preset",
    "failed_demos",
    "shard",
    "num_shards",
    "source",
)


@dataclass
class Source:
    """One source's shards: what they share (settings, plan, modality) and who holds which episode."""

    name: str
    manifest: dict  # shard.json without shard / episodes
    shards: list[Path] = field(default_factory=list)
    owner: dict[int, Path] = field(default_factory=dict)  # local episode index -> shard dir
    features: dict[int, dict] = field(default_factory=dict)  # local episode index -> info.json features
    instruction: str = ""
    task_index: int = 0

    @property
    def episodes(self) -> list[dict]:
        """Its plan: every episode in demo order, local indices 0..n-1."""
        return self.manifest["source"]["episodes"]


def gather_sources(args: argparse.Namespace) -> None:
    given = [f"--{name.replace('_', '-')}" for name in CONVERSION_FLAGS if getattr(args, name, None) is not None]
    if given:
        raise PosttrainError(
            f"convert --gather without --input: {', '.join(given)} not used here (the shards' "
            "settings are); give them when converting each source's shards"
        )
    if args.output is None:
        raise PosttrainError("convert: --output is required")
    check_output(args.output, "dataset", inputs=args.gather)  # before any work; again when writing
    sources = read_sources(args.gather)
    check_alike(sources)
    assign_tasks(
        sources,
        parse_pairs(args.source_instruction, "--source-instruction", str),
        parse_pairs(args.source_task_index, "--source-task-index", int),
    )
    write_dataset(sources, args.gather, args.output)


def parse_pairs(values: list[str] | None, option: str, cast) -> dict:
    pairs = {}
    for value in values or []:
        name, sep, text = value.partition("=")
        if not sep or not name or not text:
            raise PosttrainError(f"convert: {option} expects NAME=VALUE, got {value!r}")
        if name in pairs:
            raise PosttrainError(f"convert: {option} {name} given twice")
        try:
            pairs[name] = cast(text)
        except ValueError:
            raise PosttrainError(f"convert: {option} {value!r}: {text!r} is not a {cast.__name__}") from None
        if cast is int and pairs[name] < 0:
            raise PosttrainError(f"convert: {option} {value!r}: a task index is >= 0")
    return pairs


# --- reading and checking the shards --------------------------------------------------------------


def read_sources(shard_dirs: list[Path]) -> list[Source]:
    """The shards grouped by source (first appearance first); each source's shards agree and cover its plan."""
    sources: dict[str, Source] = {}
    for shard_dir in shard_dirs:
        path = shard_dir / SHARD_FILE
        manifest = lerobot.read_json(path)
        shared = {key: manifest.get(key) for key in ("num_shards", "settings", "source", "modality")}
        if not isinstance(shared["source"], dict) or not shared["source"].get("name"):
            raise PosttrainError(f"{path}: no `source` (a shard of an older posttrain?): convert the shard again")
        name = shared["source"]["name"]
        source = sources.setdefault(name, Source(name, shared))
        if shared != source.manifest:
            raise PosttrainError(
                f"{path}: source {name}: {first_difference(shared, source.manifest)}, its shard "
                f"{source.shards[0]} has another (stale shard? convert the source's shards again)"
            )
        source.shards.append(shard_dir)
        add_episodes(source, manifest, path)
    for source in sources.values():
        missing = [e for e in source.episodes if e["episode_index"] not in source.owner]
        if missing:
            listed = ", ".join(f"{e['episode_index']} ({e['demo']})" for e in missing[:10])
            raise PosttrainError(
                f"convert --gather: the shards of source {source.name} miss {len(missing)} "
                f"episode(s) of {len(source.episodes)}: {listed}{' ...' if len(missing) > 10 else ''}"
                f" (give all {source.manifest['num_shards']} of its shards)"
            )
    return list(sources.values())


def add_episodes(source: Source, manifest: dict, path: Path) -> None:
    plan = {e["episode_index"]: e for e in source.episodes}
    for entry in manifest.get("episodes", []):
        index = entry.get("episode_index")
        if plan.get(index) != {k: entry.get(k) for k in plan.get(index, {})}:
            raise PosttrainError(
                f"{path}: episode {index} ({entry.get('demo')}) is not in source {source.name}'s plan (stale shard?)"
            )
        if index in source.owner:
            raise PosttrainError(
                f"{path}: source {source.name}: episode {index} ({entry.get('demo')}) is also in {source.owner[index]}"
            )
        if not isinstance(entry.get("features"), dict):
            raise PosttrainError(f"{path}: episode {index} has no features")
        source.owner[index], source.features[index] = path.parent, entry["features"]


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    """`settings.fps is 25` for the first key (depth first) where a and b differ."""
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                return first_difference(a[key], b[key], f"{prefix}{key}.")
            return f"{prefix}{key} is {json.dumps(a.get(key))[:80]}"
    return "the same"


def check_alike(sources: list[Source]) -> None:
    """All sources go into one dataset: the same robot, cameras, columns, fps, video settings."""
    first = sources[0]

    def common(source: Source) -> dict:
        settings = {k: v for k, v in source.manifest["settings"].items() if k not in PER_SOURCE}
        return {"settings": settings, "modality": source.manifest["modality"]}

    for source in sources[1:]:
        if common(source) != common(first):
            raise PosttrainError(
                f"{source.shards[0] / SHARD_FILE}: source {source.name}: "
                f"{first_difference(common(source), common(first))}, source {first.name} has "
                "another: every source must be converted with the same settings (only the file "
                "and the task may differ)"
            )


# --- tasks ----------------------------------------------------------------------------------------


def assign_tasks(sources: list[Source], instructions: dict[str, str], indices: dict[str, int]) -> None:
    """Each source's instruction and task index: given here, else as its shards record; without an index,
    the index of an earlier source with the same instruction, else the next unused one."""
    names = [s.name for s in sources]
    for option, given in (("--source-instruction", instructions), ("--source-task-index", indices)):
        for name in given:
            if name not in names:
                raise PosttrainError(
                    f"convert: {option} {name}: no shard of source {name} among --gather (sources: {', '.join(names)})"
                )
    by_index: dict[int, Source] = {}
    for source in sources:
        recorded = source.manifest["source"]
        source.instruction = instructions.get(source.name) or recorded.get("language_instruction") or ""
        if not source.instruction:
            raise PosttrainError(
                f"convert --gather: source {source.name} has no language instruction: give "
                f"--source-instruction {source.name}=TEXT (or --language-instruction when "
                "converting its shards)"
            )
        index = indices.get(source.name, recorded.get("task_index"))
        if index is not None:
            claim_task(by_index, source, index)
    for source in sources:
        if indices.get(source.name, source.manifest["source"].get("task_index")) is None:
            same = [s for s in by_index.values() if s.instruction == source.instruction]
            claim_task(
                by_index,
                source,
                same[0].task_index if same else next(i for i in range(len(by_index) + 1) if i not in by_index),
            )


def claim_task(by_index: dict[int, Source], source: Source, index: int) -> None:
    """Give `source` task `index`: one instruction per index, one index per instruction."""
    owner = by_index.setdefault(index, source)
    if owner.instruction != source.instruction:
        raise PosttrainError(
            f"convert --gather: task_index {index} is given to two instructions: source "
            f"{owner.name} {owner.instruction!r} and source {source.name} {source.instruction!r}"
        )
    other = next((s for i, s in by_index.items() if i != index and s.instruction == source.instruction), None)
    if other is not None:
        raise PosttrainError(
            f"convert --gather: sources {other.name} and {source.name} have the same instruction "
            f"{source.instruction!r} but task_index {other.task_index} and {index}"
        )
    source.task_index = index


# --- writing --------------------------------------------------------------------------------------


def relabel(
    src: Path, dst: Path, episode_index: int, first_index: int, task_index: int, annotation_key: str, length: int
) -> None:
    """Copy one episode's parquet with its place in this dataset: episode_index, global index, task."""
    try:
        table = pq.read_table(src)
    except (OSError, pa.ArrowException) as err:
        raise PosttrainError(f"{src}: cannot read the shard's episode ({err})") from None
    if table.num_rows != length:
        raise PosttrainError(f"{src}: {table.num_rows} rows, its shard.json says {length}")
    n = table.num_rows
    values = {
        "episode_index": np.full(n, episode_index),
        "index": first_index + np.arange(n),
        "task_index": np.full(n, task_index),
        annotation_key: np.full(n, task_index),
    }
    for name, column in values.items():
        position = table.schema.get_field_index(name)
        if position < 0:
            raise PosttrainError(f"{src}: column {name} missing")
        table = table.set_column(position, table.schema.field(position), pa.array(column.astype(np.int64)))
    lerobot.write_table(dst, table)


def write_dataset(sources: list[Source], shard_dirs: list[Path], output: Path) -> None:
    settings = sources[0].manifest["settings"]
    episodes, where, features, placed = [], [], [], []  # placed: (source, its entry) per global episode
    with atomic_directory(output, "dataset", inputs=shard_dirs) as root:
        first_index = 0
        for source in sources:
            for entry in source.episodes:
                index, local = len(episodes), entry["episode_index"]
                shard = source.owner[local]
                keys = settings["cameras"].values()
                (data, videos), (new_data, new_videos) = (
                    lerobot.episode_relpaths(local, settings["chunks_size"], keys),
                    lerobot.episode_relpaths(index, settings["chunks_size"], keys),
                )
                relabel(
                    shard / data,
                    root / new_data,
                    index,
                    first_index,
                    source.task_index,
                    settings["annotation_key"],
                    entry["length"],
                )
                for key, video in videos.items():
                    link_or_copy(shard / video, root / new_videos[key])
                episodes.append({"episode_index": index, "tasks": [source.instruction], "length": entry["length"]})
                where.append(
                    f"source {source.name}: {Path(source.manifest['source']['hdf5']).name}: "
                    f"data/{entry['demo']}: episode {index}"
                )
                features.append(source.features[local])
                placed.append((source, entry))
                first_index += entry["length"]
        check_features(where, features)
        info = lerobot.build_info(
            robot_type=settings["robot_type"],
            episode_lengths=[e["length"] for e in episodes],
            num_tasks=len({s.task_index for s in sources}),
            fps=settings["fps"],
            chunks_size=settings["chunks_size"],
            features=features[0],
            video_keys=list(settings["cameras"].values()),
        )
        tasks = sorted({(s.task_index, s.instruction) for s in sources})
        write_meta_files(
            root,
            info,
            episodes,
            [{"task_index": i, "task": text} for i, text in tasks],
            sources[0].manifest["modality"],
            source_map(sources, placed),
        )
    log.info(
        "gathered %d shards of %d sources into %s (%d episodes, %d tasks)",
        len(shard_dirs),
        len(sources),
        output,
        len(episodes),
        len(tasks),
    )


def source_map(sources: list[Source], placed: list[tuple[Source, dict]]) -> dict:
    """meta/source.json: the settings all sources share, each source (file, task, episodes, skipped demos)
    and which demo of which source became which episode."""
    shared = {k: v for k, v in sources[0].manifest["settings"].items() if k not in PER_SOURCE + OUTPUT_ONLY}
    blocks, first = [], 0
    for source in sources:
        recorded = source.manifest["source"]
        blocks.append(
            {
                "name": source.name,
                "hdf5": recorded["hdf5"],
                "language_instruction": source.instruction,
                "task_index": source.task_index,
                "first_episode": first,
                "num_episodes": len(source.episodes),
                "skipped_demos": recorded["skipped_demos"],
            }
        )
        first += len(source.episodes)
    episodes = [
        {
            "episode_index": index,
            "source": source.name,
            "demo": entry["demo"],
            "source_frames": entry["source_frames"],
            "length": entry["length"],
        }
        for index, (source, entry) in enumerate(placed)
    ]
    return {
        "hdf5": "; ".join(f"{b['name']}: {b['hdf5']}" for b in blocks),
        **shared,
        "sources": blocks,
        "episodes": episodes,
    }
