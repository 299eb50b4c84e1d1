"""`posttrain verify DATASET_DIR [--source HDF5] --output VERIFY_DIR`: is this dataset safe to train on?

Runs every check (it does not stop at the first failure), then writes the report:

- all passed: `VERIFY_DIR/report.json` ({"passed": true, ...}); a stale `report.failed.json` is removed.
- any failed: `VERIFY_DIR/report.failed.json` ({"passed": false, ...}) and NO `report.json` (a stale one
  is removed): the workflow's train rule needs report.json, so training never starts on a failed
  dataset. The command exits 2 with one line naming the first failed episode and check.

Checks (names as they appear in the report):
  info_totals      meta/info.json totals == files (episodes, frames, videos, chunks, tasks, split)
  episodes_jsonl   episode indices 0..N-1 in order, lengths >= 1
  parquet_rows     parquet rows == episodes.jsonl length
  columns          frame_index == 0..T-1, episode_index == the episode, task_index in tasks.jsonl
  timestamps       timestamp == frame_index / fps within 1e-4 s
  index            global `index` continuous across episodes
  finite           no NaN/inf in any numeric column
  video_frames     decoded frames == rows for every camera; size and fps == info.json
  stats_json       meta/stats.json == statistics recomputed from the parquet files (stale file caught)
  episodes_stats   meta/episodes_stats.jsonl line == recomputed per-episode stats of the numeric columns;
                   each camera's entry is checked for form (not re-decoded): (3, 1, 1) values in [0, 1],
                   min <= mean <= max, and the sample count lerobot's rule gives for the episode length
  relative_stats   meta/relative_stats.json (if present) == recomputed, groups and horizon from the file
  with --source (meta/source.json says which demo each episode came from and how):
  source_length    HDF5 demo length == source_frames == rows + 1
  source_state     observation.state == remapped HDF5 state[:-1] (float32, |diff| <= 1e-6)
  source_action    action == remapped HDF5 action[:-1]
  video_psnr       --sampled-frames evenly spaced decoded frames and their neighbours vs the HDF5
                   frames they show (frames[1:] for drop_frame "first", [:-1] for "last"), each HDF5
                   frame first converted to yuv420p and back as the encoder does it (chroma
                   subsampling is not a fault). Their pooled PSNR must reach --min-psnr-db, or, on
                   texture where x264 itself keeps less, ENCODER_MARGIN_DB below what x264 keeps of
                   the same HDF5 frames encoded again with the video's own settings (read from the
                   x264 record in the file); no single frame more than FRAME_SLACK_DB below that
  video_alignment  those frames do not match the HDF5 frame before or after their own better (pooled)
                   by more than ALIGNMENT_MARGIN_DB (catches an off-by-one frame shift, which smooth
                   footage passes at 35 dB; needs some motion in the sampled frames)
Memory: the numeric columns of all episodes as float32 (as `posttrain stats`), for the stats
recomputation; videos are decoded a few sampled frames at a time (3 x --sampled-frames per camera).
A per-episode check appears in the report once as a summary (episode null) plus once per failed
episode. Identical frames have infinite PSNR; they are reported as 100 dB (JSON has no infinity).

Previews a person looks at: preview/episode_XXXXXX_joints.png (state vs action, one subplot per
joint group) for the first --preview-episodes episodes, and preview/contact_sheet.png (rows =
episode × camera, columns = evenly spaced frames).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from posttrain import stats_math
from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, write_json_atomic
from posttrain.lerobot import LeRobotDataset, column_to_numpy, read_json, read_jsonl
from posttrain.settings import VerifySettings, add_options

if TYPE_CHECKING:
    from posttrain.video import VideoSettings

log = logging.getLogger(__name__)

TIMESTAMP_TOLERANCE_S = 1e-4
SOURCE_TOLERANCE = 1e-6
STATS_RTOL, STATS_ATOL = 1e-5, 1e-6
PSNR_CAP_DB = 100.0
# Pooled over the compared frames, a valid video keeps at most ~2.5 dB less than x264 keeps when it
# encodes the same HDF5 frames again (measured: noise, checkerboards, text, synthetic footage, presets
# ultrafast..slower, CRF 18-28); a wrong episode or a one-frame shift costs 10 dB or more.
ENCODER_MARGIN_DB = 4.0
# One frame may fall this far below the pooled threshold: I, P and B frames of one valid video, and
# frames of unequal texture, differ (measured: up to 5.5 dB on a checkerboard that changes colour
# every frame); a frame further down is damaged.
FRAME_SLACK_DB = 8.0
# A neighbouring HDF5 frame must match this much better (pooled) to call a shift: x264's skipped
# blocks repeat the previous frame, so a valid video can lean towards a neighbour by a few tenths
# of a dB (measured: up to 0.4); a real shift on moving footage costs several dB.
ALIGNMENT_MARGIN_DB = 1.0
CONTACT_SHEET_COLUMNS = 6
PREVIEW_SIZE = 160  # pixels, longest side of a contact sheet frame
REPORT, FAILED_REPORT = "report.json", "report.failed.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATASET_DIR", help="LeRobot v2.1 dataset directory")
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="HDF5 | NAME=HDF5",
        help="the Mimic HDF5 it was converted from (without it only internal checks run); for a "
        "dataset gathered from several sources, NAME=HDF5 once per source",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        metavar="VERIFY_DIR",
        help="where report.json (or report.failed.json) and preview/ are written",
    )
    add_options(parser, VerifySettings)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="episodes checked in parallel")


def run(args: argparse.Namespace) -> int:
    from posttrain.files import claim_directory

    source = parse_sources(args.source)
    files = list(source.values()) if isinstance(source, dict) else [source]
    claim_directory(args.output, "verify", inputs=[args.dataset, *files])  # only ever our own VERIFY_DIR
    report = verify(
        Path(args.dataset),
        args.output,
        source=source,
        min_psnr_db=args.min_psnr_db,
        sampled_frames=args.sampled_frames,
        preview_episodes=args.preview_episodes,
        workers=args.workers,
    )
    if not report["passed"]:
        failures = [c for c in report["checks"] if not c["passed"] and not c.get("summary")]
        first = failures[0]
        where = f"episode {first['episode']}: " if first["episode"] is not None else ""
        more = f"{len(failures) - 1} more failures, " if len(failures) > 1 else ""
        raise PosttrainError(
            f"verify {args.dataset}: FAILED: {where}{first['name']}: {first['detail']} "
            f"({more}see {args.output / FAILED_REPORT})"
        )
    return 0


def parse_sources(values: list[str] | None) -> Path | dict[str, Path] | None:
    """--source: one HDF5 path, or NAME=HDF5 per source of a dataset gathered from several (posttrain.sources)."""
    if not values:
        return None
    if len(values) == 1 and ("=" not in values[0] or Path(values[0]).exists()):
        return Path(values[0])
    sources = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PosttrainError(f"verify: --source {value!r}: with several sources, give NAME=HDF5 for each")
        if name in sources:
            raise PosttrainError(f"verify: --source {name} given twice")
        sources[name] = Path(path)
    return sources


# --- results -------------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    """Everything one episode's checks produced (computed in a worker thread)."""

    episode_index: int
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    numeric: dict[str, np.ndarray] | None = None  # (T, D) float32 columns, None when the parquet is unreadable
    episode_stats: dict[str, dict] | None = None  # lerobot per-episode stats from the stored dtypes
    psnr: list[float] = field(default_factory=list)  # per sampled frame and camera
    encoder_psnr: list[float] = field(default_factory=list)  # per camera: x264's own round trip
    thresholds: list[float] = field(default_factory=list)  # per camera: the video_psnr threshold used

    def check(self, name: str, passed: bool, detail: str = "ok") -> bool:
        self.checks.append((name, bool(passed), detail))
        return passed


