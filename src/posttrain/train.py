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
from posttrain.settings import TrainSettings, add_options, bounded, run_defining, values
from posttrain.workflow import code_version

log = logging.getLogger("posttrain.train")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
MAX_GRAD_NORM = 1.0  # as GR00T's finetune recipe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", required=True, type=Path, help="LeRobot v2.1 dataset directory (with meta/stats.json)"
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="run directory (checkpoints, tensorboard, DONE.json)"
    )
    # every training setting, with config/config.yaml's defaults: by hand as in the workflow
    add_options(parser, TrainSettings)
    parser.add_argument(
        "--frames",
        type=Path,
        default=None,
        help="`posttrain frames` directory of --dataset at the preset's image size: images are "
        "read from it (same pixels) instead of decoding videos in every worker",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest complete checkpoint in --output",
    )
    parser.add_argument("--logging-steps", type=bounded(int, minimum=1), default=10, help="log loss etc. every N steps")
    parser.add_argument("--num-gpus", type=bounded(int, minimum=1), default=1, help="gr00t backend: torchrun processes")
    parser.add_argument(
        "--print-command", action="store_true", help="gr00t backend: print the launch command instead of running it"
    )


def per_device_batch_size(global_batch: int, num_processes: int, accumulation: int) -> int:
    """global = per-device × processes × accumulation, exactly."""
    if global_batch % (num_processes * accumulation):
        raise PosttrainError(
            f"--global-batch-size {global_batch} is not divisible by {num_processes} process(es) × "
            f"{accumulation} gradient-accumulation step(s)"
        )
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
    why = (
        "--max-steps; --epochs and --min-steps not used"
        if args.max_steps is not None
        else f"--min-steps; {args.epochs:g} epochs would be {by_epochs} steps"
    )
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
    """train_config.json: every training setting (TrainSettings; not paths or operational flags, so
    a run by hand and the workflow's record the same) and what they resolved to."""
    return json.loads(json.dumps({**values(args, TrainSettings), **derived}))  # as it reads back


def run_identity(args, dataset: dict, steps: int) -> dict:
    """This run's identity (posttrain.runs): the run-defining settings (TrainSettings, run=True), the
    dataset's content (never its path) and the trainer's code. The length counts as the resolved step
    count (resolve_steps): `--epochs 3` and the --max-steps it comes to are one run."""
    options = {name: getattr(args, name) for name in sorted(run_defining(TrainSettings) - {"gr00t"})}
    options["max_steps"] = steps
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
    raise PosttrainError(
        f"{run_dir}: step {step}: loss {loss:.4g}, gradient norm {norm}: training diverged; "
        f"stopped without DONE.json (last checkpoint: {last[-1].name if last else 'none'}); "
        f"lower --learning-rate (now {learning_rate:g}) or check the dataset"
    )


def next_batch(batches):
    try:
        return next(batches)
    except PosttrainError as err:
        # Raised in a DataLoader worker, it arrives wrapped in the worker's traceback; its last
        # line is the original one-line message.
        last = str(err).strip().splitlines()[-1]
        raise PosttrainError(last.removeprefix(f"{PosttrainError.__module__}.PosttrainError: ")) from None


