"""`posttrain train`: post-train the native flow-matching policy with accelerate (or launch Isaac-GR00T).

Read top to bottom: parse -> dataset and split -> length -> model -> optimizer and schedule ->
prepare -> resume -> loop (log, checkpoint, rotate) -> DONE.json. The length is --max-steps when
given, else --epochs passes over the train samples with a --min-steps floor (resolve_steps).
One process or many (`accelerate launch` / `torchrun`): the global batch is always the same samples
(posttrain.data.StepSampler), split over processes and gradient-accumulation micro-batches.

Run directory:
    RUN_DIR/checkpoint-{step}/   model.safetensors model_config.json stats.json modality.json split.json
                                 train_config.json identity.json optimizer.bin scheduler.bin
                                 random_states_{rank}.pkl manifest.json (every file's size and sha256)
                                 trainer_state.json (written last: a checkpoint without it is incomplete)
    RUN_DIR/tensorboard/         loss, learning rate, samples/s, data-wait and compute seconds per step
    RUN_DIR/DONE.json            {"final_checkpoint": "checkpoint-N", "step": N, ...}, written last
    RUN_DIR/superseded/<time>-<label>/   what an earlier run left (moved, never deleted)
A rerun into the same RUN_DIR resumes from the newest intact checkpoint of the same run identity
(options, dataset content, trainer code: posttrain.runs); everything of another identity is set
aside first, as is everything with --no-resume. A non-finite loss or gradient norm stops the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.files import write_json_atomic
from posttrain.runs import IDENTITY, damage, differences, make_identity, read_identity, seal, set_aside
from posttrain.workflow import code_version

log = logging.getLogger("posttrain.train")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MAX_GRAD_NORM = 1.0  # as GR00T's finetune recipe
DEFAULT_EPOCHS, DEFAULT_MIN_STEPS = 3.0, 800  # config/config.yaml's train.epochs and train.min_steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bool_flag = argparse.BooleanOptionalAction
    parser.add_argument("--dataset", required=True, type=Path, help="LeRobot v2.1 dataset directory (with meta/stats.json)")
    parser.add_argument("--output", required=True, type=Path, help="run directory (checkpoints, tensorboard, DONE.json)")
    parser.add_argument("--backend", choices=["native", "gr00t"], default="native")
    parser.add_argument("--preset", choices=["tiny", "base", "large"], default="tiny", help="native policy size")
    parser.add_argument("--holdout-episodes", type=int, default=2, help="last N episodes kept out of training")
    parser.add_argument("--global-batch-size", type=int, default=32,
                        help="samples per optimizer step over all processes and accumulation steps")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="optimizer steps; when given, the run's length (--epochs and --min-steps are not used)")
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS,
                        help="without --max-steps: passes over the train samples, steps = max(--min-steps, "
                             "ceil(epochs × train samples / global batch size)) (default %(default)s)")
    parser.add_argument("--min-steps", type=int, default=DEFAULT_MIN_STEPS,
                        help="without --max-steps: at least this many steps, however small the dataset "
                             "(default %(default)s)")
    parser.add_argument("--save-steps", type=int, default=200)
    parser.add_argument("--save-total-limit", type=int, default=2, help="checkpoints kept (oldest removed)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--warmup-ratio", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=1e-5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--dataloader-num-workers", type=int, default=1)
    parser.add_argument("--frames", type=Path, default=None,
                        help="`posttrain frames` directory of --dataset at the preset's image size: images are "
                             "read from it (same pixels) instead of decoding videos in every worker")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--use-wandb", action=bool_flag, default=False)
    parser.add_argument("--action-normalization", choices=["min_max", "q01_q99"], default="min_max")
    parser.add_argument("--tune-llm", action=bool_flag, default=False)
    parser.add_argument("--tune-visual", action=bool_flag, default=True)
    parser.add_argument("--tune-projector", action=bool_flag, default=True)
    parser.add_argument("--tune-diffusion-model", action=bool_flag, default=True)
    parser.add_argument("--color-jitter-params", nargs="*", default=None, metavar="KEY VALUE",
                        help="e.g. brightness 0.3 contrast 0.4 saturation 0.5 hue 0.08 (no values: no jitter)")
    parser.add_argument("--state-dropout-prob", type=float, default=0.0,
                        help="probability of hiding a training sample's state (GR00T's flag of that name)")
    parser.add_argument("--resume", action=bool_flag, default=True,
                        help="continue from the newest complete checkpoint in --output")
    parser.add_argument("--logging-steps", type=int, default=10, help="log loss etc. every N steps")
    gr00t = parser.add_argument_group("gr00t backend only")
    gr00t.add_argument("--gr00t-repo", type=Path, help="Isaac-GR00T checkout (n1.6-release / ead5283)")
    gr00t.add_argument("--base-model-path", default="nvidia/GR00T-N1.6-3B")
    gr00t.add_argument("--embodiment-tag", default="GR1")
    gr00t.add_argument("--modality-config-path", type=Path, help="Python file registering the modality config")
    gr00t.add_argument("--num-gpus", type=int, default=1)
    gr00t.add_argument("--print-command", action="store_true", help="print the launch command instead of running it")


def parse_color_jitter(values: list[str] | None) -> dict[str, float]:
    """`brightness 0.3 contrast 0.4` -> {"brightness": 0.3, "contrast": 0.4} (tyro's dict flag form)."""
    values = values or []
    known = ("brightness", "contrast", "saturation", "hue")
    if len(values) % 2:
        raise PosttrainError(f"--color-jitter-params: expected KEY VALUE pairs, got {' '.join(values)}")
    params = {}
    for key, value in zip(values[::2], values[1::2]):
        if key not in known:
            raise PosttrainError(f"--color-jitter-params: unknown key {key!r}, expected one of {', '.join(known)}")
        try:
            params[key] = float(value)
        except ValueError:
            raise PosttrainError(f"--color-jitter-params: {key} {value!r} is not a number") from None
        limit = 0.5 if key == "hue" else math.inf
        if not 0 <= params[key] <= limit:
            raise PosttrainError(f"--color-jitter-params: {key} {value} outside [0, {limit}]")
    return params


def check_args(args) -> None:
    positive = ("global_batch_size", "gradient_accumulation_steps", "max_steps", "min_steps", "save_steps",
                "save_total_limit", "logging_steps")
    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:  # max_steps None: from --epochs
            raise PosttrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.epochs < math.inf:
        raise PosttrainError(f"--epochs must be a positive number, got {args.epochs}")
    if not 0 <= args.state_dropout_prob < 1:
        raise PosttrainError(f"--state-dropout-prob must be in [0, 1), got {args.state_dropout_prob}")
    if not 0 <= args.warmup_ratio < 1:
        raise PosttrainError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    if args.dataloader_num_workers < 0:
        raise PosttrainError(f"--dataloader-num-workers must be >= 0, got {args.dataloader_num_workers}")


def per_device_batch_size(global_batch: int, num_processes: int, accumulation: int) -> int:
    """global = per-device × processes × accumulation, exactly."""
    if global_batch % (num_processes * accumulation):
        raise PosttrainError(f"--global-batch-size {global_batch} is not divisible by {num_processes} process(es) × "
                             f"{accumulation} gradient-accumulation step(s)")
    return global_batch // (num_processes * accumulation)


# --- checkpoints -------------------------------------------------------------------------------
def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Every checkpoint-N/ directory, complete or not, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N/ directories that have trainer_state.json (written last), oldest first."""
    return [p for p in checkpoint_dirs(run_dir) if (p / TRAINER_STATE).is_file()]


def rotate_checkpoints(run_dir: Path, keep: int) -> None:
    for old in complete_checkpoints(run_dir)[:-keep]:
        log.info("removing old checkpoint %s (--save-total-limit %d)", old.name, keep)
        shutil.rmtree(old, ignore_errors=True)


def epoch_steps(epochs: float, train_samples: int, global_batch: int) -> int:
    """Steps for `epochs` passes over the train samples; a started step is a full global batch."""
    return max(1, math.ceil(round(epochs * train_samples / global_batch, 9)))  # round: 3.0 × 32 / 32 is 3, not 4


def resolve_steps(max_steps: int | None, epochs: float, min_steps: int, train_samples: int, global_batch: int) -> int:
    """The run's length in optimizer steps. --max-steps, when given, is the length (GR00T's unit; the
    GPU presets set it). Otherwise it grows with the data: `epochs` passes over the train samples,
    but at least `min_steps`, since a policy trained from scratch needs that many updates however
    small the dataset (the 16-demo synthetic default: 800 steps are 26 epochs)."""
    if max_steps is not None:
        return max_steps
    return max(min_steps, epoch_steps(epochs, train_samples, global_batch))


def length_line(args, steps: int, train_samples: int) -> str:
    """How the run's length came about: logged, and `budget` in train_config.json."""
    batch = args.global_batch_size
    by_epochs = epoch_steps(args.epochs, train_samples, batch)
    if args.max_steps is None and steps == by_epochs:
        return f"{steps} steps = ceil({args.epochs:g} epochs × {train_samples} train samples / global batch {batch})"
    why = ("--max-steps; --epochs and --min-steps not used" if args.max_steps is not None else
           f"--min-steps; {args.epochs:g} epochs would be {by_epochs} steps")
    return f"{steps} steps ({why}) = {steps * batch / train_samples:.3g} epochs of {train_samples} train samples"


