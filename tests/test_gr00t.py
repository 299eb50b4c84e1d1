"""The gr00t backend hands Isaac-GR00T's launch_finetune.py exactly the seed command's flags.

A stand-in checkout (tmp_path/Isaac-GR00T/gr00t/experiment/launch_finetune.py) records the argv it
receives and makes checkpoint directories. The `posttrain train` arguments come from the workflow's
own plan (`snakemake -n -p` with a hardware profile and `train.backend: gr00t`), so the test covers
profile -> preset overlay -> rule -> backend -> argv.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

STAND_IN = """\
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv))
steps, every = int(args[args.index("--max-steps") + 1]), int(args[args.index("--save-steps") + 1])
for step in range(every, steps + 1, every):
    (out / f"checkpoint-{step}").mkdir(exist_ok=True)
"""

# shared/docs/gr00t_n16.md §3, the Arena GR1 seed commands (without --use-wandb: our config's
# use_wandb is false), then the optimizer settings GR00T would otherwise default (equal values).
SEED_8GPU = (
    "--embodiment-tag GR1 --num-gpus 8 --global-batch-size 96 --max-steps 20000 --save-steps 5000 "
    "--save-total-limit 5 --dataloader-num-workers 16 --no-tune-llm --tune-visual --tune-projector "
    "--tune-diffusion-model --color-jitter-params brightness 0.3 contrast 0.4 saturation 0.5 hue 0.08"
)
SEED_1GPU = (
    "--embodiment-tag GR1 --num-gpus 1 --global-batch-size 16 --max-steps 30000 --save-steps 5000 "
    "--save-total-limit 3 --dataloader-num-workers 4 --no-tune-llm --tune-visual --tune-projector "
    "--tune-diffusion-model --color-jitter-params brightness 0.3 contrast 0.4 saturation 0.5 hue 0.08"
)
OPTIMIZER = "--learning-rate 0.0001 --weight-decay 1e-05 --warmup-ratio 0.05 --gradient-accumulation-steps 1"
# config/hw/gpu1.yaml, sized for 24 GB (tests/test_memory_budget.py): the per-embodiment projector
# only (the seed's tuning needs ~40 GB), 2 x 8 samples per optimizer step = the seed's batch of 16.
GPU1_24GB = SEED_1GPU.replace("--global-batch-size 16", "--global-batch-size 8").replace(
    "--tune-visual --tune-projector --tune-diffusion-model",
    "--no-tune-visual --tune-projector --no-tune-diffusion-model",
)
OPTIMIZER_2X = OPTIMIZER.replace("--gradient-accumulation-steps 1", "--gradient-accumulation-steps 2")


@pytest.fixture
def stand_in(tmp_path) -> Path:
    repo = tmp_path / "Isaac-GR00T"
    script = repo / "gr00t" / "experiment" / "launch_finetune.py"
    script.parent.mkdir(parents=True)
    script.write_text(STAND_IN)
    (tmp_path / "gr1_arms_only_data_config.py").write_text("# registers the GR1 modality config\n")
    return repo


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory holding a (minimal) converted dataset where the workflow puts it."""
    meta = tmp_path / "work" / "results" / "synthetic_gr1" / "lerobot" / "meta"
    meta.mkdir(parents=True)
    for name in ("info.json", "modality.json", "stats.json"):
        (meta / name).write_text("{}\n")
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("POSTTRAIN_GR00T_SKIP_GPU_CHECK", "1")  # no GPUs here
    return tmp_path / "work"


def planned_train_args(profile: str, stand_in: Path, tmp_path: Path) -> list[str]:
    """`posttrain train ...` arguments of the train job the profile plans with backend gr00t."""
    overlay = tmp_path / "gr00t.yaml"
    overlay.write_text(
        json.dumps(
            {
                "train": {
                    "backend": "gr00t",
                    "gr00t": {
                        "repo": str(stand_in),
                        "modality_config_path": str(tmp_path / "gr1_arms_only_data_config.py"),
                    },
                }
            }
        )
    )
    hw = {"single-gpu": "gpu1", "single-gpu-48gb": "gpu1-48gb", "local8gpu": "gpu8"}[profile]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            f"profiles/{profile}",
            "--workflow-profile",
            "none",
            "--directory",
            str(tmp_path / "plan"),
            "-n",
            "-p",
            "-F",
            "--configfile",
            str(REPO / "config" / "config.yaml"),
            str(REPO / "config" / "hw" / f"{hw}.yaml"),
            str(overlay),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    command = next(line for line in result.stdout.splitlines() if "posttrain train" in line)
    command = re.split(r" (?:>>|2>&1) ", command.split("posttrain train", 1)[1], maxsplit=1)[0]
    return shlex.split(command)