class Report:
    def __init__(self):
        self.dataset_checks: list[dict] = []
        self.episode_failures: list[dict] = []
        self.episode_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # name -> [checked, failed]

    def dataset_check(self, name: str, passed: bool, detail: str = "ok") -> None:
        self.dataset_checks.append({"name": name, "episode": None, "passed": bool(passed), "detail": detail})

    def episode_check(self, name: str, episode: int, passed: bool, detail: str) -> None:
        counts = self.episode_counts[name]
        counts[0] += 1
        if not passed:
            counts[1] += 1
            self.episode_failures.append({"name": name, "episode": episode, "passed": False, "detail": detail})

    def checks(self) -> list[dict]:
        """Failures first, in the order found (dataset structure, episodes in order, stats), then summaries."""
        summaries = [
            {
                "name": name,
                "episode": None,
                "passed": failed == 0,
                "summary": True,
                "detail": f"{checked} episodes checked, {failed} failed",
            }
            for name, (checked, failed) in self.episode_counts.items()
        ]
        structure = [c for c in self.dataset_checks if c["name"] in ("info_totals", "episodes_jsonl")]
        later = [c for c in self.dataset_checks if c not in structure]
        ordered = structure + self.episode_failures + later
        return [c for c in ordered if not c["passed"]] + [c for c in ordered if c["passed"]] + summaries


