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
It also resumes implicitly from any checkpoint-* in the output directory and has no switch to
stop that, so `--no-resume` with existing checkpoints is an error rather than a silent resume.

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
        raise PosttrainError(f"--color-jitter-params: unknown key {unknown[0]!r}, expected one of "
                             f"{', '.join(JITTER_KEYS)}")
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


def build_command(args) -> list[str]:
    """The launch command for these `posttrain train` options (checks the checkout, not the GPUs)."""
    if not args.gr00t_repo:
        raise PosttrainError("--backend gr00t needs --gr00t-repo (an Isaac-GR00T checkout, n1.6-release)")
    repo = Path(args.gr00t_repo).resolve()
    script = repo / LAUNCH_SCRIPT
    if not script.is_file():
        raise PosttrainError(f"{script}: not found: --gr00t-repo {args.gr00t_repo} is not an Isaac-GR00T "
                             "checkout (need gr00t/experiment/launch_finetune.py, n1.6-release)")
    gpus = args.num_gpus
    if gpus < 1:
        raise PosttrainError(f"--num-gpus {gpus}: the gr00t backend needs at least one GPU")
    if args.global_batch_size % gpus:
        raise PosttrainError(f"--global-batch-size {args.global_batch_size} is not divisible by --num-gpus {gpus} "
                             "(GR00T splits the global batch evenly over the GPUs)")
    if gpus == 1:
        launcher = [_interpreter(repo, "python")]
    else:
        launcher = [_interpreter(repo, "torchrun"), f"--nproc_per_node={gpus}", "--standalone"]
    flags = [
        "--base-model-path", str(args.base_model_path),
        "--dataset-path", str(Path(args.dataset).resolve()),
        "--output-dir", str(Path(args.output).resolve()),
    ]
    if args.modality_config_path:
        flags += ["--modality-config-path", str(Path(args.modality_config_path).resolve())]
    flags += [
        "--embodiment-tag", str(args.embodiment_tag),
        "--num-gpus", str(gpus),
        "--global-batch-size", str(args.global_batch_size),
        "--max-steps", str(args.max_steps),
        "--save-steps", str(args.save_steps),
        "--save-total-limit", str(args.save_total_limit),
        "--dataloader-num-workers", str(args.dataloader_num_workers),
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
        "--learning-rate", str(args.learning_rate),
        "--weight-decay", str(args.weight_decay),
        "--warmup-ratio", str(args.warmup_ratio),
        "--gradient-accumulation-steps", str(args.gradient_accumulation_steps),
    ]
    return [*launcher, str(script), *flags]


def check_gpus(wanted: int) -> None:
    if os.environ.get("POSTTRAIN_GR00T_SKIP_GPU_CHECK") == "1":
        log.warning("GPU check skipped (POSTTRAIN_GR00T_SKIP_GPU_CHECK=1, for tests only)")
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < wanted:
        raise PosttrainError(f"--num-gpus {wanted}: this machine has {found} CUDA device(s) visible to torch "
                             f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")


def check_dataset(dataset: Path) -> None:
    for name in ("info.json", "modality.json", "stats.json"):
        if not (dataset / "meta" / name).is_file():
            raise PosttrainError(f"{dataset / 'meta' / name}: not found: --dataset must be a converted LeRobot "
                                 "v2.1 dataset with stats (posttrain convert, posttrain stats)")


def launch(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    command = build_command(args)
    if args.print_command:
        print(shlex.join(command))
        return 0
    run_dir = Path(args.output)
    existing = checkpoints(run_dir)
    if existing and not args.resume:
        raise PosttrainError(f"{run_dir}: has {existing[-1].name}; Isaac-GR00T always resumes from checkpoints in "
                             "its output directory and cannot be told not to: remove them or use another --output")
    check_dataset(Path(args.dataset))
    check_gpus(args.num_gpus)
    run_dir.mkdir(parents=True, exist_ok=True)
    if existing:
        log.info("resuming from %s (GR00T resumes from the newest checkpoint-* in --output-dir)", existing[-1].name)
    log.info("launching: %s", shlex.join(command))
    repo = Path(args.gr00t_repo).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    status = subprocess.run(command, cwd=repo, env=env).returncode
    if status != 0:
        raise PosttrainError(f"{repo / LAUNCH_SCRIPT}: exited with status {status} (its output is above)")
    done = checkpoints(run_dir)
    if not done:
        raise PosttrainError(f"{run_dir}: {LAUNCH_SCRIPT.name} finished but wrote no checkpoint-* directory")
    final = done[-1]
    step = int(CHECKPOINT.match(final.name).group(1))
    write_json_atomic(run_dir / "DONE.json", {"final_checkpoint": final.name, "step": step, "backend": "gr00t",
                                              "command": command})
    log.info("done: %s", final)
    return 0