# --- the run -----------------------------------------------------------------------------------
@dataclass
class Run:
    """What the loop needs, made by set_up: the data, the prepared model and its optimizer, the plan."""

    args: argparse.Namespace
    accelerator: object
    dataset: object
    split: dict
    samples: object
    model: object
    optimizer: object
    scheduler: object
    sampler: object
    identity: dict
    record: dict  # train_config.json: the settings and what they resolved to
    start_step: int
    max_steps: int
    log_history: list

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def run(args) -> int:
    if args.backend == "gr00t":
        if args.max_steps is None:
            raise PosttrainError(
                "--backend gr00t needs --max-steps (train.max_steps): GR00T counts its run in "
                "steps, and its own sampling decides what an epoch is"
            )
        from posttrain.gr00t import launch

        return launch(args)
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file is noise
    wandb = import_wandb() if args.use_wandb else None
    r = set_up(args)
    run_dir, accelerator = args.output, r.accelerator
    batches = iter(
        torch.utils.data.DataLoader(
            r.samples,
            batch_sampler=r.sampler,
            num_workers=args.dataloader_num_workers,
            persistent_workers=args.dataloader_num_workers > 0,
            pin_memory=accelerator.device.type == "cuda",
        )
    )
    writer = SummaryWriter(run_dir / "tensorboard", purge_step=r.start_step) if r.main else None
    if r.main and wandb:
        # one W&B run per run identity: a resumed run continues it; files under RUN_DIR/wandb/
        wandb.init(
            project=os.environ.get("WANDB_PROJECT", "posttrain"),
            name=run_dir.name,
            id=r.identity["id"],
            dir=str(run_dir),
            config=r.record,
            resume="allow",
        )
    if r.main and r.start_step < r.max_steps:
        (run_dir / "DONE.json").unlink(missing_ok=True)  # the run changes now: not done until it says so again

    r.model.train()
    window = []  # (loss, data seconds, compute seconds) of the steps since the last log line
    progress = tqdm(
        range(r.start_step, r.max_steps),
        initial=r.start_step,
        total=r.max_steps,
        disable=not r.main,
        desc="train",
        file=sys.stderr,
    )
    for step in progress:  # one optimizer step = the global batch
        done = step + 1
        window.append(train_step(r, batches, done))
        if done % args.logging_steps == 0 or done == r.max_steps:
            entry = log_entry(r, done, window)
            window = []
            if r.main:
                for key in ("loss", "learning_rate", "samples_per_s", "data_wait_s", "compute_s", "epoch"):
                    writer.add_scalar(f"train/{key}", entry[key], done)
                writer.flush()
                if wandb:
                    wandb.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=done)
                progress.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['learning_rate']:.2e}")
        if done % args.save_steps == 0 or done == r.max_steps:
            save_checkpoint(r, done)

    if r.main:
        writer.close()
        if wandb:
            wandb.finish()
    finish(r)
    return 0


def import_wandb():
    try:
        import wandb
    except ImportError:
        raise PosttrainError(
            "--use-wandb: the wandb package is not installed (pip install wandb, or --no-use-wandb)"
        ) from None
    return wandb


