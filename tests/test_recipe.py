"""The training recipe: a length that scales with the data (`train.epochs`), and learning checks on a
second kind of data.

The default recipe (config/config.yaml `train:`) learns the vision-dependent synthetic reach
(tests/test_train.py::test_tiny_policy_learns_and_uses_vision). Here the same recipe trains on
smooth, state-predictable motion (`posttrain synth --motion smooth`), where holding the current
state is a strong baseline, and must beat both baselines of `posttrain eval` on held-out episodes,
with the default state dropout and without any.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ENV, REPO, run_cli, train_command
from posttrain import synth
from posttrain.settings import TrainSettings, defaults
from posttrain.train import resolve_steps

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def train(dataset: Path, output: Path, *extra, threads: int = 1) -> str:
    """`posttrain train` in a subprocess (accelerate's state is per process); returns its log."""
    command = train_command(
        dataset,
        output,
        *map(str, extra),
    )
    result = subprocess.run(
        command, env={**ENV, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def read(path: Path) -> dict:
    return json.loads(path.read_text())


# --- the length: steps from epochs ----------------------------------------------------------------
def test_length_is_epochs_with_a_floor_unless_max_steps_is_given():
    assert resolve_steps(None, 3.0, 1, 1000, 32) == 94  # ceil(93.75): the last batch is a full one
    assert resolve_steps(None, 3.0, 1, 32, 32) == 3  # exact: no extra step from rounding
    assert resolve_steps(None, 1e-9, 1, 10, 32) == 1  # at least one step
    assert resolve_steps(None, 3.0, 800, 30846, 32) == 2892  # seed-shaped: 98 train demos × ~315 samples
    assert resolve_steps(None, 3.0, 800, 992, 32) == 800  # the 16-demo default: the floor (3 epochs: 93)
    assert resolve_steps(500, 3.0, 800, 30846, 32) == 500  # --max-steps, when given, is the length


@pytest.mark.slow
def test_an_epoch_budget_is_logged_recorded_and_part_of_the_run_identity(converted_dataset, tmp_path):
    """--epochs 0.5 on ~130 train samples at batch 16: the resolved steps are the run's length
    everywhere; the same length given as --max-steps is the same run (resumed, not redone); a floor
    above it (--min-steps) makes another run."""
    out = tmp_path / "run"
    small = ["--global-batch-size", "16", "--min-steps", "1", "--save-steps", "100", "--dataloader-num-workers", "0"]
    log = train(converted_dataset, out, *small, "--epochs", "0.5")
    found = re.search(
        r"training length: (\d+) steps = ceil\(0\.5 epochs × (\d+) train samples / global batch 16\)", log
    )
    assert found, log[-3000:]
    steps, samples = int(found[1]), int(found[2])
    assert steps == -(-samples // 32) and steps >= 2  # ceil(0.5 × samples / 16)
    checkpoint = out / f"checkpoint-{steps}"
    assert read(checkpoint / "trainer_state.json")["max_steps"] == steps
    config = read(checkpoint / "train_config.json")
    assert config["steps"] == steps and config["epochs"] == 0.5 and config["max_steps"] is None
    options = read(checkpoint / "identity.json")["options"]
    assert options["max_steps"] == steps and "epochs" not in options
    assert read(out / "DONE.json")["step"] == steps

    log = train(converted_dataset, out, *small, "--max-steps", steps, "--epochs", "7")
    assert f"training length: {steps} steps (--max-steps; --epochs and --min-steps not used)" in log
    assert f"(step {steps})" in log and "set aside" not in log  # the same run: resumed at its end

    log = train(converted_dataset, out, *small, "--epochs", "0.5", "--min-steps", steps + 2)
    assert f"training length: {steps + 2} steps (--min-steps; 0.5 epochs would be {steps} steps)" in log
    assert f"(another run: max_steps: {steps} -> {steps + 2})" in log
    assert read(out / "DONE.json")["step"] == steps + 2


def test_gr00t_backend_needs_max_steps(capsys):
    assert run_cli("train", "--backend", "gr00t", "--dataset", "d", "--output", "o", "--gr00t-repo", "g") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --backend gr00t needs --max-steps (train.max_steps): GR00T counts its run in steps, and its own "
        "sampling decides what an epoch is"
    )


def test_config_lengths_cpu_in_epochs_gpu_presets_in_seed_steps():
    """The CPU default is an epoch budget (max_steps null), the same as `posttrain train`'s; each GPU
    preset keeps the seed's step count (config/hw/*.yaml max_steps wins over the default's epochs)."""
    train_schema = SCHEMA["properties"]["train"]["properties"]
    assert CONFIG["train"]["max_steps"] is None and CONFIG["train"]["epochs"] > 0
    assert train_schema["max_steps"]["default"] is None
    for key, cli_default in (
        ("epochs", defaults(TrainSettings)["epochs"]),
        ("min_steps", defaults(TrainSettings)["min_steps"]),
    ):
        assert train_schema[key]["default"] == CONFIG["train"][key] == cli_default, key
    seed_steps = {"gpu1": 30000, "gpu1-48gb": 30000, "gpu8": 20000}  # shared/docs/gr00t_n16.md §3
    for name, steps in seed_steps.items():
        preset = yaml.safe_load((REPO / "config" / "hw" / f"{name}.yaml").read_text())
        assert preset["train"]["max_steps"] == steps, name


def planned_train_command(tmp_path: Path) -> str:
    """The `posttrain train` line of the default workflow's dry run."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "none",
            "--workflow-profile",
            "none",
            "-n",
            "-p",
            "-F",
            "--directory",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**ENV, "PATH": path},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return next(line for line in result.stdout.splitlines() if " train --dataset " in line)


@pytest.mark.slow
def test_workflow_passes_epochs_and_leaves_out_a_null_max_steps(tmp_path):
    command = planned_train_command(tmp_path)
    assert f"--epochs {CONFIG['train']['epochs']} --min-steps {CONFIG['train']['min_steps']} " in command
    assert "--max-steps" not in command


# --- smooth, state-predictable data ---------------------------------------------------------------
JOINTS = sorted(synth.ACTION_COLUMNS, key=synth.ACTION_COLUMNS.get)  # action order
STATE_COLUMNS = np.array([synth.STATE_COLUMNS[n] for n in JOINTS])


def joint_positions(episode) -> tuple[np.ndarray, np.ndarray]:
    """(state, action) of a GR1 demo as (T, 36) joint positions in action order, index offsets undone."""
    state = episode.state[:, STATE_COLUMNS] - synth.INDEX_OFFSET * STATE_COLUMNS
    return state, episode.processed_actions - synth.INDEX_OFFSET * np.arange(len(JOINTS))


def hold_over_mean(make, min_frames: int, max_frames: int, demos: int = 8) -> float:
    """Hold-state baseline MSE / mean-action baseline MSE over 16-step chunks, as `posttrain eval`
    computes them: the ratio README's state-dropout rule reads from metrics.json."""
    states, chunks = [], []
    for index in range(demos):
        state, action = joint_positions(make(0, index, min_frames, max_frames, 32))
        states += list(state[: len(action) - 15])
        chunks += [action[i : i + 16] for i in range(len(action) - 15)]
    states, chunks = np.array(states), np.array(chunks)
    hold = np.mean((chunks - states[:, None]) ** 2)
    return float(hold / np.mean((chunks - chunks.reshape(-1, len(JOINTS)).mean(axis=0)) ** 2))


def test_smooth_motion_is_a_look_ahead_of_the_state_that_hold_state_predicts_well(tmp_path):
    state, action = joint_positions(synth.make_smooth_episode(0, 3, 330, 330, 32))
    lead = synth.SMOOTH_LOOKAHEAD
    np.testing.assert_allclose(action[:-lead], state[lead:], atol=1e-6)
    assert np.abs(np.diff(state, axis=0)).max() < 0.03  # smooth: < 0.03 rad per step at 50 fps
    # The same task in every demo: another demo of the seed follows nearly the same path.
    other, _ = joint_positions(synth.make_smooth_episode(0, 4, 330, 330, 32))
    assert np.corrcoef(other[:, 0], state[:, 0])[0, 1] > 0.5
    # README's rule (hold state < 0.5 × mean action: state-driven, lower the state dropout) tells the
    # two kinds of data apart: the seed-shaped smooth motion, the test's shorter demos, the reach.
    assert hold_over_mean(synth.make_smooth_episode, 320, 340) < 0.2
    assert hold_over_mean(synth.make_smooth_episode, 200, 240) < 0.5
    assert hold_over_mean(synth.make_episode, 70, 100) > 1.0

    path = tmp_path / "smooth.hdf5"
    assert (
        run_cli(
            "synth",
            path,
            "--motion",
            "smooth",
            "--episodes",
            "2",
            "--min-frames",
            "20",
            "--max-frames",
            "24",
            "--image-size",
            "32",
        )
        == 0
    )
    assert run_cli("synth", tmp_path / "bad.hdf5", "--motion", "smooth", "--embodiment", "g1") == 2
    assert not (tmp_path / "bad.hdf5").exists()


# --- the default recipe learns smooth motion ------------------------------------------------------
def default_recipe(**override) -> list[str]:
    """config/config.yaml's learning settings as `posttrain train` flags (as rules/common.smk passes them)."""
    t = {**CONFIG["train"], **override}
    args = []
    for key in (
        "preset",
        "holdout_episodes",
        "global_batch_size",
        "gradient_accumulation_steps",
        "max_steps",
        "epochs",
        "learning_rate",
        "warmup_ratio",
        "weight_decay",
        "seed",
        "action_normalization",
        "state_dropout_prob",
    ):
        if t[key] is not None:
            args += ["--" + key.replace("_", "-"), str(t[key])]
    args += ["--color-jitter-params", *(str(x) for pair in t["color_jitter_params"].items() for x in pair)]
    return args


@pytest.fixture(scope="module")
def smooth_dataset(tmp_path_factory) -> Path:
    """Smooth motion, scaled down from the seed's 100 demos × 330 frames: 12 demos × 200-240 frames
    (32² images: the task is state-driven), converted with stats."""
    root = tmp_path_factory.mktemp("smooth")
    assert (
        run_cli(
            "synth",
            root / "raw.hdf5",
            "--motion",
            "smooth",
            "--episodes",
            "12",
            "--min-frames",
            "200",
            "--max-frames",
            "240",
            "--image-size",
            "32",
            "--seed",
            "1",
        )
        == 0
    )
    assert run_cli("convert", "--input", root / "raw.hdf5", "--output", root / "lerobot", "--workers", "2") == 0
    assert run_cli("stats", root / "lerobot") == 0
    return root / "lerobot"


@pytest.mark.slow
@pytest.mark.parametrize("state_dropout", [None, 0.0], ids=["default_state_dropout", "no_state_dropout"])
def test_default_recipe_beats_both_baselines_on_smooth_motion(smooth_dataset, tmp_path, state_dropout):
    """The default recipe, its length in epochs as the default sets it, on held-out smooth episodes:
    the eval verdict says it beats mean action and hold state, with the default state dropout (which
    the vision task needs) and without it (GR00T's default)."""
    override = {} if state_dropout is None else {"state_dropout_prob": state_dropout}
    run = tmp_path / "run"
    log = train(
        smooth_dataset,
        run,
        *default_recipe(**override),
        "--save-steps",
        "100000",
        "--dataloader-num-workers",
        "1",
        "--logging-steps",
        "50",
        threads=2,
    )
    assert "training length: " in log
    assert (
        run_cli(
            "eval",
            run,
            smooth_dataset,
            "--output",
            tmp_path / "eval",
            "--stride",
            "2",
            "--device",
            "cpu",
            "--episodes-to-plot",
            "0",
        )
        == 0
    )
    verdict = read(tmp_path / "eval" / "metrics.json")["verdict"]
    print(verdict["summary"])
    assert verdict["beats_all_baselines"], verdict["summary"]
    assert verdict["baselines"]["hold_state"]["ratio"] < 0.8, verdict["summary"]  # a clear win, not a tie
