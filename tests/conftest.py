"""Shared fixtures: a small synthetic Mimic HDF5 and the LeRobot dataset converted from it.

Session-scoped and built through the real CLIs, so every stage's tests start from what the
previous stages really write. Tests that modify a dataset must copy it first (`copy_dataset`).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # CI has 2 cores; tests run their own processes

from posttrain.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "reference" / "isaaclab_arena_gr1" / "golden_lerobot_gr1"
ARENA_YAML = SHARED / "reference" / "isaaclab_arena_gr1" / "gr1_manip_ranch_bottle_config.yaml"

SMALL_SYNTH = ["--episodes", "6", "--min-frames", "40", "--max-frames", "56", "--image-size", "64", "--seed", "3"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # for the CLI run in a subprocess


def train_command(dataset: Path, output: Path, *extra, processes: int = 1) -> list[str]:
    """`posttrain train` as a subprocess command (accelerate's state is per process), under torchrun for
    several processes."""
    launcher = (
        [sys.executable, "-m", "posttrain.cli"]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            "-m",
            "posttrain.cli",
        ]
    )
    return [*launcher, "train", "--dataset", str(dataset), "--output", str(output), *map(str, extra)]


def run_cli(*args: str) -> int:
    """Run `posttrain ARGS...` in-process and return its exit code."""
    return main([str(a) for a in args])


def synth_and_convert(root: Path, *synth_args, convert_args=()) -> tuple[Path, Path]:
    """`posttrain synth` with synth_args, then `convert` (with convert_args) and `stats`, all into root:
    returns (the HDF5, the dataset)."""
    hdf5, out = root / "demos.hdf5", root / "lerobot"
    assert run_cli("synth", hdf5, *synth_args) == 0
    assert run_cli("convert", "--input", hdf5, "--output", out, *convert_args, "--workers", "2") == 0
    assert run_cli("stats", out) == 0
    return hdf5, out


@pytest.fixture(scope="session")
def synth_hdf5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "demos.hdf5"
    assert run_cli("synth", path, *SMALL_SYNTH) == 0
    return path


@pytest.fixture(scope="session")
def converted_dataset(synth_hdf5, tmp_path_factory) -> Path:
    """The synthetic HDF5 converted with default settings, with meta/stats.json written."""
    out = tmp_path_factory.mktemp("converted") / "lerobot"
    assert run_cli("convert", "--input", synth_hdf5, "--output", out, "--workers", "2") == 0
    assert run_cli("stats", out) == 0
    return out


@pytest.fixture
def copy_dataset(converted_dataset, tmp_path):
    """A private copy of the converted dataset that a test may damage."""

    def _copy() -> Path:
        dst = tmp_path / "dataset_copy"
        shutil.copytree(converted_dataset, dst)
        return dst

    return _copy
