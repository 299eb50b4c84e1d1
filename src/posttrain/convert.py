"""`posttrain convert`: Isaac Lab Mimic HDF5 -> LeRobot v2.1 dataset (parquet + H.264 MP4 + meta/).

Three modes, so that a workflow can spread the encoding over jobs:

    whole    --input H --output DATASET            every episode, then meta/
    shard    --input H --output SHARD --shard K --num-shards N
                                                   episodes K, K+N, K+2N, ... plus shard.json, no meta/
    gather   --input H --output DATASET --gather SHARD [SHARD ...]
                                                   hardlinks the shards' files and writes meta/
    gather   --output DATASET --gather SHARD [SHARD ...]      (no --input: several sources)
                                                   one dataset from the shards of several HDF5
                                                   files, each shard made with --source NAME
                                                   (posttrain.sources)

`--config ARENA_YAML` reads IsaacLab-Arena's converter YAML unchanged (see `arena_settings`).

Columns beyond state and action are the embodiment's (config/embodiments/<name>/embodiment.yaml,
e.g. G1's eef poses and teleop commands): each the concatenation of HDF5 datasets it names, rows
[:-1], after `timestamp`; an Arena YAML's `*_eef_*_name_sim` / `teleop_*_name_sim` keys rename
those datasets. Cameras, the annotation column and robot_type not given default to the embodiment's.

What we do differently from Arena's reference converter (shared/docs/mimic_hdf5_and_arena_converter.md §5):
episodes follow the demo NUMBER (demo_9 before demo_10); the whole file is validated before any
output is written; every MP4 is checked (frame count == rows); `total_chunks`/`splits` are true;
`--drop-frame first` (default) drops the stale first render (Arena PR #382), `last` reproduces
the reference. Output goes to a temporary directory renamed at the end, so a killed run leaves
nothing but a hidden temp dir that the next run removes, and the same input gives the same bytes.

Memory: each worker streams one episode's camera frames from HDF5 to the encoder in batches,
so the peak memory does not grow with the episode count or length.

Failed demos (attr `success` False) are left out by default (`--failed-demos skip`): Mimic's
generated files hold successful demos only, so a failed one is usually a mistake; meta/source.json
lists what was skipped. `include` converts them, `error` refuses the file.

Faults: `--output` may only replace a directory a conversion wrote (files.check_output), one run at
a time (a lock beside it); encoder workers die with this process (Linux parent-death signal);
a worker killed (e.g. by the OOM killer) and a full disk end in one line naming the episode / the
space needed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import errno
import json
import logging
import multiprocessing
import os
import shutil
import signal
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from posttrain import lerobot
from posttrain.embodiment import DESCRIPTION_YAML, EMBODIMENTS_DIR, Embodiment, load_embodiment
from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, check_output, write_json_atomic, write_text_atomic
from posttrain.mimic import MimicFile
from posttrain.settings import ConvertSettings, add_options, defaults
from posttrain.video import VideoSettings, VideoWriter, check_video_settings, probe

log = logging.getLogger("posttrain.convert")

FRAME_BATCH = 32  # frames per HDF5 read: ~25 MB at 512², the only frames a worker holds
SHARD_FILE = "shard.json"
DEFAULT_CAMERAS = {"robot_pov_cam_rgb": "observation.images.ego_view"}
# ConvertSettings' defaults (config/config.yaml `convert:`), the video block flattened as the flags are
# (crf, gop, preset); the Arena YAML and then the command-line flags override them.
DEFAULTS = {**defaults(ConvertSettings), **defaults(ConvertSettings)["video"]}
FAILED_DEMOS = ("skip", "include", "error")


@dataclass(frozen=True)
class Settings:
    """Everything that decides the output bytes (plus where to read and how many workers)."""

    input: Path
    language_instruction: str
    task_index: int
    fps: int
    drop_frame: str
    state_key: str
    action_key: str
    cameras: dict[str, str] | None  # camera_obs/<name> -> video key (None: the embodiment's default)
    chunks_size: int
    video: VideoSettings
    annotation_key: str | None = None  # None: the one the embodiment's modality.json names
    robot_type: str | None = None  # None: the embodiment's robot_type (else its name)
    image_size: tuple[int, int, int] | None = None  # Arena `original_image_size`: (H, W, C) every camera must have
    failed_demos: str = "skip"  # demos with attr success=False: skip, include or error
    workers: int = 1
    arena_names: dict[str, str] = field(default_factory=dict)  # Arena YAML *_name_sim key -> HDF5 dataset name
    config: Path | None = None  # the Arena YAML, named in errors about it

    def with_embodiment(self, embodiment: Embodiment) -> Settings:
        """Settings left unset take the embodiment's values: cameras, annotation column, robot_type."""
        return replace(
            self,
            cameras=self.cameras or dict(embodiment.cameras or DEFAULT_CAMERAS),
            annotation_key=self.annotation_key or embodiment.annotation_key or lerobot.DEFAULT_ANNOTATION,
            robot_type=self.robot_type or embodiment.robot_type or embodiment.name,
        )

    def source_fields(self, embodiment: Embodiment) -> dict:
        """The conversion settings recorded in meta/source.json (and compared between shards)."""
        return {
            "hdf5": self.input.name,
            "embodiment": embodiment.name,
            "drop_frame": self.drop_frame,
            "state_key": self.state_key,
            "action_key": self.action_key,
            "cameras": dict(self.cameras),
            "fps": self.fps,
            "language_instruction": self.language_instruction,
            "task_index": self.task_index,
            "failed_demos": self.failed_demos,
            # the embodiment's extra columns and the HDF5 datasets they read (none for GR1)
            **(
                {"columns": {c.name: [p.key for p in c.parts] for c in embodiment.columns}}
                if embodiment.columns
                else {}
            ),
        }

    def output_fields(self) -> dict:
        """Settings outside source.json that still change the output (compared between shards)."""
        return {
            "chunks_size": self.chunks_size,
            "annotation_key": self.annotation_key,
            "robot_type": self.robot_type,
            "video": asdict(replace(self.video, threads=1)),
        }


