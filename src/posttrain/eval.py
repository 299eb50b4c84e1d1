"""Open-loop evaluation of a native checkpoint on the held-out episodes of its dataset.

For every start step i of each held-out episode with a full chunk (i <= len - H, every
`--stride`-th step) the policy predicts an H-step action chunk from the camera frames at i, the
raw state at i and the task text; the chunk is compared with the recorded actions i..i+H-1.
Errors are reported per horizon step, per action group (modality.json) and overall, in raw
(unnormalised) units, next to two baselines that need no model:

- mean action: the mean action over the TRAIN episodes' frames (split.json), constant in time;
- hold state: repeat the state at i for all H steps (state and action share the 26-D layout).

The verdict (metrics["verdict"]) compares them: the policy beats a baseline when policy MSE /
baseline MSE < 1, strictly (a tie is no win: a policy that only matches holding the state is not
worth deploying), overall and per horizon step and action group. Losing is logged as a warning
and reported, never an error: the numbers are still worth having.

Outputs (written to a temporary directory, then renamed): metrics.json, trajectories.png
(recorded vs predicted per group, first step of each chunk), horizon_error.png (MSE per
horizon step, policy vs baselines).

GR00T checkpoints (processor_config.json / experiment_cfg/) are not evaluated here: they need
Isaac-GR00T's own loader, so the error prints the `gr00t/eval/open_loop_eval.py` command.
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from posttrain.errors import PosttrainError
from posttrain.files import atomic_directory, write_json_atomic
from posttrain.frames import decode_camera
from posttrain.layout import dataset_layouts, group_columns
from posttrain.lerobot import LeRobotDataset, read_json
from posttrain.settings import EvalSettings, add_options

log = logging.getLogger("posttrain.eval")

MODEL_CONFIG = "model_config.json"
SPLIT = "split.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="checkpoint-N/ directory, or a run directory with DONE.json (its final checkpoint)",
    )
    parser.add_argument("dataset", type=Path, help="LeRobot dataset the checkpoint was trained on")
    parser.add_argument("--output", type=Path, required=True, help="evaluation directory (replaced whole)")
    add_options(parser, EvalSettings)  # with a run directory, --all-checkpoints writes OUTPUT/checkpoints/<name>/
    parser.add_argument("--device", default="auto", help="torch device for the policy (auto: cuda if available)")


def run(args) -> int:
    checkpoint, run_dir = resolve_checkpoint(args.checkpoint)
    others = []
    if args.all_checkpoints:
        if run_dir is None:
            raise PosttrainError(f"{args.checkpoint}: --all-checkpoints needs a run directory with DONE.json")
        others = [c for c in complete_checkpoints(run_dir) if c != checkpoint]
    dataset = LeRobotDataset(args.dataset)
    options = dict(
        episodes_to_plot=args.episodes_to_plot,
        stride=args.stride,
        batch_size=args.batch_size,
        device=args.device,
        seed=args.seed,
    )
    with atomic_directory(args.output, "eval", inputs=[args.checkpoint, args.dataset]) as tmp:
        metrics = evaluate_checkpoint(checkpoint, dataset, tmp, **options)
        if others:
            metrics["checkpoints"] = {checkpoint.name: summary(metrics)}
            for other in others:
                sub = evaluate_checkpoint(other, dataset, tmp / "checkpoints" / other.name, **options)
                metrics["checkpoints"][other.name] = summary(sub)
        write_json_atomic(tmp / "metrics.json", metrics)
    p = metrics["policy"]
    log.info(
        "%s: policy MSE %.5g MAE %.5g | mean-action MSE %.5g | hold-state MSE %s",
        checkpoint.name,
        p["mse"],
        p["mae"],
        metrics["mean_action"]["mse"],
        (metrics["hold_state"] or {}).get("mse"),
    )
    # Losing to a baseline is information, not a failure: a warning, and the exit status stays 0.
    outcome = metrics["verdict"]
    (log.info if outcome["beats_all_baselines"] else log.warning)("verdict: %s", outcome["summary"])
    for key, task in metrics["per_task"].items() if len(metrics["per_task"]) > 1 else ():
        if task["verdict"] is None:
            log.warning("task %s (%s): no held-out episode", key, task["task"])
        else:
            (log.info if task["verdict"]["beats_all_baselines"] else log.warning)(
                "task %s (%s): %s", key, task["task"], task["verdict"]["summary"]
            )
    swap = metrics["instruction_swap"]
    if swap:
        (log.info if swap["follows_instruction"] else log.warning)("instruction swap: %s", swap["summary"])
    return 0


# --- checkpoints ------------------------------------------------------------------------------
def resolve_checkpoint(path: Path) -> tuple[Path, Path | None]:
    """A checkpoint directory as given, or the final checkpoint named by a run directory's DONE.json."""
    if not path.is_dir():
        raise PosttrainError(f"{path}: checkpoint directory not found")
    done = path / "DONE.json"
    if done.is_file():
        final = read_json(done).get("final_checkpoint")
        if not final:
            raise PosttrainError(f"{done}: no final_checkpoint")
        checkpoint = path / final
        if not checkpoint.is_dir():
            raise PosttrainError(f"{done}: final_checkpoint {final} not found in {path}")
        return checkpoint, path
    return path, None


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N/ directories with trainer_state.json (written last), by step."""
    found = [
        p
        for p in run_dir.glob("checkpoint-*")
        if re.fullmatch(r"checkpoint-\d+", p.name) and (p / "trainer_state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def is_gr00t_checkpoint(checkpoint: Path) -> bool:
    return not (checkpoint / MODEL_CONFIG).is_file() and (
        (checkpoint / "processor_config.json").is_file() or (checkpoint / "experiment_cfg").is_dir()
    )


def gr00t_command(checkpoint: Path, dataset: LeRobotDataset) -> str:
    """The Isaac-GR00T N1.6 open-loop evaluation command for a GR00T checkpoint."""
    tag = "GR1"
    tag_file = checkpoint / "embodiment_id.json"
    if tag_file.is_file():
        try:
            names = list(read_json(tag_file))
            tag = names[0].upper() if len(names) == 1 else tag
        except (PosttrainError, TypeError):
            pass
    split = next((p / SPLIT for p in (checkpoint, checkpoint.parent) if (p / SPLIT).is_file()), None)
    episodes = read_json(split)["heldout_episodes"] if split else [e["episode_index"] for e in dataset.episodes]
    steps = max(e["length"] for e in dataset.episodes)
    args = [
        "python",
        "gr00t/eval/open_loop_eval.py",
        "--model-path",
        str(checkpoint.resolve()),
        "--dataset-path",
        str(dataset.root.resolve()),
        "--embodiment-tag",
        tag,
        "--traj-ids",
        *map(str, episodes),
        "--action-horizon",
        "16",
        "--steps",
        str(steps),
        "--save-plot-path",
        str((checkpoint.parent / "open_loop_eval" / "traj.jpeg").resolve()),
    ]
    return " ".join(shlex.quote(a) for a in args)


def check_compatible(checkpoint: Path, dataset: LeRobotDataset) -> dict:
    """Fail with both file names when the checkpoint was not trained on this kind of dataset."""
    if is_gr00t_checkpoint(checkpoint):
        raise PosttrainError(
            f"{checkpoint}: is an Isaac-GR00T checkpoint (no {MODEL_CONFIG}); posttrain eval reads native "
            f"checkpoints only. Evaluate it with Isaac-GR00T's gr00t/eval/open_loop_eval.py, from an Isaac-GR00T "
            f"checkout (n1.6-release): {gr00t_command(checkpoint, dataset)}"
        )
    for name in (MODEL_CONFIG, "modality.json", SPLIT, "stats.json"):
        if not (checkpoint / name).is_file():
            raise PosttrainError(f"{checkpoint / name}: missing; not a complete native checkpoint")
    ckpt_modality_file = checkpoint / "modality.json"
    ds_modality_file = dataset.root / "meta" / "modality.json"
    ckpt_modality = read_json(ckpt_modality_file)
    for kind in ("state", "action"):
        ours = {k: (v["start"], v["end"]) for k, v in ckpt_modality.get(kind, {}).items()}
        theirs = {k: (v["start"], v["end"]) for k, v in dataset.modality.get(kind, {}).items()}
        if ours != theirs:
            raise PosttrainError(
                f"{ckpt_modality_file}: {kind} groups {fmt_groups(ours)} differ from {ds_modality_file}: "
                f"{fmt_groups(theirs)} (checkpoint trained on a different embodiment)"
            )
    stats_file = checkpoint / "stats.json"
    ckpt_stats = read_json(stats_file)
    info_file = dataset.root / "meta" / "info.json"
    columns = [c for kind in ("state", "action") for c in group_columns(ckpt_modality, kind, str(ckpt_modality_file))]
    for column in columns:  # every column the policy reads (posttrain.layout), not only state and action
        ours = len(ckpt_stats.get(column, {}).get("mean", []))
        theirs = dataset.info["features"].get(column, {}).get("shape", [0])[0]
        if ours != theirs:
            raise PosttrainError(f"{stats_file}: {column} has {ours} dims but {info_file} says {theirs}")
    video_keys = [v.get("original_key", f"observation.images.{k}") for k, v in ckpt_modality.get("video", {}).items()]
    missing = [k for k in video_keys if k not in dataset.video_keys]
    if missing:
        raise PosttrainError(f"{ckpt_modality_file}: cameras {missing} not in {info_file} ({dataset.video_keys})")
    split_file = checkpoint / SPLIT
    split = read_json(split_file)
    present = {e["episode_index"] for e in dataset.episodes}
    heldout = list(split.get("heldout_episodes") or [])
    if not heldout:
        raise PosttrainError(f"{split_file}: no heldout_episodes to evaluate (train with --holdout-episodes N)")
    for key in ("heldout_episodes", "train_episodes"):
        absent = [e for e in split.get(key, []) if e not in present]
        if absent:
            raise PosttrainError(
                f"{split_file}: {key} {absent} not in {dataset.root / 'meta' / 'episodes.jsonl'} "
                f"({len(present)} episodes)"
            )
    return {"video_keys": video_keys, "heldout": heldout, "train": list(split.get("train_episodes", []))}


def fmt_groups(groups: dict) -> str:
    return "{" + ", ".join(f"{k}:{a}-{b}" for k, (a, b) in groups.items()) + "}"


# --- data -------------------------------------------------------------------------------------
@dataclass
class Episode:
    index: int
    texts: list[str]  # per frame, from the task_index column (as the trainer reads it)
    state: np.ndarray  # (T, Ds) raw
    action: np.ndarray  # (T, Da) raw
    frames: np.ndarray  # (T, V, S, S, 3) uint8


def load_episode(dataset: LeRobotDataset, episode_index: int, video_keys: list[str], size: int) -> Episode:
    """Raw state and action vectors (the columns posttrain.layout names, float64) and the frames the policy sees."""
    state_layout, action_layout = dataset_layouts(dataset)
    names = list(dict.fromkeys(state_layout.column_names + action_layout.column_names + ["task_index"]))
    columns = dataset.read_episode(episode_index, names)
    try:
        texts = [dataset.task_text(int(t)) for t in columns["task_index"]]
    except KeyError as err:
        raise PosttrainError(
            f"{dataset.parquet_path(episode_index)}: task_index {err} not in {dataset.root / 'meta' / 'tasks.jsonl'}"
        ) from None
    views = [decode_camera(dataset, episode_index, key, size) for key in video_keys]  # as training decodes
    n = len(columns["task_index"])
    for key, frames in zip(video_keys, views):
        if len(frames) < n:
            raise PosttrainError(
                f"{dataset.video_path(episode_index, key)}: episode {episode_index} has "
                f"{len(frames)} frames but {n} parquet rows"
            )
    frames = np.stack([v[:n] for v in views], axis=1)
    return Episode(
        episode_index,
        texts,
        state_layout.concat(columns, np.float64),
        action_layout.concat(columns, np.float64),
        frames,
    )


def train_mean_action(dataset: LeRobotDataset, episodes: list[int]) -> np.ndarray:
    action_layout = dataset_layouts(dataset)[1]
    actions = [action_layout.concat(dataset.read_episode(e, action_layout.column_names), np.float64) for e in episodes]
    return np.concatenate(actions).mean(axis=0)


# --- per task and the instruction swap ---------------------------------------------------------
SWAP_RULE = (
    "each held-out chunk is predicted again with another task's instruction (swapped_to), from the same "
    "noise; change_mse: MSE between the two predictions; resample_mse: MSE between two predictions with the "
    "true instruction and different noise (the sampler's own spread); swapped_mse: the error against the "
    "recorded actions with the wrong instruction. follows_instruction: change_mse > resample_mse and "
    "swapped_mse > policy_mse (the wrong instruction moves the prediction more than chance, away from "
    "the recorded motion)"
)


def swap_targets(dataset: LeRobotDataset) -> dict[str, str] | None:
    """Task text -> the text it is swapped with (the next distinct task by index, cyclically); None for one task."""
    texts = list(dict.fromkeys(dataset.tasks[i] for i in sorted(dataset.tasks)))
    if len(texts) < 2:
        return None
    return {text: texts[(k + 1) % len(texts)] for k, text in enumerate(texts)}


def task_mean_actions(dataset: LeRobotDataset, train: list[int]) -> dict[str, tuple[np.ndarray, str]]:
    """Per task text: the mean action of the train episodes with that task (meta/episodes.jsonl) and its source.

    Episodes are taken in split.json order, so that a single-task dataset gets the pooled mean exactly."""
    tasks_of = {row["episode_index"]: row.get("tasks") or [] for row in dataset.episodes}
    by_task: dict[str, list[int]] = {}
    for episode in train:
        for text in tasks_of.get(episode, []):
            by_task.setdefault(text, []).append(episode)
    return {
        text: (
            train_mean_action(dataset, episodes),
            f"mean action over the task's {len(episodes)} train episodes' frames (split.json)",
        )
        for text, episodes in by_task.items()
    }


def swap_predictions(policy, images, state, texts, swap_to: dict[str, str], noise, resample) -> tuple:
    """(prediction with the swapped instructions from the noise state `noise`, prediction with the true
    instructions from the `resample` generator), both float64 (B, H, D)."""
    import torch

    same_noise = torch.Generator().set_state(noise)
    swapped = policy.predict(images, state, [swap_to[t] for t in texts], generator=same_noise)
    resampled = policy.predict(images, state, texts, generator=resample)
    return np.asarray(swapped, np.float64), np.asarray(resampled, np.float64)


def per_task_metrics(
    dataset: LeRobotDataset,
    chunks: dict,
    groups: list,
    hold_ok: bool,
    train: list[int],
    pooled_mean: np.ndarray,
    pooled_source: str,
) -> dict:
    """The pooled metrics again for the chunks of each task (the task of a chunk's first frame), keyed by task index.

    The mean-action baseline of a task is the mean action of its own train episodes (it knows the task), or
    the pooled one when the task has none. A task of the dataset without held-out chunks gets num_chunks 0
    and no numbers (the split holds out the last episodes, which may all be of one task)."""
    index_of = {text: i for i, text in sorted(dataset.tasks.items(), reverse=True)}  # the lowest index wins
    means = task_mean_actions(dataset, train) if train else {}
    out = {}
    for text in sorted(set(chunks["texts"]) | set(index_of), key=lambda t: index_of.get(t, len(index_of))):
        rows = np.array([t == text for t in chunks["texts"]])
        if not rows.any():
            out[str(index_of[text])] = {
                "task_index": index_of[text],
                "task": text,
                "episodes": [],
                "num_chunks": 0,
                "policy": None,
                "mean_action": None,
                "hold_state": None,
                "verdict": None,
            }
            continue
        truth = chunks["truth"][rows]
        mean, source = means.get(text, (pooled_mean, pooled_source))
        errors = {
            "policy": error_summary(chunks["predicted"][rows] - truth, groups),
            "mean_action": error_summary(mean[None, None, :] - truth, groups),
            "hold_state": error_summary(chunks["hold"][rows] - truth, groups) if hold_ok else None,
        }
        out[str(index_of.get(text))] = {
            "task_index": index_of.get(text),
            "task": text,
            "episodes": sorted({int(e) for e in chunks["episodes"][rows]}),
            "num_chunks": int(rows.sum()),
            **errors,
            "baselines": {"mean_action": source},
            "verdict": verdict(errors["policy"], {k: errors[k] for k in ("mean_action", "hold_state")}),
        }
    return out


def swap_block(
    predicted: np.ndarray, swapped: np.ndarray, resampled: np.ndarray, truth: np.ndarray, groups: list
) -> dict:
    """The instruction swap's numbers for a set of chunks (N, H, D)."""
    change = swapped - predicted
    numbers = {
        "num_chunks": len(predicted),
        "change_mse": mse(change),
        "resample_mse": mse(resampled - predicted),
        "policy_mse": mse(predicted - truth),
        "swapped_mse": mse(swapped - truth),
        "change_mse_per_step": np.mean(np.square(change), axis=(0, 2)).tolist(),
        "change_mse_groups": {name: mse(change[:, :, a:b]) for name, a, b in groups},
    }
    numbers["change_vs_resample"] = mse_ratio(numbers["change_mse"], numbers["resample_mse"])
    numbers["change_vs_error"] = mse_ratio(numbers["change_mse"], numbers["policy_mse"])
    numbers["swapped_vs_true_error"] = mse_ratio(numbers["swapped_mse"], numbers["policy_mse"])
    numbers["follows_instruction"] = (
        numbers["change_mse"] > numbers["resample_mse"] and numbers["swapped_mse"] > numbers["policy_mse"]
    )
    return numbers


def instruction_swap(dataset: LeRobotDataset, chunks: dict, swap_to: dict[str, str], groups: list) -> dict:
    """The swap check overall and per task (keyed as per_task), with a one-sentence summary."""
    index_of = {text: i for i, text in sorted(dataset.tasks.items(), reverse=True)}
    arrays = [chunks[k] for k in ("predicted", "swapped", "resampled", "truth")]
    result = {"rule": SWAP_RULE, **swap_block(*arrays, groups), "per_task": {}}
    for text in sorted(set(chunks["texts"]), key=lambda t: index_of.get(t, len(index_of))):
        rows = np.array([t == text for t in chunks["texts"]])
        result["per_task"][str(index_of.get(text))] = {
            "task": text,
            "swapped_to": swap_to[text],
            **swap_block(*(a[rows] for a in arrays), groups),
        }
    result["summary"] = swap_summary(result)
    return result


def swap_summary(swap: dict) -> str:
    numbers = (
        f"swapping the instruction changes the predicted chunk by MSE {swap['change_mse']:.3g} "
        f"({fmt_ratio(swap['change_vs_resample'])} the spread between two noise draws, "
        f"{fmt_ratio(swap['change_vs_error'])} the policy's error), and with the wrong instruction the error "
        f"is {fmt_ratio(swap['swapped_vs_true_error'])} the error with the right one"
    )
    head = (
        "The policy follows the instruction"
        if swap["follows_instruction"]
        else "The policy does not follow the instruction"
    )
    return f"{head}: {numbers}."


# --- evaluation -------------------------------------------------------------------------------
def evaluate_checkpoint(
    checkpoint: Path,
    dataset: LeRobotDataset,
    out: Path,
    *,
    episodes_to_plot: int = 3,
    stride: int = 1,
    batch_size: int = 8,
    device: str = "auto",
    seed: int = 0,
) -> dict:
    plan = check_compatible(checkpoint, dataset)
    import torch  # imported only once the inputs are known to be good

    from posttrain.policy import Policy

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = Policy.from_checkpoint(checkpoint, device=device)
    generator = torch.Generator().manual_seed(seed)  # noise drawn on the CPU: the same metrics on any device
    horizon = int(config_value(policy.config, "action_horizon"))
    size = int(config_value(policy.config, "image_size"))
    # Group positions in the raw vectors the policy reads (for G1 these include the eef and teleop columns).
    state_layout, action_layout = dataset_layouts(dataset)
    groups = [(g.name, g.positions.start, g.positions.stop) for g in action_layout.groups]
    state_groups = [(g.name, g.positions.start, g.positions.stop) for g in state_layout.groups]
    hold_ok = state_groups == groups
    if plan["train"]:
        mean_action = train_mean_action(dataset, plan["train"])
        mean_source = f"mean action over the {len(plan['train'])} train episodes' frames (split.json)"
    else:
        mean_action = action_layout.stat(policy.stats, "mean")
        mean_source = "action mean of the checkpoint's stats.json (split.json lists no train episodes)"

    errors = {"policy": [], "mean_action": [], "hold_state": []}
    per_episode, latencies, plotted = {}, [], []
    # Every chunk, for the per-task metrics and the instruction swap (datasets with >= 2 tasks).
    chunks = {"predicted": [], "truth": [], "hold": [], "texts": [], "episodes": [], "swapped": [], "resampled": []}
    swap_to, resample = swap_targets(dataset), torch.Generator().manual_seed(seed + 1)
    warmed_up = False
    for episode_index in tqdm(plan["heldout"], desc="eval episodes", unit="ep"):
        ep = load_episode(dataset, episode_index, plan["video_keys"], size)
        starts = list(range(0, len(ep.action) - horizon + 1, stride))
        if not starts:
            raise PosttrainError(
                f"{dataset.parquet_path(episode_index)}: held-out episode {episode_index} has "
                f"{len(ep.action)} frames, fewer than the action horizon {horizon}"
            )
        predicted = []
        for b in range(0, len(starts), batch_size):
            idx = np.asarray(starts[b : b + batch_size])
            images, state, texts = ep.frames[idx], ep.state[idx], [ep.texts[i] for i in idx]
            if not warmed_up:  # first call pays for lazy init / allocator warm-up: keep it out of latency
                policy.predict(images, state, texts, generator=torch.Generator().manual_seed(seed))
                warmed_up = True
            noise = generator.get_state()  # the swapped instruction gets the same noise
            t0 = time.perf_counter()
            chunk = np.asarray(policy.predict(images, state, texts, generator=generator), np.float64)
            latencies += [(time.perf_counter() - t0) * 1000 / len(idx)] * len(idx)
            if chunk.shape != (len(idx), horizon, ep.action.shape[1]):
                raise PosttrainError(
                    f"{checkpoint}: predict returned shape {chunk.shape}, expected "
                    f"({len(idx)}, {horizon}, {ep.action.shape[1]})"
                )
            predicted.append(chunk)
            chunks["texts"] += texts
            if swap_to:
                swapped, resampled = swap_predictions(policy, images, state, texts, swap_to, noise, resample)
                chunks["swapped"].append(swapped)
                chunks["resampled"].append(resampled)
        predicted = np.concatenate(predicted)
        truth = np.stack([ep.action[i : i + horizon] for i in starts]).astype(np.float64)
        hold = np.repeat(ep.state[starts][:, None, :].astype(np.float64), horizon, axis=1)
        errors["policy"].append(predicted - truth)
        errors["mean_action"].append(mean_action[None, None, :] - truth)
        if hold_ok:
            errors["hold_state"].append(hold - truth)
        for key, value in (
            ("predicted", predicted),
            ("truth", truth),
            ("hold", hold),
            ("episodes", np.full(len(starts), episode_index)),
        ):
            chunks[key].append(value)
        per_episode[str(episode_index)] = {
            "chunks": len(starts),
            "policy_mse": mse(predicted - truth),
            "mean_action_mse": mse(mean_action - truth),
            "hold_state_mse": mse(hold - truth) if hold_ok else None,
        }
        if len(plotted) < episodes_to_plot:
            plotted.append((ep.index, ep.action, np.asarray(starts), predicted))  # frames not kept

    metrics = {
        "checkpoint": str(checkpoint),
        "step": checkpoint_step(checkpoint),
        "dataset": str(dataset.root),
        "heldout_episodes": plan["heldout"],
        "action_horizon": horizon,
        "stride": stride,
        "num_chunks": int(sum(len(e) for e in errors["policy"])),
        "units": "raw (unnormalised) action units; MSE/MAE averaged over chunks, horizon steps and joints",
        "policy": error_summary(np.concatenate(errors["policy"]), groups),
        "mean_action": error_summary(np.concatenate(errors["mean_action"]), groups),
        "hold_state": error_summary(np.concatenate(errors["hold_state"]), groups) if hold_ok else None,
        "baselines": {
            "mean_action": mean_source,
            "hold_state": "state at step i repeated for all H steps"
            if hold_ok
            else "not applicable: state and action groups differ in modality.json",
        },
        "per_episode": per_episode,
        "latency_ms_per_chunk": latency_summary(latencies, batch_size, device),
        "seed": seed,
    }
    metrics["verdict"] = verdict(metrics["policy"], {k: metrics[k] for k in ("mean_action", "hold_state")})
    chunks.update({k: np.concatenate(v) for k, v in chunks.items() if k != "texts" and v})
    metrics["per_task"] = per_task_metrics(dataset, chunks, groups, hold_ok, plan["train"], mean_action, mean_source)
    metrics["instruction_swap"] = instruction_swap(dataset, chunks, swap_to, groups) if swap_to else None
    out.mkdir(parents=True, exist_ok=True)
    plot_horizon_error(metrics, out / "horizon_error.png")
    plot_trajectories(plotted, groups, horizon, out / "trajectories.png")
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def config_value(config, name: str):
    value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
    if value is None:
        raise PosttrainError(f"policy config has no {name}")
    return value


def checkpoint_step(checkpoint: Path) -> int | None:
    state = checkpoint / "trainer_state.json"
    if state.is_file():
        step = read_json(state).get("global_step")
        if step is not None:
            return int(step)
    match = re.fullmatch(r"checkpoint-(\d+)", checkpoint.name)
    return int(match.group(1)) if match else None


def mse(err: np.ndarray) -> float:
    return float(np.mean(np.square(err)))


def error_summary(err: np.ndarray, groups: list[tuple[str, int, int]]) -> dict:
    """err: (N chunks, H, D) prediction minus truth."""

    def block(e):
        return {
            "mse": mse(e),
            "mae": float(np.mean(np.abs(e))),
            "mse_per_step": np.mean(np.square(e), axis=(0, 2)).tolist(),
            "mae_per_step": np.mean(np.abs(e), axis=(0, 2)).tolist(),
        }

    summary = block(err)
    summary["groups"] = {name: block(err[:, :, a:b]) for name, a, b in groups}
    return summary


def latency_summary(latencies: list[float], batch_size: int, device: str) -> dict:
    values = np.asarray(latencies)
    return {
        "mean": float(values.mean()),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "batch_size": batch_size,
        "device": device,
        "note": "wall time of one predict() call divided by the chunks in it; first call excluded",
    }


def summary(metrics: dict) -> dict:
    return {
        "step": metrics["step"],
        "mse": metrics["policy"]["mse"],
        "mae": metrics["policy"]["mae"],
        "beats_all_baselines": metrics["verdict"]["beats_all_baselines"],
    }


# --- verdict ----------------------------------------------------------------------------------
BASELINE_NAMES = {"mean_action": "mean-action", "hold_state": "hold-state"}
VERDICT_RULE = (
    "the policy beats a baseline when policy MSE / baseline MSE < 1 (a tie is not a win); "
    "overall on the MSE over all chunks, steps and joints, and the same rule per horizon step "
    "and per action group; beats_all_baselines: it beats every applicable baseline overall"
)


def mse_ratio(policy_mse: float, baseline_mse: float) -> float | None:
    """policy MSE / baseline MSE; None where undefined (a perfect baseline, or a non-finite error)."""
    if not (np.isfinite(policy_mse) and np.isfinite(baseline_mse) and baseline_mse > 0):
        return None
    return float(policy_mse / baseline_mse)


def wins(ratio: float | None) -> bool:
    return ratio is not None and ratio < 1


def verdict(policy: dict, baselines: dict[str, dict | None]) -> dict:
    """Whether the policy beats each baseline, overall, per horizon step and per action group.

    policy and baselines are error_summary() blocks; a None baseline (not applicable) is left out.
    """
    result = {}
    for name, base in baselines.items():
        if base is None:
            continue
        ratio = mse_ratio(policy["mse"], base["mse"])
        per_step = [mse_ratio(p, b) for p, b in zip(policy["mse_per_step"], base["mse_per_step"])]
        groups = {g: mse_ratio(policy["groups"][g]["mse"], base["groups"][g]["mse"]) for g in policy["groups"]}
        result[name] = {
            "ratio": ratio,
            "beats": wins(ratio),
            "steps_won": sum(map(wins, per_step)),
            "steps": len(per_step),
            "ratio_per_step": per_step,
            "beats_per_step": [wins(r) for r in per_step],
            "groups": {g: {"ratio": r, "beats": wins(r)} for g, r in groups.items()},
        }
    return {
        "rule": VERDICT_RULE,
        "beats_all_baselines": all(v["beats"] for v in result.values()),
        "baselines": result,
        "summary": verdict_summary(result),
    }


def verdict_summary(baselines: dict) -> str:
    """One sentence: which baselines the policy beats, the ratios, and where it falls short."""
    lost = [BASELINE_NAMES[n] for n, v in baselines.items() if not v["beats"]]
    named = lost or [BASELINE_NAMES[n] for n in baselines]
    plural = "s" if len(named) > 1 else ""
    head = (
        f"The policy does not beat the {' and '.join(named)} baseline{plural}"
        if lost
        else f"The policy beats the {' and '.join(named)} baseline{plural}"
    )
    ratios = ", ".join(f"{BASELINE_NAMES[n]} {fmt_ratio(v['ratio'])}" for n, v in baselines.items())
    short = []
    for name, v in baselines.items():
        steps = [i for i, won in enumerate(v["beats_per_step"]) if not won]
        groups = [g for g, r in v["groups"].items() if not r["beats"]]
        where = []
        if steps:
            where.append(
                f"at any of the {v['steps']} horizon steps"
                if len(steps) == v["steps"]
                else f"at horizon steps {ranges(steps)} of {v['steps']}"
            )
        if groups:
            where.append("in any action group" if len(groups) == len(v["groups"]) else f"in {', '.join(groups)}")
        if where:
            short.append(f"{BASELINE_NAMES[name]} {' or '.join(where)}")
    tail = f"; it does not beat {'; '.join(short)}" if short else ""
    return f"{head} on the held-out episodes (policy/baseline MSE: {ratios}){tail}."


def fmt_ratio(ratio: float | None) -> str:
    return "undefined" if ratio is None else f"{ratio:.3g}x"


def ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    runs = []
    for x in indices:
        if runs and x == runs[-1][1] + 1:
            runs[-1][1] = x
        else:
            runs.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


# --- plots ------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_horizon_error(metrics: dict, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = np.arange(metrics["action_horizon"])
    for key, label, style in (
        ("policy", "policy", "-o"),
        ("mean_action", "mean action", "--"),
        ("hold_state", "hold current state", ":"),
    ):
        if metrics[key] is not None:
            ax.plot(steps, metrics[key]["mse_per_step"], style, label=label, markersize=3)
    ax.set_xlabel("horizon step")
    ax.set_ylabel("MSE (raw units)")
    ax.set_yscale("log")
    ratios = ", ".join(
        f"{BASELINE_NAMES[n]} {fmt_ratio(v['ratio'])}{'' if v['beats'] else ' (NOT beaten)'}"
        for n, v in metrics["verdict"]["baselines"].items()
    )
    ax.set_title(
        f"Open-loop error vs horizon ({metrics['num_chunks']} chunks, "
        f"{len(metrics['heldout_episodes'])} held-out episodes)\npolicy/baseline MSE: {ratios}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_trajectories(plotted: list, groups: list[tuple[str, int, int]], horizon: int, path: Path) -> None:
    """Recorded actions (solid) vs the first step of each predicted chunk (dashed), one panel per group."""
    plt = _pyplot()
    rows = max(1, len(plotted))
    fig, axes = plt.subplots(rows, len(groups), figsize=(4 * len(groups), 2.8 * rows), squeeze=False)
    for r, (episode_index, action, starts, predicted) in enumerate(plotted):
        for c, (name, a, b) in enumerate(groups):
            ax = axes[r][c]
            for j, d in enumerate(range(a, b)):
                color = f"C{j % 10}"
                ax.plot(np.arange(len(action)), action[:, d], color=color, linewidth=1)
                ax.plot(starts, predicted[:, 0, d], "--", color=color, linewidth=1)
            ax.set_title(f"episode {episode_index}: {name}", fontsize=9)
            ax.tick_params(labelsize=7)
    if not plotted:
        axes[0][0].text(0.5, 0.5, "no episodes plotted", ha="center")
    fig.suptitle(f"Recorded action (solid) vs predicted chunk step 0 (dashed); horizon {horizon}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
