"""`posttrain train` never loses a run and never reports success on a broken one.

Resume only the same run (options in canonical form, dataset content, trainer code: the run
identity); anything else is set aside under RUN_DIR/superseded/, never deleted; a damaged newest
checkpoint is found by its manifest and the run falls back to the newest intact one; a non-finite
loss stops the run with one line; a checkpoint with non-finite weights is refused by eval.

Training runs are tiny (8 steps of 4 samples) through the real CLI in subprocesses, on a copy of
the session's converted dataset (6 episodes of 40-56 frames, 64²).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ENV, run_cli, train_command
from posttrain.errors import PosttrainError
from posttrain.lerobot import content_fingerprint
from posttrain.policy import Policy
from posttrain.runs import canonical, damage, make_identity, seal

RUN = [
    "--max-steps",
    "8",
    "--save-steps",
    "4",
    "--save-total-limit",
    "2",
    "--global-batch-size",
    "4",
    "--dataloader-num-workers",
    "0",
    "--logging-steps",
    "1",
    "--learning-rate",
    "1e-3",
]


def train(dataset, output: Path, *extra: str, cwd: Path | None = None, status: int = 0) -> str:
    """Run `posttrain train` in a subprocess; return its stderr (the log)."""
    command = train_command(
        dataset,
        output,
        *extra,
    )
    result = subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


def warnings(log: str) -> str:
    """The log's warning lines: what a failed assertion should show."""
    return "\n".join(line for line in log.splitlines() if " WARNING " in line or "resumed from" in line)


def steps_logged(checkpoint: Path) -> list[int]:
    return [e["step"] for e in json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]]


def superseded(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "superseded").iterdir()) if (run_dir / "superseded").is_dir() else []


@pytest.fixture(scope="module")
def work(converted_dataset, tmp_path_factory) -> Path:
    """A folder with the dataset as `data/` (so that it can be named by a relative path)."""
    folder = tmp_path_factory.mktemp("faults_train")
    shutil.copytree(converted_dataset, folder / "data")
    return folder


@pytest.fixture(scope="module")
def finished(work) -> Path:
    """A finished run (checkpoint-4, checkpoint-8, DONE.json), the dataset given as an absolute path."""
    train(work / "data", work / "finished", *RUN)
    return work / "finished"


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A private copy of the finished run."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# --- identity: fast unit checks ----------------------------------------------------------------
def test_identity_compares_options_by_meaning():
    assert canonical({"max_steps": 800.0, "lr": 1e-4, "path": Path("a")}) == {
        "lr": 0.0001,
        "max_steps": 800,
        "path": "a",
    }
    one = make_identity({"max_steps": 800, "learning_rate": 1e-4}, {"data": "x"}, "code")
    assert one == make_identity({"learning_rate": 0.0001, "max_steps": 800.0}, {"data": "x"}, "code")
    assert one["id"] != make_identity({"max_steps": 800, "learning_rate": 1e-4}, {"data": "y"}, "code")["id"]
    assert one["id"] != make_identity({"max_steps": 800, "learning_rate": 1e-4}, {"data": "x"}, "other")["id"]


def test_fingerprint_follows_content_not_location(converted_dataset, tmp_path):
    moved = tmp_path / "elsewhere" / "dataset"
    shutil.copytree(converted_dataset, moved)
    source = json.loads((moved / "meta" / "source.json").read_text())
    source["hdf5"] = "/another/place/demos.hdf5"  # provenance, not content
    (moved / "meta" / "source.json").write_text(json.dumps(source))
    (moved / "meta" / ".stats.json.tmp").write_text("a writer's temporary file")
    original = content_fingerprint(converted_dataset)
    assert content_fingerprint(moved) == original
    assert {"meta/info.json", "meta/tasks.jsonl", "meta/stats.json", "data", "videos"} <= set(original)

    tasks = moved / "meta" / "tasks.jsonl"
    tasks.write_text(tasks.read_text().replace('"task": "', '"task": "Carefully: '))
    changed = content_fingerprint(moved)
    assert [k for k in original if changed[k] != original[k]] == ["meta/tasks.jsonl"]
    video = next((moved / "videos").rglob("*.mp4"))
    video.write_bytes(video.read_bytes()[:-1] + b"\0")
    assert content_fingerprint(moved)["videos"] != original["videos"]


