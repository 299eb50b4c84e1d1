"""The whole workflow through a real (local, single-node) Slurm cluster with the Slurm executor.

scripts/start_slurm.sh installs and starts slurmctld/slurmd/munge (root, apt) with 8 fake GPUs;
the tiny config then runs through profiles/slurm-local: every rule but `all` is one sbatch job,
the two conversion shards are two jobs, and training gets its GPUs from Slurm (--gpus=2).
Skipped only where Slurm cannot be installed (not root, no apt-get).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

CONFIGS = [REPO / "config" / "config.yaml", REPO / "config" / "test" / "tiny.yaml"]
FEWER_STEPS = "train: {max_steps: 2, save_steps: 2}\n"  # Slurm's per-job overhead is the cost here


def slurm_is_up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.strip() == "idle"


@pytest.fixture(scope="module")
def slurm():
    was_up = slurm_is_up()
    if not was_up:
        if os.geteuid() != 0:
            pytest.skip("Slurm is not running and cannot be installed/started without root")
        result = subprocess.run(["bash", str(REPO / "scripts" / "start_slurm.sh")], capture_output=True, text=True)
        if result.returncode == 3:  # the script's code for "cannot install" (no root / no apt-get)
            pytest.skip(f"Slurm cannot be installed here: {result.stderr.strip()}")
        assert result.returncode == 0, result.stderr
    yield
    if not was_up:
        subprocess.run(["bash", str(REPO / "scripts" / "stop_slurm.sh")], capture_output=True)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm")
    overlay = workdir / "fewer_steps.yaml"
    overlay.write_text(FEWER_STEPS)
    env = dict(os.environ, POSTTRAIN_SKIP_GPU_CHECK="1")  # the cluster's GPUs are device nodes only
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # `posttrain`
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            str(REPO / "profiles" / "slurm-local"),
            "--workflow-profile",
            "none",
            "--directory",
            str(workdir),
            "--configfile",
            *map(str, CONFIGS),
            str(overlay),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=480,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return workdir, result.stdout + result.stderr


def submitted_jobs(output: str) -> dict[str, list[str]]:
    """{rule: [Slurm job id, ...]} from Snakemake's "submitted with SLURM jobid" lines."""
    jobs: dict[str, list[str]] = {}
    for rule, job_id in re.findall(r"slurm_logs/rule_(\w+)/\S+/(\d+)\.log", output):
        jobs.setdefault(rule, [])
        if job_id not in jobs[rule]:
            jobs[rule].append(job_id)
    return jobs


def test_every_rule_runs_as_a_slurm_job(slurm_run):
    workdir, output = slurm_run
    jobs = submitted_jobs(output)
    expected = {
        "synth",
        "convert_shard",
        "convert_gather",
        "stats",
        "verify",
        "frames",
        "train",
        "eval",
        "report_dataset",
        "report_video",
        "report_verify",
        "report_training",
        "report_metrics",
    }
    assert set(jobs) == expected
    assert len(jobs["convert_shard"]) == 2  # one job per shard
    states = dict(
        line.split()
        for line in subprocess.run(
            ["squeue", "--states=all", "-h", "-o", "%i %T"], capture_output=True, text=True
        ).stdout.splitlines()
    )
    for rule, ids in jobs.items():
        for job_id in ids:
            assert states.get(job_id) == "COMPLETED", (rule, job_id, states.get(job_id))
            assert list((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob(f"{job_id}.log")), rule
    assert (workdir / "results" / "tiny" / "eval" / "tiny" / "metrics.json").is_file()
    assert (workdir / "results" / "tiny" / "report" / "tiny" / "eval_metrics.html").is_file()


def test_training_gets_its_gpus_from_slurm(slurm_run):
    workdir, output = slurm_run
    train_log = (workdir / "logs" / "train" / "tiny" / "tiny.log").read_text()
    assert "train: 2 GPU(s) requested, CUDA_VISIBLE_DEVICES=0,1" in train_log
    job_id = submitted_jobs(output)["train"][0]
    tres = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert re.search(r"gres/gpu[:=]2|gpu[:=]2", tres), tres


def test_slurm_torchrun_starts_one_process_per_allocated_gpu(slurm):
    """scripts/slurm_torchrun.sh (the multi-node launcher) inside an allocation: world size from the
    node's GPUs, rendezvous on the allocation's first node. One node here; multi-node is untested."""
    report = "echo rank=$RANK world=$WORLD_SIZE"
    result = subprocess.run(
        [
            "srun",
            "-A",
            "test",
            "-p",
            "debug",
            "-N1",
            "--ntasks-per-node=1",
            "--gpus=3",
            "--mem=500",
            "-t",
            "5",
            str(REPO / "scripts" / "slurm_torchrun.sh"),
            "--no-python",
            "bash",
            "-c",
            report,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(re.findall(r"rank=\d world=\d", result.stdout)) == [f"rank={r} world=3" for r in range(3)]
    assert re.search(r"slurm_torchrun: node 0/1, 3 process\(es\), rendezvous \S+:29500", result.stderr)
