"""The gr00t backend hands Isaac-GR00T's launch_finetune.py exactly the seed command's flags.

A stand-in checkout (tmp_path/Isaac-GR00T/gr00t/experiment/launch_finetune.py) records the argv it
receives and makes checkpoint directories. The `posttrain train` arguments come from the workflow's
own plan (`snakemake -n -p` with a hardware profile and `train.backend: gr00t`), so the test covers
profile -> preset overlay -> rule -> backend -> argv.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, run_cli

STAND_IN = '''\
import json, sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("--output-dir") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "argv.json").write_text(json.dumps(sys.argv))
steps, every = int(args[args.index("--max-steps") + 1]), int(args[args.index("--save-steps") + 1])
for step in range(every, steps + 1, every):
    (out / f"checkpoint-{step}").mkdir(exist_ok=True)
'''

# shared/docs/gr00t_n16.md §3, the Arena GR1 seed commands (without --use-wandb: our config's
# use_wandb is false), then the optimizer settings GR00T would otherwise default (equal values).
SEED_8GPU = ("--embodiment-tag GR1 --num-gpus 8 --global-batch-size 96 --max-steps 20000 --save-steps 5000 "
             "--save-total-limit 5 --dataloader-num-workers 16 --no-tune-llm --tune-visual --tune-projector "
             "--tune-diffusion-model --color-jitter-params brightness 0.3 contrast 0.4 saturation 0.5 hue 0.08")
SEED_1GPU = ("--embodiment-tag GR1 --num-gpus 1 --global-batch-size 16 --max-steps 30000 --save-steps 5000 "
             "--save-total-limit 3 --dataloader-num-workers 4 --no-tune-llm --tune-visual --tune-projector "
             "--tune-diffusion-model --color-jitter-params brightness 0.3 contrast 0.4 saturation 0.5 hue 0.08")
OPTIMIZER = "--learning-rate 0.0001 --weight-decay 1e-05 --warmup-ratio 0.05 --gradient-accumulation-steps 1"


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
    overlay.write_text(json.dumps({"train": {"backend": "gr00t", "gr00t": {
        "repo": str(stand_in), "modality_config_path": str(tmp_path / "gr1_arms_only_data_config.py")}}}))
    hw = {"single-gpu": "gpu1", "local8gpu": "gpu8"}[profile]
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", f"profiles/{profile}", "--workflow-profile", "none",
         "--directory", str(tmp_path / "plan"), "-n", "-p", "-F", "--configfile",
         str(REPO / "config" / "config.yaml"), str(REPO / "config" / "hw" / f"{hw}.yaml"), str(overlay)],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    command = next(line for line in result.stdout.splitlines() if "posttrain train" in line)
    command = command.split("posttrain train", 1)[1].split(" >> ", 1)[0]
    return shlex.split(command)


def seed_flags(stand_in: Path, workdir: Path, run: str, seed: str) -> list[str]:
    return ["--base-model-path", "nvidia/GR00T-N1.6-3B",
            "--dataset-path", str(workdir / "results" / "synthetic_gr1" / "lerobot"),
            "--output-dir", str(workdir / "results" / "synthetic_gr1" / "train" / run),
            "--modality-config-path", str(stand_in.parent / "gr1_arms_only_data_config.py"),
            *seed.split(), *OPTIMIZER.split()]


def test_single_gpu_preset_runs_the_seed_command(stand_in, workdir, tmp_path):
    args = planned_train_args("single-gpu", stand_in, tmp_path)
    assert run_cli("train", *args) == 0
    run_dir = workdir / "results" / "synthetic_gr1" / "train" / "gpu1"
    argv = json.loads((run_dir / "argv.json").read_text())
    script = stand_in / "gr00t" / "experiment" / "launch_finetune.py"
    assert argv == [str(script), *seed_flags(stand_in, workdir, "gpu1", SEED_1GPU)]
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["final_checkpoint"] == "checkpoint-30000" and done["step"] == 30000


def test_8gpu_preset_prints_the_seed_torchrun_command(stand_in, workdir, tmp_path, capsys):
    args = planned_train_args("local8gpu", stand_in, tmp_path)
    assert run_cli("train", *args, "--print-command") == 0
    command = shlex.split(capsys.readouterr().out.strip())
    script = stand_in / "gr00t" / "experiment" / "launch_finetune.py"
    assert Path(command[0]).name == "torchrun"
    assert command[1:] == ["--nproc_per_node=8", "--standalone", str(script),
                           *seed_flags(stand_in, workdir, "gpu8", SEED_8GPU)]
    assert not (workdir / "results" / "synthetic_gr1" / "train" / "gpu8" / "DONE.json").exists()


def base_args(stand_in: Path, *extra: str) -> list[str]:
    return ["train", "--backend", "gr00t", "--dataset", "results/synthetic_gr1/lerobot", "--output", "run",
            "--gr00t-repo", str(stand_in), "--max-steps", "4", "--save-steps", "2", *extra]


def test_resume_is_implicit_and_no_resume_is_refused(stand_in, workdir, capsys):
    (workdir / "run" / "checkpoint-2").mkdir(parents=True)
    assert run_cli(*base_args(stand_in, "--no-resume")) == 2
    assert "run: has checkpoint-2; Isaac-GR00T always resumes" in capsys.readouterr().err
    assert run_cli(*base_args(stand_in)) == 0  # default --resume: GR00T picks checkpoint-2 up itself
    assert json.loads((workdir / "run" / "DONE.json").read_text())["final_checkpoint"] == "checkpoint-4"


@pytest.mark.parametrize("extra, message", [
    (["--gr00t-repo", "nowhere"], "launch_finetune.py: not found: --gr00t-repo nowhere is not an Isaac-GR00T checkout"),
    (["--num-gpus", "3", "--global-batch-size", "32"], "--global-batch-size 32 is not divisible by --num-gpus 3"),
    (["--num-gpus", "0"], "--num-gpus 0: the gr00t backend needs at least one GPU"),
    (["--color-jitter-params", "sharpness", "0.1"], "--color-jitter-params: unknown key 'sharpness'"),
])
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
