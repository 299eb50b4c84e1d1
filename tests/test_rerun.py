"""Stale means retrained: after an edit of the data or of the training options, a real (not dry)
Snakemake run leaves a model trained on the new inputs, from step 0, and keeps the old one aside.

One workflow run of the tiny config, then one edit at a time (the edits accumulate): the
language instruction, the synthetic source's seed, the learning rate. After each, the final
checkpoint must carry the new dataset's stats and content fingerprint (or the new option), its
training must have started over, and the previous run must be in superseded/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from posttrain.lerobot import content_fingerprint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The workflow in a private folder, so that edits in the checkout meanwhile change nothing here."""
    copy = tmp_path_factory.mktemp("checkout")
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    for folder in ("rules", "scripts", "envs", "config"):
        shutil.copytree(REPO / folder, copy / folder)
    return copy


def snakemake(checkout: Path, workdir: Path, overlay: str) -> None:
    """Run the workflow up to the trained model, with the tiny config and `overlay` (YAML) over it."""
    (workdir / "overlay.yaml").parent.mkdir(parents=True, exist_ok=True)
    (workdir / "overlay.yaml").write_text(overlay or "{}\n")
    configs = [
        checkout / "config" / "config.yaml",
        checkout / "config" / "test" / "tiny.yaml",
        workdir / "overlay.yaml",
    ]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(checkout / "Snakefile"),
            "--directory",
            str(workdir),
            "--profile",
            "none",
            "--workflow-profile",
            "none",
            "-c2",
            "results/tiny/train/tiny/DONE.json",
            "--configfile",
            *map(str, configs),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1", PATH=path),
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]


def model(workdir: Path) -> dict:
    """What the final checkpoint was trained on and how: identity, stats, weights' bytes, aside runs."""
    run_dir = workdir / "results" / "tiny" / "train" / "tiny"
    final = run_dir / json.loads((run_dir / "DONE.json").read_text())["final_checkpoint"]
    return {
        "identity": json.loads((final / "identity.json").read_text()),
        "stats": json.loads((final / "stats.json").read_text()),
        "weights": (final / "model.safetensors").read_bytes(),
        "superseded": sorted(p.name for p in (run_dir / "superseded").glob("*")),
        "steps": [e["step"] for e in json.loads((final / "trainer_state.json").read_text())["log_history"]],
    }


def dataset(workdir: Path) -> tuple[dict, dict]:
    root = workdir / "results" / "tiny" / "lerobot"
    return json.loads((root / "meta" / "stats.json").read_text()), content_fingerprint(root)


def assert_retrained(before: dict, after: dict, workdir: Path) -> None:
    stats, fingerprint = dataset(workdir)
    assert after["stats"] == stats  # the model was trained with the current dataset's stats...
    assert after["identity"]["dataset"] == fingerprint  # ...on its current content
    assert after["weights"] != before["weights"]
    # started over: the previous run was set aside (not resumed at its last step, not deleted)
    assert len(after["superseded"]) == len(before["superseded"]) + 1
    assert after["superseded"][-1].endswith(before["identity"]["id"][:12])
    assert after["steps"] == [10, 20]


def test_data_and_option_edits_retrain_on_the_new_inputs(checkout, tmp_path):
    workdir = tmp_path / "work"
    snakemake(checkout, workdir, "")
    first = model(workdir)
    assert first["superseded"] == [] and first["identity"]["dataset"] == dataset(workdir)[1]

    language = "convert: {language_instruction: Pick up the red target.}\n"
    snakemake(checkout, workdir, language)
    second = model(workdir)
    assert_retrained(first, second, workdir)
    assert second["identity"]["dataset"]["meta/tasks.jsonl"] != first["identity"]["dataset"]["meta/tasks.jsonl"]

    seed = language + "synth: {seed: 2}\n"
    snakemake(checkout, workdir, seed)
    third = model(workdir)
    assert_retrained(second, third, workdir)
    assert third["stats"] != second["stats"]  # other demos, other stats: and the model has the new ones

    learning_rate = seed + "train: {learning_rate: 5.0e-4}\n"
    snakemake(checkout, workdir, learning_rate)
    fourth = model(workdir)
    assert_retrained(third, fourth, workdir)
    assert fourth["identity"]["options"]["learning_rate"] == 5.0e-4
    assert fourth["identity"]["dataset"] == third["identity"]["dataset"]