@dataclass(frozen=True)
class Episode:
    """One demo's place in the dataset; all of it is known from HDF5 shapes before encoding."""

    episode_index: int
    demo: str
    source_frames: int
    length: int  # parquet rows = video frames = source_frames - 1
    first_index: int  # global `index` of its first row

    def entry(self) -> dict:
        return {
            "episode_index": self.episode_index,
            "demo": self.demo,
            "source_frames": self.source_frames,
            "length": self.length,
        }


@dataclass(frozen=True)
class EpisodeJob:
    settings: Settings
    embodiment: Embodiment
    episode: Episode
    root: Path


@dataclass
class Plan:
    settings: Settings
    embodiment: Embodiment
    episodes: list[Episode] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # failed demos left out


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None so that a flag given on the command line is known to override the YAML.
    parser.add_argument("--input", type=Path, help="Isaac Lab Mimic HDF5 file")
    parser.add_argument("--output", type=Path, help="dataset directory (or shard directory with --shard)")
    parser.add_argument("--config", type=Path, help="IsaacLab-Arena converter YAML (Gr00tDatasetConfig), unchanged")
    parser.add_argument("--shard", type=int, help="convert only episodes K, K+N, ... into a shard directory")
    parser.add_argument("--num-shards", type=int, help="N, with --shard")
    parser.add_argument(
        "--gather",
        type=Path,
        nargs="+",
        metavar="SHARD_DIR",
        help="combine shard directories into the dataset and write meta/",
    )
    # The conversion settings (posttrain.settings), without defaults here: a flag given on the command line
    # is then known to override the Arena YAML (resolve_settings).
    add_options(parser, ConvertSettings, with_defaults=False)
    parser.add_argument("--workers", type=int, help="encoder processes (default: all cores)")
    # several sources (posttrain.sources): a shard names its source, a gather without --input combines them
    parser.add_argument(
        "--source",
        metavar="NAME",
        help="with --shard: the name of the source this HDF5 is, recorded in shard.json for a "
        "gather of several sources (default: the HDF5 file's stem)",
    )
    parser.add_argument(
        "--source-instruction",
        action="append",
        metavar="NAME=TEXT",
        help="gather without --input: source NAME's language instruction, over the one its shards record (repeatable)",
    )
    parser.add_argument(
        "--source-task-index",
        action="append",
        metavar="NAME=N",
        help="gather without --input: source NAME's task index (default: sources with the same "
        "instruction share a task, the others are numbered in order; repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    if args.gather and args.input is None and args.config is None:
        from posttrain import sources  # a dataset from the shards of several sources

        sources.gather_sources(args)
        return 0
    if args.source_instruction or args.source_task_index:
        raise PosttrainError(
            "convert: --source-instruction and --source-task-index are for a gather of several "
            "sources (--gather without --input)"
        )
    if args.source is not None and args.shard is None:
        raise PosttrainError("convert: --source names the source of a shard: use it with --shard")
    settings, embodiment_spec, output = resolve_settings(args)
    if args.gather and args.shard is not None:
        raise PosttrainError("convert: --gather and --shard cannot be combined")
    if output is None:
        raise PosttrainError("convert: --output is required (or --config with data_root/hdf5_name)")

    sharded = args.shard is not None or args.num_shards is not None
    check_output(
        output,
        "convert-shard" if sharded and not args.gather else "dataset",
        inputs=[settings.input, *(args.gather or [])],
    )  # before any work; again when writing
    plan = validate_input(settings, embodiment_spec)  # raises before any output exists
    if args.gather:
        gather(plan, args.gather, output)
    elif sharded:
        shard, num_shards = args.shard, args.num_shards
        if shard is None or num_shards is None or num_shards < 1 or not 0 <= shard < num_shards:
            raise PosttrainError(f"convert: need 0 <= --shard < --num-shards, got {shard} and {num_shards}")
        convert_shard(plan, shard, num_shards, output, shard_source(args, plan))
    else:
        convert_whole(plan, output)
    return 0


def shard_source(args, plan: Plan) -> dict:
    """A shard's source, for a gather of several sources: its name, file, task (None where not given:
    the gather then names it) and its whole plan, so that the gather can check coverage without the HDF5."""
    given = args.config is not None  # an Arena YAML always carries a task
    return {
        "name": args.source or plan.settings.input.stem,
        "hdf5": str(plan.settings.input),
        "language_instruction": plan.settings.language_instruction
        if given or args.language_instruction is not None
        else None,
        "task_index": plan.settings.task_index if given or args.task_index is not None else None,
        "episodes": [e.entry() for e in plan.episodes],
        "skipped_demos": list(plan.skipped),
    }


def resolve_settings(args) -> tuple[Settings, str | Path | dict, Path | None]:
    """Defaults <- Arena YAML <- command-line flags. Returns settings, embodiment spec, output dir."""
    values = dict(
        DEFAULTS,
        cameras=None,
        input=None,
        output=None,
        annotation_key=None,
        robot_type=None,
        image_size=None,
        arena_names={},
    )
    if args.config is not None:
        values.update(arena_settings(args.config))
    flags = {
        "input": args.input,
        "output": args.output,
        "embodiment": args.embodiment,
        "language_instruction": args.language_instruction,
        "task_index": args.task_index,
        "fps": args.fps,
        "drop_frame": args.drop_frame,
        "state_key": args.state_key,
        "action_key": args.action_key,
        "chunks_size": args.chunks_size,
        "crf": args.crf,
        "gop": args.gop,
        "preset": args.preset,
        "failed_demos": args.failed_demos,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if args.camera:  # a dict: `--camera NAME=VIDEO_KEY`, repeatable
        values["cameras"] = args.camera
    if values["input"] is None:
        raise PosttrainError("convert: --input HDF5 is required (or --config ARENA_YAML)")
    for key in ("fps", "chunks_size"):
        if values[key] < 1:
            raise PosttrainError(f"convert: --{key.replace('_', '-')} must be >= 1, got {values[key]}")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    video = VideoSettings(crf=values["crf"], gop=values["gop"], preset=values["preset"], threads=1)
    check_video_settings(video, "convert: ")  # before any work: ffmpeg would only fail in the first worker
    settings = Settings(
        input=Path(values["input"]),
        language_instruction=values["language_instruction"],
        task_index=values["task_index"],
        fps=values["fps"],
        drop_frame=values["drop_frame"],
        state_key=values["state_key"],
        action_key=values["action_key"],
        cameras=values["cameras"],
        chunks_size=values["chunks_size"],
        video=video,
        annotation_key=values["annotation_key"],
        robot_type=values["robot_type"],
        image_size=values["image_size"],
        failed_demos=values["failed_demos"],
        workers=max(1, workers),
        arena_names=values["arena_names"],
        config=args.config,
    )
    output = values["output"]
    if output is None and args.config is not None:  # Arena's default: beside the HDF5
        output = settings.input.parent / settings.input.stem / "lerobot"
    output = Path(output) if output is not None else None
    return settings, values["embodiment"], output


# --- Arena YAML -----------------------------------------------------------------------------

# Every field of Arena's Gr00tDatasetConfig (both the data_root/hdf5_name and the newer
# hdf5_path/output_dir spellings). Fields we cannot honour are rejected unless they hold the
# value we produce anyway, so nothing in a YAML is ignored silently, except the ones Arena
# itself does not use (action_eef_name_sim, valid_lerobot, info_fname, info_template_path:
# our info.json is computed, not templated).
ARENA_KEYS = {
    "data_root",
    "hdf5_name",
    "hdf5_path",
    "output_dir",
    "language_instruction",
    "task_index",
    "state_name_sim",
    "action_name_sim",
    "pov_cam_name_sim",
    "left_eef_pos_name_sim",
    "left_eef_quat_name_sim",
    "right_eef_pos_name_sim",
    "right_eef_quat_name_sim",
    "teleop_base_height_command_name_sim",
    "teleop_navigate_command_name_sim",
    "teleop_torso_orientation_rpy_command_name_sim",
    "state_name_lerobot",
    "action_name_lerobot",
    "video_name_lerobot",
    "task_description_lerobot",
    "action_eef_name_sim",
    "valid_lerobot",
    "chunks_size",
    "fps",
    "data_path",
    "video_path",
    "modality_template_path",
    "info_template_path",
    "modality_fname",
    "episodes_fname",
    "tasks_fname",
    "info_fname",
    "policy_joints_config_path",
    "robot_type",
    "action_joints_config_path",
    "state_joints_config_path",
    "original_image_size",
    "target_image_size",
}
ARENA_FIXED = {  # key -> the only value we write (our output layout is fixed by lerobot.py)
    "state_name_lerobot": lerobot.STATE,
    "action_name_lerobot": lerobot.ACTION,
    "data_path": lerobot.DATA_PATH,
    "video_path": lerobot.VIDEO_PATH,
    "modality_fname": "modality.json",
    "episodes_fname": "episodes.jsonl",
    "tasks_fname": "tasks.jsonl",
}
# The G1 keys name HDF5 datasets of an embodiment's extra columns (config/embodiments/g1/embodiment.yaml,
# `arena:`); a key no column reads is an error (Embodiment.with_arena_names).
ARENA_G1_KEYS = (
    "left_eef_pos_name_sim",
    "left_eef_quat_name_sim",
    "right_eef_pos_name_sim",
    "right_eef_quat_name_sim",
    "teleop_base_height_command_name_sim",
    "teleop_navigate_command_name_sim",
    "teleop_torso_orientation_rpy_command_name_sim",
)
ARENA_EMBODIMENT_FILES = {  # YAML key -> argument of Embodiment.from_files
    "state_joints_config_path": "state_yaml",
    "action_joints_config_path": "action_yaml",
    "policy_joints_config_path": "policy_yaml",
    "modality_template_path": "modality_json",
}


def arena_settings(path: Path) -> dict:
    """Translate an Arena converter YAML into our settings.

    Relative paths are resolved against the YAML's directory first, then the current directory
    (Arena resolves them against its repo root, the cwd it must run in). Joint-map and modality
    paths that exist nowhere (the Arena repo is not here) fall back to the bundled embodiment of
    the same name: `.../embodiments/gr1/36dof_joint_space.yaml` -> config/embodiments/gr1/.
    The output defaults to `<data_root>/<hdf5 stem>/lerobot`, as in Arena. Resizing
    (`target_image_size` != `original_image_size`) is refused rather than done differently.
    """
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PosttrainError(f"{path}: cannot read YAML ({err})") from None
    if not isinstance(doc, dict):
        raise PosttrainError(f"{path}: expected a mapping of Gr00tDatasetConfig fields")
    for key in doc:
        if key not in ARENA_KEYS:
            raise PosttrainError(f"{path}: unknown key '{key}' (not a Gr00tDatasetConfig field)")
    for key, value in ARENA_FIXED.items():
        if key in doc and doc[key] != value:
            raise PosttrainError(f"{path}: {key}: {doc[key]!r} is not supported, only {value!r}")
    values: dict = {"arena_names": {key: str(doc[key]) for key in ARENA_G1_KEYS if doc.get(key) is not None}}

    base = Path(path).resolve().parent
    if doc.get("hdf5_path") is not None:
        values["input"] = resolve_path(base, doc["hdf5_path"])
    elif doc.get("hdf5_name") is not None:
        values["input"] = resolve_path(base, Path(doc.get("data_root", "/datasets/")) / doc["hdf5_name"])
    else:
        raise PosttrainError(f"{path}: hdf5_name (or hdf5_path) is required")
    if doc.get("output_dir") is not None:
        values["output"] = resolve_path(base, doc["output_dir"])

    simple = {"language_instruction": str, "task_index": int, "fps": int, "chunks_size": int}
    for key, cast in simple.items():
        if doc.get(key) is not None:
            values[key] = _cast(path, key, doc[key], cast)
    if doc.get("robot_type") is not None:
        values["robot_type"] = str(doc["robot_type"])
    if doc.get("task_description_lerobot") is not None:
        values["annotation_key"] = str(doc["task_description_lerobot"])
    values["state_key"] = "obs/" + str(doc.get("state_name_sim", "robot_joint_pos"))
    values["action_key"] = str(doc.get("action_name_sim", "processed_actions"))
    values["cameras"] = {
        str(doc.get("pov_cam_name_sim", "robot_head_cam")): str(
            doc.get("video_name_lerobot", "observation.images.ego_view")
        )
    }

    original = _image_size(path, doc, "original_image_size")
    target = _image_size(path, doc, "target_image_size")
    if target != original:
        raise PosttrainError(
            f"{path}: target_image_size {list(target)} != original_image_size {list(original)}: "
            "resizing is not supported (videos keep the camera resolution)"
        )
    values["image_size"] = original

    files = {}
    for key, argument in ARENA_EMBODIMENT_FILES.items():
        if doc.get(key) is None:
            raise PosttrainError(
                f"{path}: {key} is required (Arena's default points to a folder that no longer exists)"
            )
        files[argument] = resolve_embodiment_file(path, base, key, doc[key])
    files["description_yaml"] = description_beside(files["policy_yaml"])
    values["embodiment"] = files
    return values


def _cast(path, key, value, cast):
    try:
        return cast(value)
    except (TypeError, ValueError):
        raise PosttrainError(f"{path}: {key}: cannot read {value!r} as {cast.__name__}") from None


def _image_size(path, doc, key) -> tuple[int, int, int]:
    value = doc.get(key, (480, 640, 3))  # Arena's default
    try:
        size = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3:
        raise PosttrainError(f"{path}: {key}: expected [height, width, channels], got {value!r}")
    return size


def resolve_path(base: Path, value) -> Path:
    """An absolute path as is; a relative one against `base` if it exists there, else against the cwd."""
    value = Path(str(value))
    if value.is_absolute():
        return value
    return base / value if (base / value).exists() or not value.exists() else value.resolve()


def resolve_embodiment_file(path: Path, base: Path, key: str, value) -> Path:
    candidate = resolve_path(base, value)
    if candidate.is_file():
        return candidate
    bundled = EMBODIMENTS_DIR / Path(str(value)).parent.name / Path(str(value)).name
    if bundled.is_file():
        log.info("%s: %s %s not found; using the bundled %s", path, key, value, bundled)
        return bundled
    raise PosttrainError(f"{path}: {key}: {value} not found (relative to {base} or the current directory)")


def description_beside(policy_yaml: Path) -> Path | None:
    """Our embodiment.yaml (extra columns, ...) beside the policy joint map, else in the bundled
    embodiment of the same folder name (Arena's own folders have none), else None."""
    for folder in (policy_yaml.parent, EMBODIMENTS_DIR / policy_yaml.parent.name):
        if (folder / DESCRIPTION_YAML).is_file():
            return folder / DESCRIPTION_YAML
    return None


def load_embodiment_spec(spec) -> Embodiment:
    if isinstance(spec, dict):
        return Embodiment.from_files(**spec)
    return load_embodiment(spec)


# --- validation and plan --------------------------------------------------------------------


def validate_input(settings: Settings, embodiment_spec) -> Plan:
    """Check the whole HDF5 and compute every episode's length and global offset, writing nothing."""
    embodiment = load_embodiment_spec(embodiment_spec).with_arena_names(
        settings.arena_names, str(settings.config or "convert")
    )
    settings = settings.with_embodiment(embodiment)
    name = settings.input.name
    if settings.drop_frame not in ("first", "last"):
        raise PosttrainError(f"convert: --drop-frame must be first or last, got {settings.drop_frame!r}")
    short_keys = [key.rsplit(".", 1)[-1] for key in settings.cameras.values()]
    if len(set(short_keys)) != len(short_keys) or len(set(settings.cameras.values())) != len(short_keys):
        raise PosttrainError(
            f"convert: video keys must differ in their last part, got {list(settings.cameras.values())}"
        )
    if not settings.cameras:
        raise PosttrainError("convert: at least one camera is needed")

    plan = Plan(settings, embodiment)
    with MimicFile(settings.input) as mimic:
        demos, plan.skipped = select_demos(mimic, settings.failed_demos)
        lengths = mimic.check(
            settings.state_key,
            settings.action_key,
            list(settings.cameras),
            embodiment.sim_state_dims,
            embodiment.sim_action_dims,
            demos=demos,  # numeric order
            extra={p.key: p.width for c in embodiment.columns for p in c.parts},
        )
        if not lengths:
            raise PosttrainError(f"{name}: data: no demos")
        offset = 0
        frame_shapes: dict[str, tuple] = {}  # camera -> (H, W, 3) of the first demo
        for index, (demo, frames) in enumerate(lengths.items()):
            if frames < 2:  # one frame is dropped; an episode needs at least one row
                raise PosttrainError(f"{name}: data/{demo}: {frames} frame(s), need at least 2")
            for camera in settings.cameras:
                shape = tuple(mimic.camera_shape(demo, camera))[1:]
                check_camera_shape(name, demo, camera, shape, settings)
                first = frame_shapes.setdefault(camera, shape)
                if shape != first:  # one video feature per camera: every episode must match it
                    raise PosttrainError(
                        f"{name}: data/{demo}/camera_obs/{camera}: frame shape {list(shape)} "
                        f"differs from {list(first)} in data/{next(iter(lengths))}"
                    )
            plan.episodes.append(Episode(index, demo, frames, frames - 1, offset))
            offset += frames - 1
    log.info("%s: %d demos, %d frames, %d camera(s)", name, len(plan.episodes), offset, len(settings.cameras))
    return plan


def select_demos(mimic: MimicFile, policy: str) -> tuple[list[str], list[str]]:
    """(demos to convert, failed demos skipped) under --failed-demos skip | include | error."""
    if policy not in FAILED_DEMOS:
        raise PosttrainError(f"convert: --failed-demos must be one of {', '.join(FAILED_DEMOS)}, got {policy!r}")
    demos = mimic.demos
    failed = [demo for demo in demos if mimic.success(demo) is False]
    if not failed or policy == "include":
        return demos, []
    listed = ", ".join(failed[:10]) + (" ..." if len(failed) > 10 else "")
    if policy == "error":
        raise PosttrainError(
            f"{mimic.name}: data/{failed[0]}: attr success=False ({len(failed)} failed demo(s): "
            f"{listed}); convert.failed_demos (--failed-demos) skip leaves them out, include "
            "converts them"
        )
    if len(failed) == len(demos):
        raise PosttrainError(
            f"{mimic.name}: data: all {len(demos)} demos have success=False, nothing to convert "
            "(convert.failed_demos: include, or --failed-demos include, converts them anyway)"
        )
    log.warning(
        "%s: skipping %d failed demo(s) (attr success=False): %s (convert.failed_demos: skip; "
        "listed in meta/source.json)",
        mimic.name,
        len(failed),
        listed,
    )
    return [demo for demo in demos if demo not in failed], failed


def check_camera_shape(name: str, demo: str, camera: str, shape: tuple, settings: Settings) -> None:
    """`shape` is (H, W, 3); MimicFile.check has already required even sizes and uint8."""
    if settings.image_size is not None and shape != tuple(settings.image_size):
        raise PosttrainError(
            f"{name}: data/{demo}/camera_obs/{camera}: frame shape {list(shape)} != "
            f"original_image_size {list(settings.image_size)}"
        )


# --- conversion -----------------------------------------------------------------------------


def convert_whole(plan: Plan, output: Path) -> None:
    with atomic_directory(output, "dataset", inputs=[plan.settings.input]) as root:
        results: dict[int, dict] = {}
        with disk_full_report(plan.episodes, results, root, output):
            encode_episodes(plan, plan.episodes, root, results)
            write_meta(root, plan, [results[e.episode_index] for e in plan.episodes])
    log.info("wrote %s (%d episodes)", output, len(plan.episodes))


def convert_shard(plan: Plan, shard: int, num_shards: int, output: Path, source: dict) -> None:
    episodes = plan.episodes[shard::num_shards]
    with atomic_directory(output, "convert-shard", inputs=[plan.settings.input]) as root:
        results: dict[int, dict] = {}
        with disk_full_report(episodes, results, root, output):
            encode_episodes(plan, episodes, root, results)
        write_json_atomic(
            root / SHARD_FILE,
            {
                "shard": shard,
                "num_shards": num_shards,
                "settings": dict(plan.settings.source_fields(plan.embodiment), **plan.settings.output_fields()),
                "source": source,
                "modality": dataset_modality(plan.settings, plan.embodiment),
                "episodes": [dict(e.entry(), features=results[e.episode_index]) for e in episodes],
            },
        )
    log.info("wrote shard %d/%d to %s (%d episodes)", shard, num_shards, output, len(episodes))


def encode_episodes(plan: Plan, episodes: list[Episode], root: Path, results: dict[int, dict]) -> None:
    """Write each episode's parquet and videos under `root`; its info.json features go to `results`."""
    jobs = [EpisodeJob(plan.settings, plan.embodiment, episode, root) for episode in episodes]
    workers = min(plan.settings.workers, len(jobs))
    with tqdm(total=len(jobs), desc="convert", unit="episode") as progress:
        if workers <= 1:
            for job in jobs:
                results[job.episode.episode_index] = convert_episode(job)
                progress.update()
            return
        # fork: workers start at once, without re-importing numpy/h5py/pyarrow (no HDF5 file is open here)
        context = multiprocessing.get_context("fork")
        running = context.Array("i", max(e.episode_index for e in episodes) + 1, lock=False)  # episode -> pid
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(running, os.getpid())
        ) as pool:
            # longest first, so no long episode starts last while the other workers sit idle
            by_length = sorted(jobs, key=lambda job: -job.episode.length)
            futures = {pool.submit(_convert_in_worker, job): job for job in by_length}
            try:
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future].episode.episode_index] = future.result()
                    progress.update()
            except concurrent.futures.process.BrokenProcessPool:
                # The executor's own process table (private; best effort): after shutdown has
                # reaped every worker it tells the killed one from those the executor stopped.
                processes = getattr(pool, "_processes", None) or {}
                pool.shutdown(wait=True, cancel_futures=True)
                raise worker_died(processes, running, jobs, results) from None
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