def test_seal_finds_truncated_and_altered_files(tmp_path):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "optimizer.bin").write_bytes(b"x" * 100)
    seal(checkpoint, "trainer_state.json", '{"global_step": 4}\n')
    assert damage(checkpoint) is None
    (checkpoint / "optimizer.bin").write_bytes(b"x" * 99)
    assert damage(checkpoint) == "optimizer.bin: 99 bytes, manifest.json says 100"
    (checkpoint / "optimizer.bin").write_bytes(b"y" * 100)
    assert damage(checkpoint) == "optimizer.bin: checksum differs from manifest.json"
    (checkpoint / "manifest.json").write_text("{")
    assert damage(checkpoint) == "manifest.json missing or unreadable"


# --- resume only the same run, keep every other ------------------------------------------------
def test_dataset_named_by_a_relative_path_resumes_the_run(work, run_dir):
    before = (run_dir / "checkpoint-8" / "model.safetensors").read_bytes()
    log = train("data", run_dir, *RUN, cwd=work)  # the run was made with the absolute path
    assert f"resumed from {run_dir / 'checkpoint-8'} (step 8)" in log, warnings(log)
    assert not superseded(run_dir) and "set aside" not in log
    assert (run_dir / "checkpoint-8" / "model.safetensors").read_bytes() == before
    assert json.loads((run_dir / "DONE.json").read_text())["final_checkpoint"] == "checkpoint-8"


@pytest.mark.slow
def test_another_option_sets_the_old_run_aside_and_starts_over(work, run_dir):
    before = (run_dir / "checkpoint-8" / "model.safetensors").read_bytes()
    old_id = json.loads((run_dir / "checkpoint-8" / "identity.json").read_text())["id"]
    changed = RUN[:-1] + ["5e-4"]
    log = train(work / "data", run_dir, *changed)
    assert (
        "set aside checkpoint-4, checkpoint-8, tensorboard, DONE.json (another run: learning_rate: 0.001 -> 0.0005)"
    ) in log and "training starts at step 0" in log, warnings(log)
    [aside] = superseded(run_dir)
    assert aside.name.endswith(f"-{old_id[:12]}")
    assert (aside / "checkpoint-8" / "model.safetensors").read_bytes() == before  # kept, not deleted
    assert (aside / "checkpoint-4").is_dir() and (aside / "DONE.json").is_file() and (aside / "tensorboard").is_dir()
    assert steps_logged(run_dir / "checkpoint-8") == list(range(1, 9))

    # --no-resume sets the run aside too, it never deletes it.
    log = train(work / "data", run_dir, *changed, "--no-resume")
    assert "set aside checkpoint-4, checkpoint-8, tensorboard, DONE.json (--no-resume)" in log
    assert len(superseded(run_dir)) == 2 and (superseded(run_dir)[1] / "checkpoint-8").is_dir()
    assert (run_dir / "DONE.json").is_file()


def test_new_language_instruction_retrains(work, run_dir, tmp_path):
    dataset = tmp_path / "data"
    shutil.copytree(work / "data", dataset)
    tasks = dataset / "meta" / "tasks.jsonl"
    tasks.write_text(tasks.read_text().replace('"task": "', '"task": "Carefully: '))
    assert run_cli("stats", dataset) == 0
    log = train(dataset, run_dir, *RUN)
    assert "(another run: dataset content changed (meta/tasks.jsonl)" in log and "training starts at step 0" in log
    identity = json.loads((run_dir / "checkpoint-8" / "identity.json").read_text())
    assert identity["dataset"] == content_fingerprint(dataset)
    assert steps_logged(run_dir / "checkpoint-8") == list(range(1, 9))
    assert len(superseded(run_dir)) == 1