# --- dataset-level structure ----------------------------------------------------------------------
def check_info_totals(dataset: LeRobotDataset, report: Report) -> None:
    info, root = dataset.info, dataset.root
    parquets = sorted(root.glob("data/*/*.parquet"))
    videos = sorted(root.glob("videos/*/*/*.mp4"))
    chunks = {p.parent.name for p in parquets}
    tasks = read_jsonl(root / "meta" / "tasks.jsonl")
    n = len(dataset.episodes)
    actual = {
        "total_episodes": (n, f"{n} lines in meta/episodes.jsonl"),
        "total_frames": (sum(e.get("length", 0) for e in dataset.episodes), "sum of episodes.jsonl lengths"),
        "total_videos": (len(videos), f"{len(videos)} mp4 files under videos/"),
        "total_chunks": (max(1, len(chunks)), f"{len(chunks)} chunk directories under data/"),
        "total_tasks": (len(tasks), f"{len(tasks)} lines in meta/tasks.jsonl"),
    }
    problems = [f"{key}={info.get(key)!r}, but {why}" for key, (value, why) in actual.items() if info.get(key) != value]
    if len(parquets) != n:
        problems.append(f"{len(parquets)} parquet files under data/, but {n} episodes")
    if n * len(dataset.video_keys) != len(videos):
        problems.append(f"{len(videos)} mp4 files, but {n} episodes × {len(dataset.video_keys)} cameras")
    if info.get("splits", {}).get("train") != f"0:{n}":
        problems.append(f"splits.train={info.get('splits', {}).get('train')!r}, expected '0:{n}'")
    report.dataset_check("info_totals", not problems, "; ".join(f"meta/info.json: {p}" for p in problems) or "ok")


def check_episodes_jsonl(dataset: LeRobotDataset, report: Report) -> bool:
    problems = []
    for position, episode in enumerate(dataset.episodes):
        if episode.get("episode_index") != position:
            problems.append(f"line {position + 1}: episode_index {episode.get('episode_index')!r}, expected {position}")
        elif not isinstance(episode.get("length"), int) or episode["length"] < 1:
            problems.append(f"episode {position}: length {episode.get('length')!r}")
    if not dataset.episodes:
        problems.append("no episodes")
    report.dataset_check(
        "episodes_jsonl", not problems, "; ".join(f"meta/episodes.jsonl: {p}" for p in problems[:5]) or "ok"
    )
    return not problems


# --- per-episode checks ---------------------------------------------------------------------------
@dataclass
class Context:
    dataset: LeRobotDataset
    first_index: dict[int, int]
    task_indices: set[int]
    source: SourceCheck | None
    sampled_frames: int
    min_psnr_db: float


def check_episode(ctx: Context, episode: dict) -> EpisodeResult:
    dataset, ep, length = ctx.dataset, episode["episode_index"], episode["length"]
    result = EpisodeResult(ep)
    path = dataset.parquet_path(ep)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        result.check("parquet_rows", False, f"{path.relative_to(dataset.root)}: unreadable ({err})")
        return result
    if not result.check(
        "parquet_rows", table.num_rows == length, f"{table.num_rows} parquet rows, meta/episodes.jsonl length {length}"
    ):
        return result
    numeric = {name: column_to_numpy(table.column(name)) for name in stats_math.numeric_columns(table.schema)}
    check_columns(ctx, result, numeric, length)
    check_finite(result, numeric)
    check_videos(ctx, result, length)
    if ctx.source is not None:
        ctx.source.check_episode(ctx, result, numeric, length)
    # kept for the stats checks: per-episode stats now, values as float32 (what the global stats use)
    result.episode_stats = {name: stats_math.episode_stats(values) for name, values in numeric.items()}
    result.numeric = {name: stats_math.as_2d_float32(values) for name, values in numeric.items()}
    return result


def check_columns(ctx: Context, result: EpisodeResult, numeric: dict[str, np.ndarray], length: int) -> None:
    ep, fps = result.episode_index, ctx.dataset.fps
    missing = [c for c in ("frame_index", "episode_index", "task_index", "index", "timestamp") if c not in numeric]
    if missing:
        result.check("columns", False, f"parquet columns missing: {missing}")
        return
    frame_index = numeric["frame_index"]
    problems = []
    if not np.array_equal(frame_index, np.arange(length)):
        bad_row = first_mismatch(frame_index, np.arange(length))
        problems.append(f"frame_index is not 0..{length - 1} (first bad row {bad_row})")
    if not (numeric["episode_index"] == ep).all():
        problems.append(f"episode_index column holds {sorted(set(numeric['episode_index'].tolist()))[:5]}")
    bad_tasks = set(numeric["task_index"].tolist()) - ctx.task_indices
    if bad_tasks:
        problems.append(f"task_index {sorted(bad_tasks)[:5]} not in meta/tasks.jsonl")
    result.check("columns", not problems, "; ".join(problems) or "ok")

    error = np.abs(numeric["timestamp"].astype(np.float64) - np.arange(length) / fps)
    worst = int(np.argmax(error)) if length else 0
    result.check(
        "timestamps",
        not length or error[worst] <= TIMESTAMP_TOLERANCE_S,
        f"frame {worst}: timestamp {float(numeric['timestamp'][worst]):.6f} s, expected "
        f"{worst / fps:.6f} s (frame_index / fps {fps})"
        if length
        else "ok",
    )

    expected = ctx.first_index[ep] + np.arange(length)
    row = first_mismatch(numeric["index"], expected)
    if row < length:
        result.check(
            "index",
            False,
            f"index column at row {row} is {numeric['index'][row]}, expected "
            f"{expected[row]} (continuous across episodes)",
        )
    else:
        result.check("index", True)