# --- worker processes -----------------------------------------------------------------------

PR_SET_PDEATHSIG = 1  # linux/prctl.h
_running = None  # in a worker: the shared episode_index -> pid array of encode_episodes


def _init_worker(running, parent: int) -> None:
    global _running
    _running = running
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when the convert process dies, even by kill -9 (Linux), so
    no encoder is orphaned. Its ffmpeg then reads end-of-input and exits as well."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return
    prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _convert_in_worker(job: EpisodeJob) -> dict:
    _running[job.episode.episode_index] = os.getpid()  # so that the parent can name the episode if we die
    return convert_episode(job)


def worker_died(processes: dict, running, jobs: list[EpisodeJob], results: dict) -> PosttrainError:
    """One line for a worker that vanished (usually the OOM killer): which episode it was converting.
    `processes` (pid -> Process) tells the killed worker from those the executor stopped with
    SIGTERM afterwards; without it every unfinished episode is named."""
    codes = {pid: process.exitcode for pid, process in processes.items()}
    unfinished = [
        j.episode for j in jobs if running[j.episode.episode_index] and j.episode.episode_index not in results
    ]
    dead = [e for e in unfinished if codes.get(running[e.episode_index]) not in (None, -signal.SIGTERM)]
    named = dead or unfinished
    code = codes.get(running[named[0].episode_index]) if named else None
    if code is not None and code < 0 and -code in signal.valid_signals():
        how = f"killed by {signal.Signals(-code).name}"
    else:
        how = f"exit code {code}" if code is not None else "it vanished"
    what = " and ".join(f"episode {e.episode_index} ({e.demo})" for e in named) or "an episode"
    return PosttrainError(
        f"convert: an encoder worker died ({how}) while converting {what}: memory may be short "
        "(the kernel's OOM killer sends SIGKILL); rerun with fewer --workers or more memory"
    )