def set_up(args) -> Run:
    """Dataset and split, the run's length and identity (setting aside what another run left), model,
    optimizer and schedule prepared by accelerate, and the state of the checkpoint resumed."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from posttrain.data import StepSampler, TrainingSamples, camera_keys, check_dataset, policy_dims, split_episodes
    from posttrain.lerobot import LeRobotDataset, content_fingerprint
    from posttrain.policy import Normalizer, PolicyConfig

    dataset = LeRobotDataset(args.dataset)
    check_dataset(dataset)
    split = split_episodes(dataset, args.holdout_episodes)
    config = PolicyConfig.from_preset(  # state/action dims: every column modality.json's groups read (layout.py)
        args.preset,
        **policy_dims(dataset),
        num_cameras=len(camera_keys(dataset)),
        action_normalization=args.action_normalization,
    )
    normalizer = Normalizer(dataset.stats, dataset.modality, config)
    samples = TrainingSamples(
        dataset,
        split["train_episodes"],
        normalizer,
        color_jitter_params=args.color_jitter_params,
        state_dropout_prob=args.state_dropout_prob,
        seed=args.seed,
        frames=args.frames,
    )

    # Under torchrun without a GPU, accelerate only goes multi-process (gloo) when told cpu=True;
    # otherwise every process would silently train alone into the same run directory.
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        step_scheduler_with_optimizer=False,
        cpu=world_size > 1 and not torch.cuda.is_available(),
    )
    if accelerator.num_processes != world_size:
        raise PosttrainError(
            f"launched with WORLD_SIZE={world_size} but accelerate sees {accelerator.num_processes} process(es)"
        )
    per_device_batch = per_device_batch_size(
        args.global_batch_size, accelerator.num_processes, args.gradient_accumulation_steps
    )
    if not accelerator.is_main_process:
        log.setLevel(logging.WARNING)  # one copy of each progress line

    started = time.perf_counter()
    max_steps = resolve_steps(args.max_steps, args.epochs, args.min_steps, len(samples), args.global_batch_size)
    budget = length_line(args, max_steps, len(samples))
    identity = run_identity(args, content_fingerprint(dataset.root), max_steps)
    log.info("run identity %s (dataset fingerprint: %.1f s)", identity["id"], time.perf_counter() - started)
    start = plan_start(args.output, identity, args.resume)
    accelerator.wait_for_everyone()  # every process has decided before the main one moves anything
    if accelerator.is_main_process:
        args.output.mkdir(parents=True, exist_ok=True)
        carry_out(args.output, start)
    accelerator.wait_for_everyone()
    log.info(
        "%d train samples from %d episodes (held out: %s); %d process(es) × %d per device × %d accumulation",
        len(samples),
        len(split["train_episodes"]),
        split["heldout_episodes"],
        accelerator.num_processes,
        per_device_batch,
        args.gradient_accumulation_steps,
    )
    log.info("training length: %s", budget)

    set_seed(args.seed)  # same initial weights on every process
    model, optimizer, scheduler, warmup_steps = make_model(args, config, max_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    register_checkpoint_hooks(accelerator)
    start_step, log_history = 0, []
    if start.resume_from is not None:
        state = json.loads((start.resume_from / TRAINER_STATE).read_text())
        accelerator.load_state(str(start.resume_from))
        start_step, log_history = state["global_step"], state["log_history"]
        log.info("resumed from %s (step %d)", start.resume_from, start_step)
    else:
        log.info("training starts at step 0")
    sampler = StepSampler(
        len(samples),
        per_device_batch,
        accelerator.num_processes,
        accelerator.process_index,
        args.gradient_accumulation_steps,
        args.seed,
        start_step,
        max_steps,
    )
    record = train_config(
        args,
        steps=max_steps,
        budget=budget,
        num_processes=accelerator.num_processes,
        per_device_batch_size=per_device_batch,
        warmup_steps=warmup_steps,
        train_samples=len(samples),
        color_jitter=args.color_jitter_params,
        policy_config=config.to_dict(),
    )
    return Run(
        args,
        accelerator,
        dataset,
        split,
        samples,
        model,
        optimizer,
        scheduler,
        sampler,
        identity,
        record,
        start_step,
        max_steps,
        log_history,
    )


def make_model(args, config, max_steps: int):
    """The policy with the --tune-* groups trainable, AdamW and the warmup + cosine schedule."""
    import torch

    from posttrain.policy import PolicyModel

    model = PolicyModel(config)
    model.set_trainable(
        tune_llm=args.tune_llm,
        tune_visual=args.tune_visual,
        tune_projector=args.tune_projector,
        tune_diffusion_model=args.tune_diffusion_model,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise PosttrainError("nothing to train: every --tune-* flag is off")
    # Weight decay on matrices only; biases, norms and embeddings' 1-D params are not decayed.
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.learning_rate)
    warmup_steps = math.ceil(args.warmup_ratio * max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(warmup_steps, max_steps))
    return model, optimizer, scheduler, warmup_steps


def register_checkpoint_hooks(accelerator) -> None:
    """The checkpoint's model.safetensors holds the UNWRAPPED model (what Policy.from_checkpoint loads),
    written by save_pretrained; these hooks keep accelerate from writing/reading the (DDP-prefixed)
    wrapped state instead."""
    from safetensors.torch import load_file

    from posttrain.policy import save_pretrained

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            save_pretrained(accelerator.unwrap_model(models[0]), output_dir)
        weights.clear()

    def load_model_hook(models, input_dir):
        wrapped = models.pop(0)
        accelerator.unwrap_model(wrapped).load_state_dict(load_file(Path(input_dir) / "model.safetensors"))

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def train_step(r: Run, batches, step: int) -> tuple[float, float, float]:
    """Optimizer step `step` over the global batch (all processes, all accumulation micro-batches).
    Returns (mean loss over the global batch, seconds waiting for data, seconds computing)."""
    import torch

    args, accelerator = r.args, r.accelerator
    step_start, data_s = time.perf_counter(), 0.0
    step_loss, grad_norm = torch.zeros((), device=accelerator.device), None
    for _ in range(args.gradient_accumulation_steps):
        t0 = time.perf_counter()
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next_batch(batches).items()}
        data_s += time.perf_counter() - t0
        with accelerator.accumulate(r.model):
            loss = r.model(batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(r.model.parameters(), MAX_GRAD_NORM)
            r.optimizer.step()
            r.optimizer.zero_grad(set_to_none=True)
        step_loss += loss.detach() / args.gradient_accumulation_steps
    r.scheduler.step()
    mean_loss = accelerator.reduce(step_loss, "mean").item()  # mean over processes = global batch mean
    # Gradients are synchronised, so every process sees the same norm and stops at the same step.
    # fp16 is the exception: its loss scaler skips steps with inf gradients by design.
    norm = float(grad_norm) if grad_norm is not None and args.mixed_precision != "fp16" else None
    check_finite(args.output, step, mean_loss, norm, args.learning_rate)
    # .item() waited for the device, so the rest of the step's time is compute (and communication).
    return mean_loss, data_s, time.perf_counter() - step_start - data_s


def log_entry(r: Run, done: int, window: list[tuple[float, float, float]]) -> dict:
    """The log line of the steps in window (appended to the run's log history)."""
    n = len(window)
    data_s, compute_s = sum(w[1] for w in window), sum(w[2] for w in window)
    entry = {
        "step": done,
        "loss": sum(w[0] for w in window) / n,
        "learning_rate": r.scheduler.get_last_lr()[0],
        "epoch": r.sampler.epoch_at(done),
        "samples_per_s": n * r.args.global_batch_size / max(data_s + compute_s, 1e-9),
        "data_wait_s": data_s / n,
        "compute_s": compute_s / n,
    }
    r.log_history.append(entry)
    log.info(
        "step %d loss %.5f lr %.3e %.1f samples/s (data %.3fs, compute %.3fs per step)",
        done,
        entry["loss"],
        entry["learning_rate"],
        entry["samples_per_s"],
        entry["data_wait_s"],
        entry["compute_s"],
    )
    return entry


def save_checkpoint(r: Run, step: int) -> None:
    """checkpoint-{step}/: accelerate's state plus what eval and a resume read, sealed by a manifest,
    renamed into place whole, then the oldest checkpoints beyond --save-total-limit removed."""
    args, accelerator, run_dir = r.args, r.accelerator, r.args.output
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".checkpoint-{step}.tmp"
    if r.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    # Every process's weight checksum: they must agree (the test checks; a mismatch means broken sync).
    checksum = sum(p.detach().double().sum() for p in accelerator.unwrap_model(r.model).parameters())
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).tolist()
    accelerator.wait_for_everyone()
    if r.main:
        shutil.copyfile(r.dataset.root / "meta" / "stats.json", tmp / "stats.json")
        shutil.copyfile(r.dataset.root / "meta" / "modality.json", tmp / "modality.json")
        write_json_atomic(tmp / "split.json", r.split)
        write_json_atomic(tmp / "train_config.json", r.record)
        write_json_atomic(tmp / IDENTITY, r.identity)
        state = {
            "global_step": step,
            "max_steps": r.max_steps,
            "samples_seen": step * args.global_batch_size,
            "epoch": r.sampler.epoch_at(step),
            "global_batch_size": args.global_batch_size,
            "num_processes": accelerator.num_processes,
            "weight_checksum_per_process": checksums,
            "log_history": r.log_history,
        }
        seal(tmp, TRAINER_STATE, json.dumps(state, indent=2) + "\n")  # manifest, then trainer_state.json
        os.rename(tmp, final)  # nothing is there: plan_start set aside every checkpoint past the one resumed
        rotate_checkpoints(run_dir, args.save_total_limit)
        log.info("saved %s", final)
    accelerator.wait_for_everyone()


def finish(r: Run) -> None:
    """DONE.json, written last: the run is complete and names its final checkpoint."""
    if r.main:
        last = r.log_history[-1] if r.log_history else {}
        write_json_atomic(
            r.args.output / "DONE.json",
            {
                "final_checkpoint": f"checkpoint-{r.max_steps}",
                "step": r.max_steps,
                "final_loss": last.get("loss"),
                "samples_seen": r.max_steps * r.args.global_batch_size,
                "num_processes": r.accelerator.num_processes,
                "identity": r.identity["id"],
            },
        )
        log.info("done: %s", r.args.output / "DONE.json")
    r.accelerator.wait_for_everyone()
    r.accelerator.end_training()
