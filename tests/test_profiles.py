"""Profiles: each plans the seed's training settings, bare names work after install_profiles.sh,
and a GPU profile on a machine without the GPUs fails before training starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PROFILES = ("local8gpu", "single-gpu", "slurm")


def plan(profile: str, workdir: Path, env: dict | None = None) -> str:
    """`snakemake --profile PROFILE -n -p -F` from the repo root: every job's command."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", profile, "--workflow-profile", "none",
         "--directory", str(workdir), "-n", "-p", "-F"],
        capture_output=True, text=True, cwd=REPO, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def train_command(plan_text: str) -> str:
    return next(line for line in plan_text.splitlines() if " train --dataset " in line)


def test_each_profile_ships_exactly_one_profile_file():
    for name in PROFILES:
        files = sorted(p.name for p in (REPO / "profiles" / name).iterdir() if p.suffix == ".yaml")
        assert files == ["profile.yaml"], name
    assert not (REPO / "profiles" / "default").exists()  # it would override every --profile


def test_local8gpu_plans_the_8gpu_seed_settings(tmp_path):
    command = train_command(plan("profiles/local8gpu", tmp_path))
    for expected in ["--global-batch-size 96", "--max-steps 20000", "--save-steps 5000", "--save-total-limit 5",
                     "--dataloader-num-workers 16", "--preset base", "--mixed-precision bf16",
                     "--learning-rate 0.0001", "--output results/synthetic_gr1/train/gpu8"]:
        assert expected in command
    # the GPU check comes first, then the launcher with one process per GPU
    assert re.search(r"require_gpus\.py 8 .*; accelerate launch --multi_gpu --num_machines 1 "
                     r"--num_processes 8 -m posttrain\.cli train ", command), command


def test_single_gpu_plans_the_1gpu_seed_settings(tmp_path):
    command = train_command(plan("profiles/single-gpu", tmp_path))
    for expected in ["--global-batch-size 16", "--max-steps 30000", "--dataloader-num-workers 4",
                     "--preset base", "--mixed-precision bf16", "--output results/synthetic_gr1/train/gpu1"]:
        assert expected in command
    assert re.search(r"require_gpus\.py 1 .*; posttrain train ", command), command


def test_slurm_and_local8gpu_train_the_same_model(tmp_path):
    """Same preset: identical train arguments (params), only resources differ, so no retraining."""
    slurm = plan("profiles/slurm", tmp_path / "slurm")
    local = plan("profiles/local8gpu", tmp_path / "local")
    args = [train_command(text).split(" train --dataset ", 1)[1] for text in (slurm, local)]
    assert args[0] == args[1]
    assert "slurm_partition=gpu" in slurm and "gpu=8" in slurm and "slurm_account=" in slurm


def test_bare_profile_names_work_after_install_profiles(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "SNAKEMAKE_PROFILE")}
    env["HOME"] = str(home)
    before = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "single-gpu", "-n"],
                            capture_output=True, text=True, cwd=REPO, env=env)
    assert before.returncode != 0  # Snakemake never looks in ./profiles/ by itself
    subprocess.run(["bash", "scripts/install_profiles.sh"], check=True, cwd=REPO, env=env, capture_output=True)
    for name in PROFILES:
        assert (home / ".config" / "snakemake" / name).resolve() == REPO / "profiles" / name
    assert "--max-steps 30000" in train_command(plan("single-gpu", tmp_path / "plan", env=env))


def test_gpu_check_fails_on_a_machine_without_the_gpus():
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    env = {k: v for k, v in os.environ.items() if k != "POSTTRAIN_SKIP_GPU_CHECK"}
    result = subprocess.run([sys.executable, "scripts/require_gpus.py", "8"], capture_output=True, text=True,
                            cwd=REPO, env=env)
    assert result.returncode == 2
    assert "error: train asks for 8 GPU(s) (resources.gpu from the profile) but this node has" in result.stderr
    none = subprocess.run([sys.executable, "scripts/require_gpus.py", "0"], capture_output=True, text=True, cwd=REPO)
    assert none.returncode == 0 and "no GPUs requested" in none.stderr