# --- disk space -----------------------------------------------------------------------------

FULL_MARGIN = 1 << 20  # bytes: a write failure with less than this free is taken as a full disk


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@contextlib.contextmanager
def disk_full_report(episodes: list[Episode], results: dict, root: Path, output: Path):
    """Turn a full disk (ENOSPC, a quota, or an ffmpeg that could not finish its file) into one line
    naming the output, the space that was free and about how much the output needs."""
    free = shutil.disk_usage(root).free
    try:
        yield
    except (OSError, PosttrainError) as err:
        code = getattr(err, "errno", None)
        if code not in (errno.ENOSPC, errno.EDQUOT) and shutil.disk_usage(root).free >= FULL_MARGIN:
            raise
        written, total = _size(root), sum(e.length for e in episodes)
        done = sum(e.length for e in episodes if e.episode_index in results)
        need = f"about {_human(written * total / done)}" if done else f"more than {_human(written)}"
        raise PosttrainError(
            f"{output}: no space left on the device: {_human(free)} was free there, the "
            f"output needs {need} ({len(results)} of {len(episodes)} episodes written); "
            "free some space or choose another --output"
        ) from None


def convert_episode(job: EpisodeJob) -> dict:
    """Parquet + one MP4 per camera for one demo (runs in a worker). Returns its info.json features."""
    settings, episode, embodiment = job.settings, job.episode, job.embodiment
    if not job.root.is_dir():  # the run was killed and its temp dir removed: do not recreate it
        raise PosttrainError(f"{job.root}: output directory vanished")
    data_path, video_paths = lerobot.episode_relpaths(
        episode.episode_index, settings.chunks_size, settings.cameras.values()
    )
    where = f"{settings.input.name}: data/{episode.demo}"
    # rows = steps that have an action: the last recorded step is dropped for state and action alike
    start, stop = (1, episode.source_frames) if settings.drop_frame == "first" else (0, episode.source_frames - 1)
    features = {}
    with MimicFile(settings.input) as mimic:
        state, action = mimic.read_state_action(episode.demo, settings.state_key, settings.action_key)
        table = lerobot.episode_columns(
            embodiment.remap_state(state[:-1]),
            embodiment.remap_action(action[:-1]),
            episode.episode_index,
            episode.first_index,
            settings.fps,
            settings.task_index,
            settings.annotation_key,
            extra=read_extra_columns(mimic, episode.demo, embodiment),
        )
        if table.num_rows != episode.length:
            raise PosttrainError(f"{where}: {table.num_rows} rows, expected {episode.length}")
        lerobot.write_table(job.root / data_path, table)
        for camera, key in settings.cameras.items():
            _, height, width, _ = mimic.camera_shape(episode.demo, camera)
            path = job.root / video_paths[key]
            path.parent.mkdir(parents=True, exist_ok=True)
            with VideoWriter(path, settings.fps, width, height, settings.video) as writer:
                for frames in mimic.iter_camera_frames(episode.demo, camera, start, stop, batch=FRAME_BATCH):
                    writer.write(frames)
            info = probe(path, count_frames=True)
            if info.num_frames != episode.length:
                raise PosttrainError(
                    f"{where}/camera_obs/{camera}: {video_paths[key]} has {info.num_frames} "
                    f"frames, expected {episode.length} (one per parquet row)"
                )
            features[key] = lerobot.video_feature(info.height, info.width, info.fps, info.codec, info.pix_fmt)
    names = {lerobot.STATE: list(embodiment.joint_names), lerobot.ACTION: list(embodiment.joint_names)}
    features.update(lerobot.tabular_features(table, names))
    return features