def test_new_data_in_the_same_place_retrains_on_it(work, run_dir, tmp_path):
    """Other demos (another synth seed) converted into the dataset's folder: the model learns them."""
    assert (
        run_cli(
            "synth",
            tmp_path / "other.hdf5",
            "--episodes",
            "6",
            "--min-frames",
            "40",
            "--max-frames",
            "56",
            "--image-size",
            "64",
            "--seed",
            "4",
        )
        == 0
    )
    assert run_cli("convert", "--input", tmp_path / "other.hdf5", "--output", tmp_path / "other") == 0
    assert run_cli("stats", tmp_path / "other") == 0
    dataset = tmp_path / "data"
    shutil.copytree(tmp_path / "other", dataset)
    log = train(dataset, run_dir, *RUN)
    assert "another run: dataset content changed (" in log and "training starts at step 0" in log
    new_stats = json.loads((dataset / "meta" / "stats.json").read_text())
    assert new_stats != json.loads((work / "data" / "meta" / "stats.json").read_text())
    assert json.loads((run_dir / "checkpoint-8" / "stats.json").read_text()) == new_stats
    assert steps_logged(run_dir / "checkpoint-8") == list(range(1, 9))


# --- damaged checkpoints ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(work, finished, run_dir, name):
    damaged = run_dir / "checkpoint-8" / name
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[: size // 2])  # a disk that filled up, a copy cut short
    log = train(work / "data", run_dir, *RUN)
    assert f"set aside checkpoint-8 (damaged: {name}: {size // 2} bytes, manifest.json says {size})" in log, warnings(
        log
    )
    assert f"resumed from {run_dir / 'checkpoint-4'} (step 4)" in log
    [aside] = superseded(run_dir)
    assert aside.name.endswith("-damaged") and (aside / "checkpoint-8" / name).stat().st_size == size // 2
    assert json.loads((run_dir / "DONE.json").read_text())["final_checkpoint"] == "checkpoint-8"
    assert damage(run_dir / "checkpoint-8") is None
    # Resuming is exact: the retrained steps 5-8 give the weights of the uninterrupted run.
    got, expected = (load_file(p / "checkpoint-8" / "model.safetensors") for p in (run_dir, finished))
    assert max((got[k] - expected[k]).abs().max().item() for k in got) <= 1e-5


# --- non-finite training ---------------------------------------------------------------------------
def test_diverging_run_stops_at_the_first_non_finite_step(work, tmp_path):
    out = tmp_path / "run"
    log = train(work / "data", out, *RUN[:-1], "1e4", "--save-steps", "1", status=2)
    last = log.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"error: {re.escape(str(out))}: step (\d+): loss \S+, gradient norm \S+: training "
        r"diverged; stopped without DONE\.json \(last checkpoint: \S+\); lower --learning-rate "
        r"\(now 10000\) or check the dataset",
        last,
    )
    assert match, last
    assert not (out / "DONE.json").exists()
    saved = sorted(out.glob("checkpoint-*"))
    assert all(int(p.name.split("-")[1]) < int(match.group(1)) for p in saved)
    for checkpoint in saved:  # nothing of the broken state was saved: every checkpoint loads
        Policy.from_checkpoint(checkpoint)


def test_checkpoint_with_non_finite_weights_is_refused(work, finished, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint-8"
    shutil.copytree(finished / "checkpoint-8", checkpoint)
    weights = load_file(checkpoint / "model.safetensors")
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key].view(-1)[0] = float("nan")
    save_file(weights, checkpoint / "model.safetensors")
    message = f"{checkpoint / 'model.safetensors'}: {key}: non-finite weights (NaN or inf)"
    with pytest.raises(PosttrainError, match=re.escape(message)):
        Policy.from_checkpoint(checkpoint)
    capsys.readouterr()
    assert run_cli("eval", checkpoint, work / "data", "--output", tmp_path / "eval") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {message}")
    assert not (tmp_path / "eval" / "metrics.json").exists()
    assert torch.isnan(load_file(checkpoint / "model.safetensors")[key]).any()