def cosine_with_warmup(warmup_steps: int, total_steps: int):
    """Linear warmup to the peak, then cosine decay to 0 at total_steps (GR00T / HF 'cosine')."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps  # the first step already uses a small non-zero rate
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train_config(args, **derived) -> dict:
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items()) if k != "func"}
    return json.loads(json.dumps({**options, **derived}))  # as it reads back from train_config.json


# Options that do not change what a run computes: a checkpoint made with other values of these is
# still resumed. Any other difference (learning rate, steps, batch, ...) is another run. The dataset
# counts by its content (posttrain.lerobot.content_fingerprint), never by its path.
NOT_RUN_DEFINING = {"resume", "logging_steps", "dataloader_num_workers", "save_steps", "save_total_limit",
                    "use_wandb", "dataset", "output", "stage", "func", "backend", "gr00t_repo", "base_model_path",
                    "embodiment_tag", "modality_config_path", "num_gpus", "print_command",
                    "frames"}  # the frames directory holds the dataset's own pixels (tests/test_frames.py)


def run_identity(args, color_jitter: dict, dataset: dict, steps: int) -> dict:
    """This run's identity (posttrain.runs): run-defining options, dataset content, trainer code.
    The length counts as the resolved step count (resolve_steps): `--epochs 3` and the --max-steps
    it comes to are one run, and --epochs and --min-steps count only through it."""
    options = {k: v for k, v in vars(args).items() if k not in NOT_RUN_DEFINING | {"epochs", "min_steps"}}
    options["max_steps"] = steps
    options["color_jitter_params"] = color_jitter  # parsed: `brightness 0.3` and `brightness .30` are one run
    return make_identity(options, dataset, code_version("train"))


@dataclass
class Start:
    """Where a run starts: the checkpoint it resumes (or None: step 0), and what is set aside first."""
    resume_from: Path | None = None
    aside: list[tuple[str, list[Path], str]] = field(default_factory=list)  # (label, paths, why)


def plan_start(run_dir: Path, identity: dict, resume: bool) -> Start:
    """Resume the newest intact checkpoint of this identity. Checkpoints of another identity, damaged
    ones newer than the one resumed, and (when starting over) the old tensorboard and DONE.json are
    set aside. Reads only: every process computes the same plan; the main one carries it out."""
    start, found = Start(), checkpoint_dirs(run_dir)
    ours = [c for c in found if (read_identity(c) or {}).get("id") == identity["id"]]
    others = [c for c in found if c not in ours]
    if not resume:
        ours, others = [], []
        if found:
            start.aside.append(("no-resume", found, "--no-resume"))
    if others:
        newest = read_identity(others[-1])
        label = newest["id"][:12] if newest else "unknown"
        start.aside.append((label, others, f"another run: {differences(newest, identity)}"))
    for checkpoint in reversed(ours):
        problem = damage(checkpoint)
        if problem is None:
            start.resume_from = checkpoint
            break
        start.aside.append(("damaged", [checkpoint], f"damaged: {problem}"))
    if start.resume_from is None and start.aside:  # they describe the run set aside: keep them with it
        start.aside[0][1].extend(run_dir / name for name in ("tensorboard", "DONE.json") if (run_dir / name).exists())
    return start


def carry_out(run_dir: Path, start: Start) -> None:
    for label, paths, why in start.aside:
        target = set_aside(run_dir, paths, label)
        log.warning("set aside %s (%s): moved to %s", ", ".join(p.name for p in paths), why, target)
    for stale in run_dir.glob(".checkpoint-*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)  # our own temporary folder, left by a killed run


def check_finite(run_dir: Path, step: int, loss: float, grad_norm: float | None, learning_rate: float) -> None:
    """Stop at the first non-finite loss or gradient norm: nothing of this step is saved."""
    if math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm)):
        return
    last = complete_checkpoints(run_dir)
    norm = "n/a" if grad_norm is None else f"{grad_norm:.4g}"
    raise PosttrainError(f"{run_dir}: step {step}: loss {loss:.4g}, gradient norm {norm}: training diverged; "
                         f"stopped without DONE.json (last checkpoint: {last[-1].name if last else 'none'}); "
                         f"lower --learning-rate (now {learning_rate:g}) or check the dataset")


def next_batch(batches):
    try:
        return next(batches)
    except PosttrainError as err:
        # Raised in a DataLoader worker, it arrives wrapped in the worker's traceback; its last
        # line is the original one-line message.
        last = str(err).strip().splitlines()[-1]
        raise PosttrainError(last.removeprefix(f"{PosttrainError.__module__}.PosttrainError: ")) from None


# --- the run -----------------------------------------------------------------------------------
def run(args) -> int:
    if args.backend == "gr00t":
        if args.max_steps is None:
            raise PosttrainError("--backend gr00t needs --max-steps (train.max_steps): GR00T counts its run in "
                                 "steps, and its own sampling decides what an epoch is")
        from posttrain.gr00t import launch
        return launch(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    check_args(args)
    color_jitter_params = parse_color_jitter(args.color_jitter_params)
    if args.use_wandb:
        try:
            import wandb
        except ImportError:
            raise PosttrainError("--use-wandb: the wandb package is not installed (pip install wandb, or "
                                 "--no-use-wandb)") from None

    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from safetensors.torch import load_file
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from posttrain.data import StepSampler, TrainingSamples, camera_keys, check_dataset, split_episodes
    from posttrain.lerobot import ACTION, STATE, LeRobotDataset, content_fingerprint
    from posttrain.policy import Normalizer, PolicyConfig, PolicyModel, save_pretrained

    # --- data --------------------------------------------------------------------------------
    dataset = LeRobotDataset(args.dataset)
    check_dataset(dataset)
    split = split_episodes(dataset, args.holdout_episodes)
    features = dataset.info["features"]
    config = PolicyConfig.from_preset(
        args.preset, state_dim=features[STATE]["shape"][0], action_dim=features[ACTION]["shape"][0],
        num_cameras=len(camera_keys(dataset)), action_normalization=args.action_normalization)
    normalizer = Normalizer(dataset.stats, dataset.modality, config)
    samples = TrainingSamples(dataset, split["train_episodes"], normalizer, color_jitter_params=color_jitter_params,
                              state_dropout_prob=args.state_dropout_prob, seed=args.seed, frames=args.frames)

    # Under torchrun without a GPU, accelerate only goes multi-process (gloo) when told cpu=True;
    # otherwise every process would silently train alone into the same run directory.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                              mixed_precision=args.mixed_precision, step_scheduler_with_optimizer=False,
                              cpu=world_size > 1 and not torch.cuda.is_available())
    if accelerator.num_processes != world_size:
        raise PosttrainError(f"launched with WORLD_SIZE={world_size} but accelerate sees "
                             f"{accelerator.num_processes} process(es)")
    per_device_batch = per_device_batch_size(args.global_batch_size, accelerator.num_processes,
                                             args.gradient_accumulation_steps)
    run_dir = args.output
    main = accelerator.is_main_process
    if not main:
        log.setLevel(logging.WARNING)  # one copy of each progress line
    started = time.perf_counter()
    max_steps = resolve_steps(args.max_steps, args.epochs, args.min_steps, len(samples), args.global_batch_size)
    budget = length_line(args, max_steps, len(samples))
    identity = run_identity(args, color_jitter_params, content_fingerprint(dataset.root), max_steps)
    log.info("run identity %s (dataset fingerprint: %.1f s)", identity["id"], time.perf_counter() - started)
    start = plan_start(run_dir, identity, args.resume)
    resume_from = start.resume_from
    accelerator.wait_for_everyone()  # every process has decided before the main one moves anything
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        carry_out(run_dir, start)
    accelerator.wait_for_everyone()
    log.info("%d train samples from %d episodes (held out: %s); %d process(es) × %d per device × %d accumulation",
             len(samples), len(split["train_episodes"]), split["heldout_episodes"], accelerator.num_processes,
             per_device_batch, args.gradient_accumulation_steps)
    log.info("training length: %s", budget)

    # --- model, optimizer, schedule ----------------------------------------------------------
    set_seed(args.seed)  # same initial weights on every process
    model = PolicyModel(config)
    model.set_trainable(tune_llm=args.tune_llm, tune_visual=args.tune_visual, tune_projector=args.tune_projector,
                        tune_diffusion_model=args.tune_diffusion_model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PosttrainError("nothing to train: every --tune-* flag is off")
    # Weight decay on matrices only; biases, norms and embeddings' 1-D params are not decayed.
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    warmup_steps = math.ceil(args.warmup_ratio * max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup_steps, max_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    # The checkpoint's model.safetensors holds the UNWRAPPED model (what Policy.from_checkpoint
    # loads), written by save_pretrained; these hooks keep accelerate from writing/reading the
    # (DDP-prefixed) wrapped state instead.
    def save_model_hook(models, weights, output_dir):
        if main:
            save_pretrained(accelerator.unwrap_model(models[0]), output_dir)
        weights.clear()

    def load_model_hook(models, input_dir):
        wrapped = models.pop(0)
        accelerator.unwrap_model(wrapped).load_state_dict(load_file(Path(input_dir) / "model.safetensors"))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    # --- resume ------------------------------------------------------------------------------
    start_step, log_history = 0, []
    if resume_from is not None:
        state = json.loads((resume_from / TRAINER_STATE).read_text())
        accelerator.load_state(str(resume_from))
        start_step, log_history = state["global_step"], state["log_history"]
        log.info("resumed from %s (step %d)", resume_from, start_step)
    else:
        log.info("training starts at step 0")

    sampler = StepSampler(len(samples), per_device_batch, accelerator.num_processes, accelerator.process_index,
                          args.gradient_accumulation_steps, args.seed, start_step, max_steps)
    loader = torch.utils.data.DataLoader(
        samples, batch_sampler=sampler, num_workers=args.dataloader_num_workers,
        persistent_workers=args.dataloader_num_workers > 0, pin_memory=accelerator.device.type == "cuda")
    batches = iter(loader)

    derived = dict(steps=max_steps, budget=budget, num_processes=accelerator.num_processes,
                   per_device_batch_size=per_device_batch,
                   warmup_steps=warmup_steps, train_samples=len(samples), color_jitter=color_jitter_params,
                   policy_config=config.to_dict())
    writer = SummaryWriter(run_dir / "tensorboard", purge_step=start_step) if main else None
    if main and args.use_wandb:
        # one W&B run per run identity: a resumed run continues it; files under RUN_DIR/wandb/
        wandb.init(project=os.environ.get("WANDB_PROJECT", "posttrain"), name=run_dir.name, id=identity["id"],
                   dir=str(run_dir), config=train_config(args, **derived), resume="allow")

    def save_checkpoint(step: int) -> None:
        final = run_dir / f"checkpoint-{step}"
        tmp = run_dir / f".checkpoint-{step}.tmp"
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        # Every process's weight checksum: they must agree (the test checks; a mismatch means broken sync).
        checksum = sum(p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters())
        checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
        accelerator.wait_for_everyone()
        if main:
            shutil.copyfile(dataset.root / "meta" / "stats.json", tmp / "stats.json")
            shutil.copyfile(dataset.root / "meta" / "modality.json", tmp / "modality.json")
            write_json_atomic(tmp / "split.json", split)
            write_json_atomic(tmp / "train_config.json", train_config(args, **derived))
            write_json_atomic(tmp / IDENTITY, identity)
            state = {"global_step": step, "max_steps": max_steps, "samples_seen": step * args.global_batch_size,
                     "epoch": sampler.epoch_at(step), "global_batch_size": args.global_batch_size,
                     "num_processes": accelerator.num_processes, "weight_checksum_per_process": checksums,
                     "log_history": log_history}
            seal(tmp, TRAINER_STATE, json.dumps(state, indent=2) + "\n")  # manifest, then trainer_state.json
            os.rename(tmp, final)  # nothing is there: plan_start set aside every checkpoint past resume_from
            rotate_checkpoints(run_dir, args.save_total_limit)
            log.info("saved %s", final)
        accelerator.wait_for_everyone()

    # --- the loop ----------------------------------------------------------------------------
    if main and start_step < max_steps:
        (run_dir / "DONE.json").unlink(missing_ok=True)  # the run changes now: not done until it says so again
    model.train()
    window = {"loss": 0.0, "steps": 0, "data_s": 0.0, "compute_s": 0.0}
    progress = tqdm(range(start_step, max_steps), initial=start_step, total=max_steps,
                    disable=not main, desc="train", file=sys.stderr)
    for step in progress:  # one optimizer step = the global batch
        step_start, data_s = time.perf_counter(), 0.0
        step_loss, grad_norm = torch.zeros((), device=accelerator.device), None
        for _ in range(args.gradient_accumulation_steps):
            t0 = time.perf_counter()
            batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next_batch(batches).items()}
            data_s += time.perf_counter() - t0
            with accelerator.accumulate(model):
                loss = model(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_loss += loss.detach() / args.gradient_accumulation_steps
        scheduler.step()
        mean_loss = accelerator.reduce(step_loss, "mean").item()  # mean over processes = global batch mean
        # Gradients are synchronised, so every process sees the same norm and stops at the same step.
        # fp16 is the exception: its loss scaler skips steps with inf gradients by design.
        norm = float(grad_norm) if grad_norm is not None and args.mixed_precision != "fp16" else None
        check_finite(run_dir, step + 1, mean_loss, norm, args.learning_rate)
        window["loss"] += mean_loss
        # .item() waited for the device, so the rest of the step's time is compute (and communication).
        window["data_s"] += data_s
        window["compute_s"] += time.perf_counter() - step_start - data_s
        window["steps"] += 1
        done = step + 1

        if done % args.logging_steps == 0 or done == max_steps:
            n = window["steps"]
            seconds = window["data_s"] + window["compute_s"]
            entry = {"step": done, "loss": window["loss"] / n, "learning_rate": scheduler.get_last_lr()[0],
                     "epoch": sampler.epoch_at(done), "samples_per_s": n * args.global_batch_size / max(seconds, 1e-9),
                     "data_wait_s": window["data_s"] / n, "compute_s": window["compute_s"] / n}
            log_history.append(entry)
            if main:
                for key in ("loss", "learning_rate", "samples_per_s", "data_wait_s", "compute_s", "epoch"):
                    writer.add_scalar(f"train/{key}", entry[key], done)
                writer.flush()
                if args.use_wandb:
                    wandb.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=done)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['learning_rate']:.2e}")
                log.info("step %d loss %.5f lr %.3e %.1f samples/s (data %.3fs, compute %.3fs per step)", done,
                         entry["loss"], entry["learning_rate"], entry["samples_per_s"], entry["data_wait_s"],
                         entry["compute_s"])
            window = {"loss": 0.0, "steps": 0, "data_s": 0.0, "compute_s": 0.0}

        if done % args.save_steps == 0 or done == max_steps:
            save_checkpoint(done)

    if main:
        writer.close()
        if args.use_wandb:
            wandb.finish()
        last = log_history[-1] if log_history else {}
        write_json_atomic(run_dir / "DONE.json", {
            "final_checkpoint": f"checkpoint-{max_steps}", "step": max_steps,
            "final_loss": last.get("loss"), "samples_seen": max_steps * args.global_batch_size,
            "num_processes": accelerator.num_processes, "identity": identity["id"]})
        log.info("done: %s", run_dir / "DONE.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0