def read_extra_columns(mimic: MimicFile, demo: str, embodiment: Embodiment) -> dict:
    """The embodiment's extra columns of one demo: parts concatenated, rows [:-1] as for state and action."""
    return {
        column.name: np.concatenate(
            [mimic.read_matrix(demo, part.key, part.width)[:-1] for part in column.parts], axis=1
        ).astype(column.dtype)
        for column in embodiment.columns
    }


# --- gather and meta/ -----------------------------------------------------------------------


def gather(plan: Plan, shard_dirs: list[Path], output: Path) -> None:
    """Check that the shards cover every episode once and match this conversion, then assemble the dataset."""
    expected = dict(plan.settings.source_fields(plan.embodiment), **plan.settings.output_fields())
    wanted = {e.episode_index: e for e in plan.episodes}
    owner: dict[int, Path] = {}
    features: dict[int, dict] = {}
    for shard_dir in shard_dirs:
        manifest = lerobot.read_json(shard_dir / SHARD_FILE)
        for key, value in expected.items():
            if json.loads(json.dumps(manifest.get("settings", {}).get(key))) != json.loads(json.dumps(value)):
                raise PosttrainError(
                    f"{shard_dir / SHARD_FILE}: settings.{key} is "
                    f"{manifest.get('settings', {}).get(key)!r}, this gather has {value!r}"
                )
        for entry in manifest.get("episodes", []):
            index = entry.get("episode_index")
            episode = wanted.get(index)
            if episode is None or {k: entry.get(k) for k in episode.entry()} != episode.entry():
                raise PosttrainError(
                    f"{shard_dir / SHARD_FILE}: episode {index} ({entry.get('demo')}) does not "
                    f"match {plan.settings.input.name} (stale shard?)"
                )
            if index in owner:
                raise PosttrainError(
                    f"{shard_dir / SHARD_FILE}: episode {index} ({episode.demo}) is also in {owner[index]}"
                )
            if not isinstance(entry.get("features"), dict):
                raise PosttrainError(f"{shard_dir / SHARD_FILE}: episode {index} has no features")
            owner[index], features[index] = shard_dir, entry["features"]
    missing = [e for e in plan.episodes if e.episode_index not in owner]
    if missing:
        listed = ", ".join(f"{e.episode_index} ({e.demo})" for e in missing[:10])
        raise PosttrainError(
            f"convert --gather: shards miss {len(missing)} episode(s) of "
            f"{plan.settings.input.name}: {listed}{' ...' if len(missing) > 10 else ''}"
        )

    with atomic_directory(output, "dataset", inputs=[plan.settings.input, *shard_dirs]) as root:
        for episode in plan.episodes:
            data_path, video_paths = lerobot.episode_relpaths(
                episode.episode_index, plan.settings.chunks_size, plan.settings.cameras.values()
            )
            for relpath in [data_path, *video_paths.values()]:
                link_or_copy(owner[episode.episode_index] / relpath, root / relpath)
        write_meta(root, plan, [features[e.episode_index] for e in plan.episodes])
    log.info("gathered %d shards into %s (%d episodes)", len(shard_dirs), output, len(plan.episodes))