def first_mismatch(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    bad = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(bad[0]) if len(bad) else n


def check_finite(result: EpisodeResult, numeric: dict[str, np.ndarray]) -> None:
    problems = []
    for name, values in numeric.items():
        if values.dtype == np.bool_:
            continue
        bad = ~np.isfinite(values)
        if bad.any():
            problems.append(f"{name}: {int(bad.sum())} non-finite values, first at row {int(np.argwhere(bad)[0][0])}")
    result.check("finite", not problems, "; ".join(problems) or "ok")


def check_videos(ctx: Context, result: EpisodeResult, length: int) -> None:
    from posttrain.video import probe

    dataset, ep = ctx.dataset, result.episode_index
    problems = []
    for key in dataset.video_keys:
        path = dataset.video_path(ep, key)
        try:
            info = probe(path, count_frames=True)
        except PosttrainError as err:
            problems.append(str(err))
            continue
        rel = path.relative_to(dataset.root)
        if info.num_frames != length:
            problems.append(f"{key}: {rel} has {info.num_frames} frames, the parquet {length} rows")
        height, width = dataset.info["features"][key]["shape"][:2]
        if (info.height, info.width) != (height, width):
            problems.append(f"{key}: {rel} is {info.width}x{info.height}, info.json says {width}x{height}")
        if abs(info.fps - dataset.fps) > 1e-3:
            problems.append(f"{key}: {rel} is {info.fps} fps, info.json says {dataset.fps}")
    result.check("video_frames", not problems, "; ".join(problems) or "ok")


class SourceCheck:
    """Compare episodes with the HDF5 demos they came from (meta/source.json)."""

    def __init__(self, dataset: LeRobotDataset, hdf5: Path | dict[str, Path]):
        from posttrain.embodiment import load_embodiment
        from posttrain.mimic import MimicFile

        path = dataset.root / "meta" / "source.json"
        if not path.is_file():
            raise PosttrainError(f"{path}: missing; --source needs it to know which demo each episode came from")
        self.source = read_json(path)
        for key in ("embodiment", "state_key", "action_key", "drop_frame", "cameras", "episodes"):
            if key not in self.source:
                raise PosttrainError(f"{path}: key {key!r} missing")
        if self.source["drop_frame"] not in ("first", "last"):
            raise PosttrainError(f"{path}: drop_frame {self.source['drop_frame']!r}, expected first or last")
        self.embodiment = load_embodiment(self.source["embodiment"])
        # episode entries name their source when the dataset was gathered from several (None: one source)
        self.mimics = {name: MimicFile(file) for name, file in source_files(path, self.source, hdf5).items()}
        self.entries = {e["episode_index"]: e for e in self.source["episodes"]}

    def close(self) -> None:
        for mimic in self.mimics.values():
            mimic.close()

    def check_episode(self, ctx: Context, result: EpisodeResult, numeric: dict[str, np.ndarray], length: int):
        ep, src = result.episode_index, self.source
        entry = self.entries.get(ep)
        if entry is None:
            result.check("source_length", False, "episode not listed in meta/source.json")
            return
        demo, mimic = entry["demo"], self.mimics.get(entry.get("source"))
        if mimic is None:
            result.check("source_length", False, f"{demo}: source {entry.get('source')!r} not given (--source)")
            return
        try:
            frames = mimic.length(demo, src["action_key"])
        except PosttrainError as err:
            result.check("source_length", False, str(err))
            return
        if not result.check(
            "source_length",
            frames == entry["source_frames"] == length + 1,
            f"{demo}: HDF5 has {frames} steps, source.json source_frames "
            f"{entry['source_frames']}, parquet {length} rows (expected rows + 1)",
        ):
            return
        try:
            state, action = mimic.read_state_action(demo, src["state_key"], src["action_key"])
            expected = {
                "observation.state": self.embodiment.remap_state(state[:-1]),
                "action": self.embodiment.remap_action(action[:-1]),
            }
        except PosttrainError as err:
            result.check("source_state", False, f"{demo}: {err}")
            return
        for name, check in (("observation.state", "source_state"), ("action", "source_action")):
            stored = numeric.get(name)
            if stored is None or stored.shape != expected[name].shape:
                result.check(
                    check,
                    False,
                    f"{name}: shape {None if stored is None else stored.shape}, HDF5 "
                    f"{demo} remapped {expected[name].shape}",
                )
                continue
            diff = np.abs(stored.astype(np.float64) - expected[name])
            row, col = np.unravel_index(int(np.argmax(diff)), diff.shape)
            joint = self.embodiment.joint_names[col] if col < len(self.embodiment.joint_names) else col
            result.check(
                check,
                diff[row, col] <= SOURCE_TOLERANCE,
                f"{name} differs from {src['state_key' if check == 'source_state' else 'action_key']} "
                f"of {demo} by {diff[row, col]:.3g} at frame {row}, joint {joint}",
            )
        self.check_psnr(ctx, result, mimic, demo, length)

    def check_psnr(self, ctx: Context, result: EpisodeResult, mimic, demo: str, length: int) -> None:
        """Sampled decoded frames against their HDF5 frames: close enough, and not one frame off."""
        from posttrain.video import VideoSettings, read_frames_at, x264_settings

        drop_frame = self.source["drop_frame"]
        offset = 1 if drop_frame == "first" else 0  # video frame v shows HDF5 frame v + offset
        video, hdf5 = sample_windows(length, ctx.sampled_frames, offset)
        psnr_problems, alignment_problems = [], []
        for camera, key in self.source["cameras"].items():
            path = ctx.dataset.video_path(result.episode_index, key)
            where = f"{demo} camera_obs/{camera}"
            try:
                decoded = read_frames_at(path, video)
                source = np.concatenate(
                    [
                        frames
                        for start, stop in runs(hdf5)
                        for frames in mimic.iter_camera_frames(demo, camera, start, stop)
                    ]
                )
                if source.shape[1:] != decoded.shape[1:]:
                    raise PosttrainError(f"{key}: frames are {decoded.shape[1:]}, {where} {source.shape[1:]}")
                settings = x264_settings(path) or VideoSettings()  # the project's encoder when x264 left no record
                found = compare_frames(decoded, [v + offset for v in video], source, hdf5, ctx.dataset.fps, settings)
            except PosttrainError as err:
                psnr_problems.append(str(err))
                continue
            result.psnr += found.psnr
            result.encoder_psnr.append(found.encoder_db)
            threshold = min(ctx.min_psnr_db, found.encoder_db - ENCODER_MARGIN_DB)
            result.thresholds.append(threshold)
            k = int(np.argmin(found.psnr))
            bar = (
                f"the lower of verify.min_psnr_db ({ctx.min_psnr_db:g}) and {ENCODER_MARGIN_DB:g} dB below what "
                f"x264 (crf {settings.crf}, {settings.preset}) itself keeps of these frames "
                f"({found.encoder_db:.1f} dB)"
            )
            if found.pooled_db < threshold:
                psnr_problems.append(
                    f"{key}: {len(video)} frames around {ctx.sampled_frames} samples (verify.sampled_frames) vs "
                    f"{where}: PSNR {found.pooled_db:.1f} dB < {threshold:.1f} dB, {bar}; worst: frame {video[k]}, "
                    f"{found.psnr[k]:.1f} dB: the wrong episode, or damaged frames?"
                )
            elif found.psnr[k] < threshold - FRAME_SLACK_DB:
                psnr_problems.append(
                    f"{key}: frame {video[k]} vs {where} frame {video[k] + offset}: PSNR {found.psnr[k]:.1f} dB < "
                    f"{threshold - FRAME_SLACK_DB:.1f} dB, {FRAME_SLACK_DB:g} dB below {threshold:.1f} dB, {bar}: "
                    f"a damaged frame?"
                )
            if found.by_shift:
                best = max(found.by_shift, key=found.by_shift.get)
                if found.by_shift[best] > found.by_shift[0] + ALIGNMENT_MARGIN_DB:
                    alignment_problems.append(
                        f"{key}: over {found.aligned_frames} frames around the samples (verify.sampled_frames), "
                        f"video frame j matches {where} frame j{offset + best:+d} ({found.by_shift[best]:.1f} dB) "
                        f"better than frame j{offset:+d} ({found.by_shift[0]:.1f} dB) by more than "
                        f"{ALIGNMENT_MARGIN_DB:g} dB: wrong drop_frame {drop_frame!r} (convert.drop_frame) in "
                        f"meta/source.json?"
                    )
        # alignment first: a shift fails both, and the one-line error should name the likelier cause
        result.check("video_alignment", not alignment_problems, "; ".join(alignment_problems) or "ok")
        result.check("video_psnr", not psnr_problems, "; ".join(psnr_problems) or "ok")


def source_files(path: Path, source: dict, hdf5: Path | dict[str, Path]) -> dict[str | None, Path]:
    """The HDF5 file of each source named in source.json (`path`): {None: hdf5} for a dataset of one source."""
    names = [block.get("name") for block in source.get("sources", [])]
    if not names:
        if isinstance(hdf5, dict):
            raise PosttrainError(f"{path}: the dataset has one source: give --source HDF5, not NAME=HDF5")
        if source.get("hdf5") and source["hdf5"] != hdf5.name:
            log.warning("%s: converted from %r, verifying against %s", path, source["hdf5"], hdf5)
        return {None: hdf5}
    if not isinstance(hdf5, dict) or sorted(hdf5) != sorted(names):
        given = ", ".join(sorted(hdf5)) if isinstance(hdf5, dict) else str(hdf5)
        raise PosttrainError(
            f"{path}: gathered from sources {', '.join(names)}: give --source NAME=HDF5 for each (given: {given})"
        )
    return dict(hdf5)


def sample_windows(length: int, sampled_frames: int, offset: int) -> tuple[list[int], list[int]]:
    """Video frames to compare (evenly spaced samples and their neighbours) and the HDF5 frames to read.

    Video frame v shows HDF5 frame v + offset; its HDF5 neighbours are read too, for the shift
    check. Consecutive frames, as in the video, let the encoder round trip code them as it did there.
    """
    samples = np.unique(np.linspace(0, length - 1, max(1, sampled_frames)).round().astype(int))
    video = sorted({int(v) for j in samples for v in (j - 1, j, j + 1) if 0 <= v < length})
    hdf5 = sorted({h for v in video for h in (v + offset - 1, v + offset, v + offset + 1) if 0 <= h <= length})
    return video, hdf5


def runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as [start, stop) runs of consecutive values."""
    out = []
    for i in indices:
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


@dataclass
class FrameComparison:
    psnr: list[float]  # each decoded frame vs its own HDF5 frame after the yuv420p round trip
    pooled_db: float  # the same, one MSE over all of them
    encoder_db: float  # x264's own round trip of those HDF5 frames, pooled
    by_shift: dict[int, float]  # pooled PSNR vs HDF5 frame -1, 0, +1 ({} when no frame has both neighbours)
    aligned_frames: int  # frames in by_shift


def compare_frames(
    decoded: np.ndarray,
    shown: list[int],
    source: np.ndarray,
    source_frames: list[int],
    fps: int,
    settings: VideoSettings,
) -> FrameComparison:
    """Compare decoded frames with the HDF5 frames they show (`shown`; `source` holds HDF5 frames `source_frames`).

    The reference is the HDF5 frame converted to yuv420p and back as the encoder and decoder do
    it, so the chroma subsampling, which alone costs fine colour texture 8-13 dB, is not counted
    as a fault. What x264 loses on top depends on the texture (about 45 dB on smooth footage, 26
    dB on colour noise at CRF 18), so the same HDF5 frames are encoded again with the video's own
    settings to learn what a correct conversion keeps. Pooled PSNRs (one MSE over all frames) are
    compared, because I, P and B frames of one valid video differ by several dB.
    """
    from posttrain.video import encoder_round_trip, yuv420p_round_trip

    position = {h: i for i, h in enumerate(source_frames)}
    own = np.array([position[h] for h in shown])
    reference = yuv420p_round_trip(source)
    mse = frame_mse(decoded, reference[own])
    encoder_mse = frame_mse(encoder_round_trip(source[own], fps, settings), reference[own])
    inner = [k for k, h in enumerate(shown) if h - 1 in position and h + 1 in position]  # both neighbours read
    by_shift = {}
    if inner:
        by_shift[0] = psnr_db(mse[inner].mean())
        for shift in (-1, 1):
            by_shift[shift] = psnr_db(frame_mse(decoded[inner], reference[own[inner] + shift]).mean())
    return FrameComparison(
        psnr=[psnr_db(m) for m in mse],
        pooled_db=psnr_db(mse.mean()),
        encoder_db=psnr_db(encoder_mse.mean()),
        by_shift=by_shift,
        aligned_frames=len(inner),
    )


def frame_mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean squared error of each pair of (N, H, W, 3) uint8 frames (integer sums: 10x faster than float64)."""
    diff = np.subtract(a, b, dtype=np.int16)
    return np.einsum("nhwc,nhwc->n", diff, diff, dtype=np.int64) / diff[0].size


def psnr_db(mse: float) -> float:
    """PSNR of a mean squared error; identical frames give PSNR_CAP_DB (JSON has no infinity)."""
    return float(min(PSNR_CAP_DB, 10 * np.log10(255.0**2 / mse))) if mse > 0 else PSNR_CAP_DB


# --- stats ----------------------------------------------------------------------------------------
def episode_stats_diff(stored, recomputed: dict, cameras: list[str], length: int) -> str | None:
    """One episodes_stats.jsonl line against the recomputed numeric stats; camera entries are checked
    for form only (decoding the sampled frames again would double the stats stage's cost)."""
    if not isinstance(stored, dict):
        return "stats: expected an object"
    for key in cameras:
        problem = (
            "missing (rerun `posttrain stats`)"
            if key not in stored
            else stats_math.check_image_stats(stored[key], length)
        )
        if problem:
            return f"{key}: {problem}"
    columns = {key: value for key, value in stored.items() if key not in cameras}
    return stats_math.compare_stats(columns, recomputed, rtol=1e-7, atol=1e-9)


def check_stats(dataset: LeRobotDataset, results: list[EpisodeResult], report: Report) -> None:
    unreadable = [r.episode_index for r in results if r.numeric is None]
    if unreadable:
        for name in ("stats_json", "episodes_stats"):
            report.dataset_check(name, False, f"cannot recompute: episode(s) {unreadable[:5]} unreadable")
        return
    meta = dataset.root / "meta"
    # episodes_stats.jsonl: line by line
    path = meta / "episodes_stats.jsonl"
    if not path.is_file():
        report.dataset_check("episodes_stats", False, "meta/episodes_stats.jsonl missing (run `posttrain stats`)")
    else:
        stored = {line.get("episode_index"): line.get("stats") for line in read_jsonl(path)}
        lengths = {e["episode_index"]: e["length"] for e in dataset.episodes}
        problems = 0
        for r in results:
            diff = (
                "line missing"
                if r.episode_index not in stored
                else episode_stats_diff(
                    stored[r.episode_index], r.episode_stats, dataset.video_keys, lengths[r.episode_index]
                )
            )
            report.episode_check("episodes_stats", r.episode_index, diff is None, f"meta/episodes_stats.jsonl: {diff}")
            problems += diff is not None
        extra = set(stored) - {r.episode_index for r in results}
        if extra:
            report.dataset_check(
                "episodes_stats", False, f"meta/episodes_stats.jsonl: lines for unknown episodes {sorted(extra)[:5]}"
            )

    widths = {name: values.shape[1] for name, values in results[0].numeric.items()}
    for r in results:
        if {name: values.shape[1] for name, values in r.numeric.items()} != widths:
            report.dataset_check(
                "stats_json",
                False,
                f"cannot recompute: episode {r.episode_index} has other numeric "
                f"columns or widths than episode {results[0].episode_index}",
            )
            return
    columns = {name: np.concatenate([r.numeric.pop(name) for r in results]) for name in widths}
    path = meta / "stats.json"
    if not path.is_file():
        report.dataset_check("stats_json", False, "meta/stats.json missing (run `posttrain stats`)")
    else:
        recomputed = {name: stats_math.feature_stats(values) for name, values in columns.items()}
        diff = stats_math.compare_stats(read_json(path), recomputed, STATS_RTOL, STATS_ATOL)
        report.dataset_check(
            "stats_json", diff is None, f"meta/stats.json: {diff} (stale? rerun `posttrain stats`)" if diff else "ok"
        )

    path = meta / "relative_stats.json"
    if path.is_file():
        report.dataset_check("relative_stats", *check_relative_stats(dataset, columns, read_json(path)))


def check_relative_stats(dataset: LeRobotDataset, columns: dict[str, np.ndarray], stored: dict) -> tuple[bool, str]:
    state = {g.name: g for g in dataset.groups("state")}
    action = {g.name: g for g in dataset.groups("action")}
    lengths = [e["length"] for e in dataset.episodes]
    for name, stats in stored.items():
        if name not in state or name not in action:
            return False, f"meta/relative_stats.json: group {name!r} is not both a state and an action group"
        s, a = state[name], action[name]
        try:
            horizon = len(stats["mean"])
            recomputed = stats_math.relative_stats(
                columns[s.column][:, s.start : s.end], columns[a.column][:, a.start : a.end], lengths, horizon
            )
        except (KeyError, TypeError, ValueError) as err:
            return False, f"meta/relative_stats.json: group {name!r}: cannot recompute ({err})"
        diff = stats_math.compare_stats(stats, recomputed, STATS_RTOL, STATS_ATOL, path=name)
        if diff:
            return False, f"meta/relative_stats.json: {diff} (stale? rerun `posttrain stats`)"
    return True, f"groups {list(stored)} ok"


# --- previews -------------------------------------------------------------------------------------
def write_previews(dataset: LeRobotDataset, results: list[EpisodeResult], output: Path, count: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # imageio-ffmpeg warns whenever ffmpeg scales while decoding, which is what we ask for here
    logging.getLogger("imageio_ffmpeg").setLevel(logging.ERROR)

    chosen = [r for r in results if r.numeric is not None][: max(0, count)]
    names = []
    with atomic_directory(output / "preview") as tmp:
        state_groups = {g.name: g for g in dataset.groups("state")}
        for r in chosen:
            groups = [(g, state_groups.get(g.name)) for g in dataset.groups("action")]
            fig, axes = plt.subplots(len(groups), 1, figsize=(10, 2.4 * len(groups)), sharex=True, squeeze=False)
            t = np.arange(len(r.numeric["action"])) / dataset.fps
            for ax, (a_group, s_group) in zip(axes[:, 0], groups):
                colors = plt.cm.tab10(np.arange(a_group.dims) % 10)
                for d in range(a_group.dims):
                    if s_group is not None:
                        ax.plot(t, r.numeric[s_group.column][:, s_group.start + d], color=colors[d], lw=1)
                    ax.plot(t, r.numeric[a_group.column][:, a_group.start + d], color=colors[d], lw=1, ls="--")
                ax.set_ylabel(f"{a_group.name}\n[rad]")
            axes[0, 0].set_title(f"episode {r.episode_index}: state (solid) vs action (dashed)")
            axes[-1, 0].set_xlabel("time [s]")
            fig.tight_layout()
            name = f"episode_{r.episode_index:06d}_joints.png"
            fig.savefig(tmp / name, dpi=80)
            plt.close(fig)
            names.append(name)

        rows = [(r, key) for r in chosen for key in dataset.video_keys]
        if rows:
            fig, axes = plt.subplots(
                len(rows), CONTACT_SHEET_COLUMNS, squeeze=False, figsize=(1.8 * CONTACT_SHEET_COLUMNS, 1.9 * len(rows))
            )
            for (r, key), row_axes in zip(rows, axes):
                height, width = dataset.info["features"][key]["shape"][:2]
                scale = min(1.0, PREVIEW_SIZE / max(height, width))  # decode small: big episodes stay cheap
                size = (2 * round(width * scale / 2), 2 * round(height * scale / 2)) if scale < 1 else None
                frames = dataset.read_video(r.episode_index, key, size=size)
                picks = np.linspace(0, max(len(frames) - 1, 0), CONTACT_SHEET_COLUMNS).round().astype(int)
                for ax, j in zip(row_axes, picks):
                    ax.axis("off")
                    if j < len(frames):
                        ax.imshow(frames[j])
                        ax.set_title(f"ep {r.episode_index} t={j / dataset.fps:.2f}s", fontsize=7)
                row_axes[0].text(
                    -0.1,
                    0.5,
                    key.rsplit(".", 1)[-1],
                    transform=row_axes[0].transAxes,
                    rotation=90,
                    va="center",
                    ha="right",
                    fontsize=7,
                )
            fig.tight_layout()
            fig.savefig(tmp / "contact_sheet.png", dpi=80)
            plt.close(fig)
            names.append("contact_sheet.png")
    return [f"preview/{n}" for n in names]


# --- the stage ------------------------------------------------------------------------------------
def verify(
    root: Path,
    output: Path,
    source: Path | dict[str, Path] | None = None,
    min_psnr_db: float = 35.0,
    sampled_frames: int = 8,
    preview_episodes: int = 2,
    workers: int = 1,
) -> dict:
    output = Path(output)
    (output / REPORT).unlink(missing_ok=True)  # a bad-input error below must not leave an old pass behind
    dataset = LeRobotDataset(root)
    report = Report()
    check_info_totals(dataset, report)
    if not check_episodes_jsonl(dataset, report):
        episodes = []  # positions and indices disagree: per-episode checks would point at the wrong files
    else:
        episodes = dataset.episodes
    first_index, offset = {}, 0
    for e in episodes:
        first_index[e["episode_index"]], offset = offset, offset + e["length"]
    tasks = {row.get("task_index") for row in read_jsonl(dataset.root / "meta" / "tasks.jsonl")}
    source_check = (
        SourceCheck(dataset, source if isinstance(source, dict) else Path(source)) if source is not None else None
    )
    ctx = Context(dataset, first_index, tasks, source_check, sampled_frames, min_psnr_db)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:  # ffmpeg subprocesses and arrow reads run in parallel
            results = list(
                tqdm(pool.map(lambda e: check_episode(ctx, e), episodes), total=len(episodes), desc="verify", unit="ep")
            )
    finally:
        if source_check is not None:
            source_check.close()
    for r in results:
        for name, passed, detail in r.checks:
            report.episode_check(name, r.episode_index, passed, detail)
    try:
        previews = write_previews(dataset, results, output, preview_episodes)
    except (PosttrainError, OSError, ValueError, KeyError, RuntimeError) as err:
        report.dataset_check("preview", False, f"previews not written: {err}")
        previews = []
    if results:
        check_stats(dataset, results, report)  # last: it frees the per-episode columns as it goes
    else:
        report.dataset_check("stats_json", False, "not recomputed: no episode could be checked")

    psnr = [v for r in results for v in r.psnr]
    thresholds = [v for r in results for v in r.thresholds]  # set wherever psnr is
    encoder = [v for r in results for v in r.encoder_psnr]
    checks = report.checks()
    passed = all(c["passed"] for c in checks)
    document = {
        "passed": passed,
        "dataset": str(root),
        "source": (
            {name: str(path) for name, path in source.items()}
            if isinstance(source, dict)
            else str(source)
            if source is not None
            else None
        ),
        "episodes": len(dataset.episodes),
        "frames": sum(e.get("length", 0) for e in dataset.episodes),
        "failures": sum(1 for c in checks if not c["passed"] and not c.get("summary")),
        "checks": checks,
        "psnr_db": (
            {
                "min": min(psnr),
                "mean": float(np.mean(psnr)),
                "frames_compared": len(psnr),
                "reference": "HDF5 frame through rgb24 -> yuv420p -> rgb24",
                "threshold": min_psnr_db,
                "threshold_min": min(thresholds),
                "encoder_min": min(encoder),
            }
            if psnr
            else None
        ),
        "preview": previews,
    }
    keep, drop = (REPORT, FAILED_REPORT) if passed else (FAILED_REPORT, REPORT)
    (output / drop).unlink(missing_ok=True)  # never leave a stale report.json next to a failure
    write_json_atomic(output / keep, document)
    log.info("%s: %s (%d failures)", output / keep, "PASSED" if passed else "FAILED", document["failures"])
    return document