def seed_flags(stand_in: Path, workdir: Path, output_dir: Path, seed: str, optimizer: str = OPTIMIZER) -> list[str]:
    return [
        "--base-model-path",
        "nvidia/GR00T-N1.6-3B",
        "--dataset-path",
        str(workdir / "results" / "synthetic_gr1" / "lerobot"),
        "--output-dir",
        str(output_dir),
        "--modality-config-path",
        str(stand_in.parent / "gr1_arms_only_data_config.py"),
        *seed.split(),
        *optimizer.split(),
    ]


def gr00t_dirs(run_dir: Path) -> list[Path]:
    """GR00T output directories of a run directory: one per run identity, gr00t-<12 hex digits>."""
    found = sorted(p for p in run_dir.glob("gr00t-*") if p.is_dir())
    assert all(re.fullmatch(r"gr00t-[0-9a-f]{12}", p.name) for p in found), found
    return found


@pytest.mark.slow
def test_single_gpu_preset_runs_the_24gb_command(stand_in, workdir, tmp_path):
    args = planned_train_args("single-gpu", stand_in, tmp_path)
    assert run_cli("train", *args) == 0
    run_dir = workdir / "results" / "synthetic_gr1" / "train" / "gpu1"
    [out] = gr00t_dirs(run_dir)
    argv = json.loads((out / "argv.json").read_text())
    script = stand_in / "gr00t" / "experiment" / "launch_finetune.py"
    assert argv == [str(script), *seed_flags(stand_in, workdir, out, GPU1_24GB, OPTIMIZER_2X)]
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["final_checkpoint"] == f"{out.name}/checkpoint-30000" and done["step"] == 30000


@pytest.mark.slow
def test_8gpu_preset_prints_the_seed_torchrun_command(stand_in, workdir, tmp_path, capsys):
    args = planned_train_args("local8gpu", stand_in, tmp_path)
    assert run_cli("train", *args, "--print-command") == 0
    command = shlex.split(capsys.readouterr().out.strip())
    script = stand_in / "gr00t" / "experiment" / "launch_finetune.py"
    run_dir = workdir / "results" / "synthetic_gr1" / "train" / "gpu8"
    out = Path(command[command.index("--output-dir") + 1])
    assert out.parent == run_dir and re.fullmatch(r"gr00t-[0-9a-f]{12}", out.name)
    assert Path(command[0]).name == "torchrun"
    assert command[1:] == [
        "--nproc_per_node=8",
        "--standalone",
        str(script),
        *seed_flags(stand_in, workdir, out, SEED_8GPU),
    ]
    assert not run_dir.exists()  # printing the command writes nothing


@pytest.mark.slow
def test_48gb_preset_prints_the_seed_single_gpu_command(stand_in, workdir, tmp_path, capsys):
    args = planned_train_args("single-gpu-48gb", stand_in, tmp_path)
    assert run_cli("train", *args, "--print-command") == 0
    command = shlex.split(capsys.readouterr().out.strip())
    out = Path(command[command.index("--output-dir") + 1])
    assert out.parent == workdir / "results" / "synthetic_gr1" / "train" / "gpu1-48gb"
    script = stand_in / "gr00t" / "experiment" / "launch_finetune.py"
    assert command[1:] == [str(script), *seed_flags(stand_in, workdir, out, SEED_1GPU)]


def base_args(stand_in: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--backend",
        "gr00t",
        "--dataset",
        "results/synthetic_gr1/lerobot",
        "--output",
        "run",
        "--gr00t-repo",
        str(stand_in),
        "--max-steps",
        "4",
        "--save-steps",
        "2",
        *extra,
    ]


def output_dir_of(run_dir: Path) -> Path:
    return run_dir / json.loads((run_dir / "DONE.json").read_text())["final_checkpoint"].split("/")[0]


