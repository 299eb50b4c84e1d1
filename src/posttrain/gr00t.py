"""`posttrain train --backend gr00t`: run Isaac-GR00T N1.6's own fine-tuning script on our dataset.

Builds the seed command (shared/docs/gr00t_n16.md §3) from the parsed `posttrain train` options,

    torchrun --nproc_per_node=N --standalone <repo>/gr00t/experiment/launch_finetune.py \
        --base-model-path ... --dataset-path ... --output-dir ... --modality-config-path ... \
        --embodiment-tag GR1 --num-gpus N --global-batch-size ... --max-steps ... --save-steps ... \
        --save-total-limit ... --dataloader-num-workers ... --[no-]tune-llm ... \
        --color-jitter-params brightness 0.3 ... [--use-wandb] --learning-rate ... --weight-decay ... \
        --warmup-ratio ... --gradient-accumulation-steps ...

(one GPU: plain `python <script> ...`, as the seed's low-hardware command), runs it, and writes
RUN_DIR/DONE.json pointing at the newest checkpoint-N. The interpreter is the checkout's own
environment when it has one (`<repo>/.venv`, made by `uv sync`), else this Python.

GR00T fixes what our native trainer makes options: bf16, seed 42, cosine schedule; so --preset,
--mixed-precision, --seed, --holdout-episodes and --action-normalization do not reach it.
It also resumes implicitly from any checkpoint-* in its output directory and has no switch to
stop that. So the output directory is per run identity (posttrain.runs: the options that reach
GR00T, the dataset's content, the modality config's content, this launcher's code):
RUN_DIR/gr00t-<id12>/. A changed identity trains in a fresh directory and the old one is kept;
`--no-resume` moves this identity's directory to RUN_DIR/superseded/ first.

POSTTRAIN_GR00T_SKIP_GPU_CHECK=1 skips the CUDA device count check: for tests only (a stand-in
checkout on a machine without GPUs).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.files import write_json_atomic
from posttrain.lerobot import content_fingerprint
from posttrain.runs import IDENTITY, differences, file_record, make_identity, read_identity, set_aside
from posttrain.workflow import code_version

log = logging.getLogger("posttrain.gr00t")

LAUNCH_SCRIPT = Path("gr00t") / "experiment" / "launch_finetune.py"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")  # the seed command's order


def checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N directories in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.match(p.name).group(1)))


def color_jitter_pairs(params) -> list[str]:
    """`{"brightness": 0.3, ...}` or the CLI's `["brightness", "0.3", ...]` -> tyro's KEY VALUE list."""
    if not params:
        return []
    if not isinstance(params, dict):
        values = list(params)
        if len(values) % 2:
            raise PosttrainError(f"--color-jitter-params: expected KEY VALUE pairs, got {' '.join(values)}")
        params = dict(zip(values[::2], values[1::2]))
    unknown = sorted(set(params) - set(JITTER_KEYS))
    if unknown:
        raise PosttrainError(
            f"--color-jitter-params: unknown key {unknown[0]!r}, expected one of {', '.join(JITTER_KEYS)}"
        )
    return [item for key in JITTER_KEYS if key in params for item in (key, str(params[key]))]


def _bool_flag(name: str, value: bool) -> str:
    return f"--{name}" if value else f"--no-{name}"


def _interpreter(repo: Path, name: str) -> str:
    """`python`/`torchrun` from the checkout's own environment if it has one, else ours."""
    own = repo / ".venv" / "bin" / name
    if own.is_file():
        return str(own)
    if name == "python":
        return sys.executable
    beside_python = Path(sys.executable).with_name("torchrun")
    return str(beside_python) if beside_python.is_file() else (shutil.which("torchrun") or "torchrun")


