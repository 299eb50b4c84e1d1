"""Profiles: each plans its hardware preset, also under a user's --configfile overlay, bare names
work after install_profiles.sh, and a GPU profile on a machine without the GPUs fails before training."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow  # Snakemake dry runs of every profile (~3-11 s each): the full lane (README)

PROFILES = ("local8gpu", "single-gpu", "slurm")
HARDWARE = {"local8gpu": "gpu8", "single-gpu": "gpu1", "slurm": "gpu8", "single-gpu-48gb": "gpu1-48gb"}


def snakemake(profile: str, workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            profile,
            "--workflow-profile",
            "none",
            "--directory",
            str(workdir),
            "-n",
            "-p",
            "-F",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )


def plan(profile: str, workdir: Path, *args: str, env: dict | None = None) -> str:
    """`snakemake --profile PROFILE -n -p -F ARGS` from the repo root: every job's command."""
    result = snakemake(profile, workdir, *args, env=env)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result.stdout


def train_command(plan_text: str) -> str:
    return next(line for line in plan_text.splitlines() if " train --dataset " in line)


def preset_flags(hardware: str) -> list[str]:
    """The train flags config/hw/<hardware>.yaml sets (other than run_name), as the rule writes them."""
    train = yaml.safe_load((REPO / "config" / "hw" / f"{hardware}.yaml").read_text())["train"]
    return [
        f"--{key.replace('_', '-')} {value} "
        for key, value in train.items()
        if key != "run_name" and not isinstance(value, (dict, bool))
    ]


def job_block(plan_text: str, rule: str) -> str:
    """The dry run's lines for the first job of `rule` (its resources line among them)."""
    return plan_text.split(f"rule {rule}:", 1)[1].split("\nrule ", 1)[0]


def test_each_profile_ships_exactly_one_profile_file():
    for name in (*PROFILES, "single-gpu-48gb", "slurm-local"):
        files = sorted(p.name for p in (REPO / "profiles" / name).iterdir() if p.suffix == ".yaml")
        assert files == ["profile.yaml"], name
    assert not (REPO / "profiles" / "default").exists()  # it would override every --profile


def test_local8gpu_plans_the_8gpu_seed_settings(tmp_path):
    command = train_command(plan("profiles/local8gpu", tmp_path))
    for expected in [
        "--global-batch-size 96",
        "--max-steps 20000",
        "--save-steps 5000",
        "--save-total-limit 5",
        "--dataloader-num-workers 16",
        "--preset base",
        "--mixed-precision bf16",
        "--learning-rate 0.0001",
        "--output results/synthetic_gr1/train/gpu8",
    ]:
        assert expected in command
    # the GPU check comes first, then the launcher with one process per GPU
    assert re.search(
        r"posttrain\.gpus 8 .*; accelerate launch --multi_gpu --num_machines 1 "
        r"--num_processes 8 -m posttrain\.cli train ",
        command,
    ), command


@pytest.mark.parametrize("profile", ["single-gpu", "single-gpu-48gb"])
def test_single_gpu_profiles_plan_their_presets(profile, tmp_path):
    hardware = HARDWARE[profile]
    command = train_command(plan(f"profiles/{profile}", tmp_path))
    assert f"--output results/synthetic_gr1/train/{hardware} " in command
    for expected in preset_flags(hardware):
        assert expected in command + " ", expected
    assert re.search(r"posttrain\.gpus 1 .*; posttrain train ", command), command


@pytest.mark.parametrize("profile", PROFILES)
def test_users_overlay_keeps_the_profiles_preset(profile, tmp_path):
    """`snakemake --profile P --configfile my.yaml` trains P's preset on the user's data."""
    demos = tmp_path / "demos.hdf5"
    demos.write_bytes(b"")
    mine = tmp_path / "my.yaml"
    mine.write_text(
        f"dataset: {{name: mine, source: {{kind: hdf5, path: {demos}}}}}\n"
        "convert: {language_instruction: Open the fridge.}\ntrain: {save_steps: 1000}\n"
    )
    text = plan(f"profiles/{profile}", tmp_path / "work", "--configfile", str(mine))
    hardware = HARDWARE[profile]
    command = train_command(text)
    assert (
        f"--dataset results/mine/lerobot --frames results/mine/frames --output results/mine/train/{hardware} "
        in command
    )
    assert "--save-steps 1000 " in command  # the user's overlay wins over the preset
    for expected in preset_flags(hardware):
        if not expected.startswith("--save-steps "):
            assert expected in command + " ", expected
    assert "synth" not in text and f"convert --input {demos} " in text and "'Open the fridge.'" in text


def test_command_line_config_with_a_profile(tmp_path):
    """--config replaces the profile's `config:` (which names the preset): refused unless it names one."""
    result = snakemake("profiles/single-gpu", tmp_path, "--config", "train={max_steps: 100}")
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert lines == [
        "error: config: hardware: not set, but train gets 1 GPU(s) from the profile (a --config on the "
        "command line replaces the profile's `config:`, which names the preset): add hardware=NAME to --config "
        "(cpu, gpu1, gpu1-48gb, gpu8)"
    ]
    command = train_command(
        plan("profiles/single-gpu", tmp_path, "--config", "hardware=gpu1", "train={max_steps: 100}")
    )
    assert "--max-steps 100 " in command and "--output results/synthetic_gr1/train/gpu1 " in command
    assert "--mixed-precision bf16 " in command


@pytest.mark.parametrize("profile", PROFILES)
def test_eval_gets_a_gpu_under_the_gpu_profiles(profile, tmp_path):
    resources = next(
        line for line in job_block(plan(f"profiles/{profile}", tmp_path), "eval").splitlines() if "resources:" in line
    )
    assert ", gpu=1" in resources
    if profile == "slurm":
        assert "slurm_partition=gpu" in resources


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
    before = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "single-gpu", "-n"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    assert before.returncode != 0  # Snakemake never looks in ./profiles/ by itself
    subprocess.run(["bash", "scripts/install_profiles.sh"], check=True, cwd=REPO, env=env, capture_output=True)
    for name in PROFILES:
        assert (home / ".config" / "snakemake" / name).resolve() == REPO / "profiles" / name
    assert "--output results/synthetic_gr1/train/gpu1 " in train_command(plan("single-gpu", tmp_path / "plan", env=env))


def test_gpu_check_fails_on_a_machine_without_the_gpus():
    import torch

    if torch.cuda.device_count() >= 8:
        pytest.skip("this machine has 8 GPUs")
    env = {k: v for k, v in os.environ.items() if k != "POSTTRAIN_SKIP_GPU_CHECK"}
    result = subprocess.run(
        [sys.executable, "-m", "posttrain.gpus", "8"], capture_output=True, text=True, cwd=REPO, env=env
    )
    assert result.returncode == 2
    assert "error: train asks for 8 GPU(s) (resources.gpu from the profile) but this node has" in result.stderr
    none = subprocess.run([sys.executable, "-m", "posttrain.gpus", "0"], capture_output=True, text=True, cwd=REPO)
    assert none.returncode == 0 and "no GPUs requested" in none.stderr