def test_same_run_resumes_and_another_run_trains_in_a_fresh_directory(stand_in, workdir, caplog):
    caplog.set_level(logging.INFO, logger="posttrain")
    run_dir = workdir / "run"
    assert run_cli(*base_args(stand_in)) == 0
    first = output_dir_of(run_dir)
    assert (first / "checkpoint-4").is_dir()
    assert json.loads((run_dir / "DONE.json").read_text())["final_checkpoint"] == f"{first.name}/checkpoint-4"

    # The same run, the dataset spelled as an absolute path: GR00T resumes it in the same directory.
    absolute = [
        a if a != "results/synthetic_gr1/lerobot" else str(workdir / "results/synthetic_gr1/lerobot")
        for a in base_args(stand_in)
    ]
    caplog.clear()
    assert run_cli(*absolute) == 0
    assert gr00t_dirs(run_dir) == [first] and f"resuming from run/{first.name}/checkpoint-4" in caplog.text

    # Another learning rate is another run: a fresh output directory; the old one is kept as it was.
    caplog.clear()
    assert run_cli(*base_args(stand_in, "--learning-rate", "5e-5")) == 0
    second = output_dir_of(run_dir)
    assert second != first and gr00t_dirs(run_dir) == sorted([first, second])
    assert (first / "checkpoint-4").is_dir() and "resuming" not in caplog.text
    assert "is another run (learning_rate: 0.001 -> 5e-05): kept" in caplog.text
    argv = json.loads((second / "argv.json").read_text())
    assert argv[argv.index("--output-dir") + 1] == str(second)

    # New dataset content (recomputed stats) is another run too.
    (workdir / "results/synthetic_gr1/lerobot/meta/stats.json").write_text('{"action": {}}\n')
    caplog.clear()
    assert run_cli(*base_args(stand_in)) == 0
    third = output_dir_of(run_dir)
    assert third not in (first, second) and len(gr00t_dirs(run_dir)) == 3
    assert "dataset content changed (meta/stats.json)" in caplog.text


def test_no_resume_moves_the_old_run_aside(stand_in, workdir, caplog):
    run_dir = workdir / "run"
    assert run_cli(*base_args(stand_in)) == 0
    first = output_dir_of(run_dir)
    (first / "checkpoint-4" / "weights").write_text("trained")
    assert run_cli(*base_args(stand_in, "--no-resume")) == 0
    [kept] = (run_dir / "superseded").glob(f"*-no-resume/{first.name}")
    assert (kept / "checkpoint-4" / "weights").read_text() == "trained"  # moved, not deleted
    assert output_dir_of(run_dir) == first and not (first / "checkpoint-4" / "weights").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--gr00t-repo", "nowhere"],
            "launch_finetune.py: not found: --gr00t-repo nowhere is not an Isaac-GR00T checkout",
        ),
        (["--num-gpus", "3", "--global-batch-size", "32"], "--global-batch-size 32 is not divisible by --num-gpus 3"),
        (
            ["--num-gpus", "2", "--gradient-accumulation-steps", "3"],
            "--global-batch-size 32 is not divisible by --num-gpus 2 x --gradient-accumulation-steps 3",
        ),
        (["--num-gpus", "0"], "--num-gpus: must be >= 1, got 0"),
        (["--color-jitter-params", "sharpness", "0.1"], "--color-jitter-params: unknown key 'sharpness'"),
    ],
)
def test_bad_options_fail_before_launching(stand_in, workdir, capsys, extra, message):
    assert run_cli(*base_args(stand_in, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "run").exists()


def test_missing_gpus_fail_before_launching(stand_in, workdir, capsys, monkeypatch):
    monkeypatch.delenv("POSTTRAIN_GR00T_SKIP_GPU_CHECK")
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs")
    assert run_cli(*base_args(stand_in, "--num-gpus", "2")) == 2
    assert "--num-gpus 2: this machine has" in capsys.readouterr().err
    assert not (workdir / "run" / "argv.json").exists()


def test_missing_dataset_files_fail_before_launching(stand_in, workdir, capsys):
    (workdir / "results" / "synthetic_gr1" / "lerobot" / "meta" / "stats.json").unlink()
    assert run_cli(*base_args(stand_in)) == 2
    assert "meta/stats.json: not found" in capsys.readouterr().err
    assert not (workdir / "run" / "argv.json").exists()


def test_global_batch_is_per_optimizer_step_with_accumulation(stand_in, workdir, capsys):
    """GR00T multiplies its --global-batch-size by --gradient-accumulation-steps; ours is the batch
    per optimizer step (as the native trainer's), so GR00T gets global / accumulation."""
    assert (
        run_cli(
            *base_args(stand_in, "--global-batch-size", "16", "--gradient-accumulation-steps", "4", "--print-command")
        )
        == 0
    )
    command = shlex.split(capsys.readouterr().out.strip())
    flag = {name: command[command.index(name) + 1] for name in ("--global-batch-size", "--gradient-accumulation-steps")}
    assert flag == {"--global-batch-size": "4", "--gradient-accumulation-steps": "4"}