def build_command(args, output_dir: Path) -> list[str]:
    """The launch command for these `posttrain train` options (checks the checkout, not the GPUs)."""
    if not args.gr00t_repo:
        raise PosttrainError("--backend gr00t needs --gr00t-repo (an Isaac-GR00T checkout, n1.6-release)")
    repo = Path(args.gr00t_repo).resolve()
    script = repo / LAUNCH_SCRIPT
    if not script.is_file():
        raise PosttrainError(
            f"{script}: not found: --gr00t-repo {args.gr00t_repo} is not an Isaac-GR00T "
            "checkout (need gr00t/experiment/launch_finetune.py, n1.6-release)"
        )
    gpus = args.num_gpus  # >= 1 (posttrain train's parser)
    # Our --global-batch-size is the batch per optimizer step, as in the native trainer. GR00T's is
    # the batch of one forward pass over all GPUs, which its --gradient-accumulation-steps multiplies.
    accumulation = args.gradient_accumulation_steps
    if accumulation < 1 or args.global_batch_size % (gpus * accumulation):
        raise PosttrainError(
            f"--global-batch-size {args.global_batch_size} is not divisible by --num-gpus {gpus} "
            f"x --gradient-accumulation-steps {accumulation} (GR00T splits the batch evenly over "
            "the GPUs and the accumulation steps)"
        )
    if gpus == 1:
        launcher = [_interpreter(repo, "python")]
    else:
        launcher = [_interpreter(repo, "torchrun"), f"--nproc_per_node={gpus}", "--standalone"]
    flags = [
        "--base-model-path",
        str(args.base_model_path),
        "--dataset-path",
        str(Path(args.dataset).resolve()),
        "--output-dir",
        str(Path(output_dir).resolve()),
    ]
    if args.modality_config_path:
        flags += ["--modality-config-path", str(Path(args.modality_config_path).resolve())]
    flags += [
        "--embodiment-tag",
        str(args.embodiment_tag),
        "--num-gpus",
        str(gpus),
        "--global-batch-size",
        str(args.global_batch_size // accumulation),
        "--max-steps",
        str(args.max_steps),
        "--save-steps",
        str(args.save_steps),
        "--save-total-limit",
        str(args.save_total_limit),
        "--dataloader-num-workers",
        str(args.dataloader_num_workers),
        _bool_flag("tune-llm", args.tune_llm),
        _bool_flag("tune-visual", args.tune_visual),
        _bool_flag("tune-projector", args.tune_projector),
        _bool_flag("tune-diffusion-model", args.tune_diffusion_model),
    ]
    jitter = color_jitter_pairs(args.color_jitter_params)
    if jitter:
        flags += ["--color-jitter-params", *jitter]
    if args.use_wandb:
        flags.append("--use-wandb")
    if args.state_dropout_prob:  # GR00T's default is 0; the seed commands leave it out
        flags += ["--state-dropout-prob", str(args.state_dropout_prob)]
    flags += [
        "--learning-rate",
        str(args.learning_rate),
        "--weight-decay",
        str(args.weight_decay),
        "--warmup-ratio",
        str(args.warmup_ratio),
        "--gradient-accumulation-steps",
        str(args.gradient_accumulation_steps),
    ]
    return [*launcher, str(script), *flags]


def check_gpus(wanted: int) -> None:
    if os.environ.get("POSTTRAIN_GR00T_SKIP_GPU_CHECK") == "1":
        log.warning("GPU check skipped (POSTTRAIN_GR00T_SKIP_GPU_CHECK=1, for tests only)")
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < wanted:
        raise PosttrainError(
            f"--num-gpus {wanted}: this machine has {found} CUDA device(s) visible to torch "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
        )


def check_dataset(dataset: Path) -> None:
    for name in ("info.json", "modality.json", "stats.json"):
        if not (dataset / "meta" / name).is_file():
            raise PosttrainError(
                f"{dataset / 'meta' / name}: not found: --dataset must be a converted LeRobot "
                "v2.1 dataset with stats (posttrain convert, posttrain stats)"
            )


# The options that reach GR00T and change what it computes (not: paths, GPU count, workers, saving).
RUN_DEFINING = (
    "base_model_path",
    "embodiment_tag",
    "global_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "learning_rate",
    "weight_decay",
    "warmup_ratio",
    "state_dropout_prob",
    "tune_llm",
    "tune_visual",
    "tune_projector",
    "tune_diffusion_model",
)


def run_identity(args) -> dict:
    """This run's identity (posttrain.runs): the options GR00T sees, the content of the dataset and of
    the modality config file, and the code version of this launcher."""
    options = {name: getattr(args, name) for name in RUN_DEFINING}
    pairs = color_jitter_pairs(args.color_jitter_params)
    options["color_jitter_params"] = {key: number(value) for key, value in zip(pairs[::2], pairs[1::2])}
    modality = Path(args.modality_config_path) if args.modality_config_path else None
    options["modality_config"] = file_record(modality)["sha256"] if modality and modality.is_file() else None
    return make_identity(options, content_fingerprint(args.dataset), code_version("gr00t"))


def number(text: str) -> float | str:
    """'0.30' and '0.3' are one value; what is not a number stays text (GR00T will refuse it)."""
    try:
        return float(text)
    except ValueError:
        return text


def output_dir(run_dir: Path, identity: dict) -> Path:
    """GR00T resumes from any checkpoint-* in its --output-dir: one directory per run identity."""
    return run_dir / f"gr00t-{identity['id'][:12]}"


def other_runs(run_dir: Path, current: Path) -> list[Path]:
    """Output directories of runs with another identity, oldest first."""
    found = [p for p in run_dir.glob("gr00t-*") if p.is_dir() and p != current]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def launch(args) -> int:
    check_dataset(Path(args.dataset))
    run_dir = Path(args.output)
    identity = run_identity(args)
    out = output_dir(run_dir, identity)
    command = build_command(args, out)
    if args.print_command:
        print(shlex.join(command))
        return 0
    check_gpus(args.num_gpus)
    if checkpoints(out) and not args.resume:
        target = set_aside(run_dir, [out], "no-resume")
        log.warning("set aside %s (--no-resume): moved to %s", out.name, target)
    others = other_runs(run_dir, out)
    if others and not out.exists():
        log.warning(
            "%s is another run (%s): kept; this run trains in %s",
            others[-1],
            differences(read_identity(others[-1]), identity),
            out,
        )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / IDENTITY, identity)
    existing = checkpoints(out)
    if existing:
        log.info("resuming from %s (GR00T resumes from the newest checkpoint-* in --output-dir)", existing[-1])
    (run_dir / "DONE.json").unlink(missing_ok=True)  # the run changes now: not done until it says so again
    log.info("launching: %s", shlex.join(command))
    repo = Path(args.gr00t_repo).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    status = subprocess.run(command, cwd=repo, env=env).returncode
    if status != 0:
        raise PosttrainError(f"{repo / LAUNCH_SCRIPT}: exited with status {status} (its output is above)")
    done = checkpoints(out)
    if not done:
        raise PosttrainError(f"{out}: {LAUNCH_SCRIPT.name} finished but wrote no checkpoint-* directory")
    final = done[-1]
    step = int(CHECKPOINT.match(final.name).group(1))
    write_json_atomic(
        run_dir / "DONE.json",
        {
            "final_checkpoint": f"{out.name}/{final.name}",
            "step": step,
            "backend": "gr00t",
            "identity": identity["id"],
            "command": command,
        },
    )
    log.info("done: %s", final)
    return 0