def link_or_copy(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise PosttrainError(f"{src}: missing shard file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, or no hardlinks there
        shutil.copyfile(src, dst)


def write_meta(root: Path, plan: Plan, episode_features: list[dict]) -> None:
    """meta/ of the finished dataset; every episode's features must agree with the first one's."""
    settings, embodiment = plan.settings, plan.embodiment
    check_features(
        [f"{settings.input.name}: data/{e.demo}: episode {e.episode_index}" for e in plan.episodes], episode_features
    )
    info = lerobot.build_info(
        robot_type=settings.robot_type or embodiment.name,
        episode_lengths=[e.length for e in plan.episodes],
        num_tasks=1,
        fps=settings.fps,
        chunks_size=settings.chunks_size,
        features=episode_features[0],
        video_keys=list(settings.cameras.values()),
    )
    source = dict(
        settings.source_fields(embodiment),
        skipped_demos=list(plan.skipped),
        episodes=[e.entry() for e in plan.episodes],
    )
    write_meta_files(
        root,
        info,
        [
            {"episode_index": e.episode_index, "tasks": [settings.language_instruction], "length": e.length}
            for e in plan.episodes
        ],
        [{"task_index": settings.task_index, "task": settings.language_instruction}],
        dataset_modality(settings, embodiment),
        source,
    )


def check_features(where: list[str], episode_features: list[dict]) -> None:
    """One video/column layout per dataset: every episode's info.json features must be the first one's
    (`where` names each episode in the error)."""
    first = episode_features[0]
    for name, features in zip(where, episode_features):
        if features != first:
            keys = sorted(k for k in set(first) | set(features) if first.get(k) != features.get(k))
            raise PosttrainError(f"{name} features {keys} differ from episode 0's")


def dataset_modality(settings: Settings, embodiment: Embodiment) -> dict:
    """meta/modality.json: the embodiment's, with this conversion's cameras."""
    modality = json.loads(json.dumps(embodiment.modality))
    modality["video"] = {key.rsplit(".", 1)[-1]: {"original_key": key} for key in settings.cameras.values()}
    return modality


def write_meta_files(
    root: Path, info: dict, episodes: list[dict], tasks: list[dict], modality: dict, source: dict
) -> None:
    meta = root / "meta"
    write_json_atomic(meta / "info.json", info, indent=4)
    write_text_atomic(meta / "episodes.jsonl", lerobot.jsonl(episodes))
    write_text_atomic(meta / "tasks.jsonl", lerobot.jsonl(tasks))
    write_json_atomic(meta / "modality.json", modality, indent=4)
    write_json_atomic(meta / "source.json", source)
