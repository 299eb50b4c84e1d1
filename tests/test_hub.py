"""`posttrain hub`: the real download code against a pre-populated Hub cache, offline; upload dry-run.

huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE when it is imported, so every case runs the CLI
in a subprocess with its own environment (and a token that must never show up in any output).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.lerobot import LeRobotDataset

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO_ID = "acme/gr1-demos"
REVISION = "arena_v0.2_lab_v3.0"
TOKEN = "hf_testTokenThatMustNeverBePrinted42"


def put_in_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes], revision: str = REVISION) -> Path:
    """Write `files` into a huggingface_hub cache exactly as a download would: blobs, snapshot links, refs."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(COMMIT)
    return snapshot


def hub_cli(tmp_path: Path, cache: Path, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    result = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", "hub", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert TOKEN not in result.stdout + result.stderr
    return result


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "hub_cache"


def test_download_hdf5_offline_from_cache(tmp_path, cache, synth_hdf5):
    put_in_cache(cache, REPO_ID, {"task/demos_generated.hdf5": synth_hdf5, "README.md": b"# demos\n"})
    out = tmp_path / "results" / "ds" / "raw.hdf5"
    r = hub_cli(
        tmp_path,
        cache,
        "download",
        "--repo-id",
        REPO_ID,
        "--revision",
        REVISION,
        "--format",
        "hdf5",
        "--path",
        "task/demos_generated.hdf5",
        "--output",
        out,
    )
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == synth_hdf5.read_bytes()
    assert COMMIT in r.stderr  # the resolved snapshot is logged for provenance
    assert not list(out.parent.glob(".*tmp*"))


def test_download_lerobot_offline_skips_downloaded_stats(tmp_path, cache, converted_dataset):
    files = {
        f"task_100/lerobot/{p.relative_to(converted_dataset).as_posix()}": p
        for p in converted_dataset.rglob("*")
        if p.is_file()
    }
    files["task_100/demos.hdf5"] = b"not part of the dataset"
    files["other/lerobot/meta/info.json"] = b"{}"
    put_in_cache(cache, REPO_ID, files)
    out = tmp_path / "results" / "ds" / "lerobot"
    r = hub_cli(
        tmp_path,
        cache,
        "download",
        "--repo-id",
        REPO_ID,
        "--revision",
        REVISION,
        "--format",
        "lerobot",
        "--include",
        "task_100/lerobot/**",
        "--output",
        out,
    )
    assert r.returncode == 0, r.stderr
    got = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    want = {p.relative_to(converted_dataset).as_posix() for p in converted_dataset.rglob("*") if p.is_file()}
    assert "meta/stats.json" in want and "meta/stats.json" not in got
    assert got == want - {"meta/stats.json", "meta/episodes_stats.jsonl", "meta/relative_stats.json"}
    for rel in got:
        assert (out / rel).read_bytes() == (converted_dataset / rel).read_bytes(), rel
    ds = LeRobotDataset(out)
    assert ds.num_episodes == LeRobotDataset(converted_dataset).num_episodes
    assert len(ds.read_episode(0)["action"]) == ds.episodes[0]["length"]
    # meta/ is a private copy: rewriting it must not touch the Hub cache
    assert not (out / "meta" / "info.json").samefile(cache.rglob("info.json").__next__())


def test_unknown_repo_offline_is_one_clear_line(tmp_path, cache):
    put_in_cache(cache, REPO_ID, {"a.hdf5": b"x"})
    r = hub_cli(
        tmp_path,
        cache,
        "download",
        "--repo-id",
        "acme/missing",
        "--format",
        "hdf5",
        "--path",
        "a.hdf5",
        "--output",
        tmp_path / "raw.hdf5",
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: hub dataset acme/missing@main: a.hdf5: not in the local Hub cache")
    assert "HF_HUB_OFFLINE=1" in lines[-1]
    assert not (tmp_path / "raw.hdf5").exists()


def test_unknown_path_offline_is_one_clear_line(tmp_path, cache):
    put_in_cache(cache, REPO_ID, {"a.hdf5": b"x"})
    r = hub_cli(
        tmp_path,
        cache,
        "download",
        "--repo-id",
        REPO_ID,
        "--revision",
        REVISION,
        "--format",
        "hdf5",
        "--path",
        "nope/b.hdf5",
        "--output",
        tmp_path / "raw.hdf5",
    )
    assert r.returncode == 2
    assert (
        r.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: hub dataset {REPO_ID}@{REVISION}: nope/b.hdf5: not in the local Hub cache")
    )
    r = hub_cli(
        tmp_path,
        cache,
        "download",
        "--repo-id",
        REPO_ID,
        "--revision",
        REVISION,
        "--format",
        "lerobot",
        "--include",
        "nope/lerobot/**",
        "--output",
        tmp_path / "lerobot",
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: hub dataset {REPO_ID}@{REVISION}: no files match --include nope/lerobot/**"
    )
    assert not (tmp_path / "lerobot").exists()


def test_upload_dry_run_lists_operations_without_network(tmp_path, cache):
    ckpt = tmp_path / "run" / "checkpoint-20"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 100)
    (ckpt / "model_config.json").write_text("{}")
    (ckpt / "optimizer.bin").write_bytes(b"o" * 7)
    (ckpt / "sub" / "x.txt").write_text("abc")
    (ckpt / ".partial.tmp").write_text("hidden")
    (tmp_path / "run" / "DONE.json").write_text('{"final_checkpoint": "checkpoint-20", "step": 20}')
    # A run directory stands for its final checkpoint (DONE.json).
    r = hub_cli(
        tmp_path,
        cache,
        "upload",
        "--repo-id",
        "acme/policy",
        "--repo-type",
        "model",
        tmp_path / "run",
        "--path-in-repo",
        "checkpoints/run",
        "--exclude",
        "optimizer.bin",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[:-1] == [
        "add checkpoints/run/model.safetensors (100 bytes)",
        "add checkpoints/run/model_config.json (2 bytes)",
        "add checkpoints/run/sub/x.txt (3 bytes)",
    ]
    assert lines[-1] == "3 files, 105 bytes -> model acme/policy"


def test_upload_of_missing_path_fails(tmp_path, cache):
    r = hub_cli(
        tmp_path, cache, "upload", "--repo-id", "acme/ds", "--repo-type", "dataset", tmp_path / "nope", "--dry-run"
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'nope'}: nothing to upload (not found)"


# --- cards ------------------------------------------------------------------------------------
def split_card(text: str) -> tuple[dict, str]:
    """YAML front matter and body of a README.md card, as the Hub reads them."""
    import yaml

    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def card_line(result) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("add README.md"))


def test_dataset_upload_adds_the_card_lerobot_writes(tmp_path, cache, converted_dataset):
    from posttrain import hub

    r = hub_cli(
        tmp_path,
        cache,
        "upload",
        converted_dataset,
        "--repo-id",
        "acme/gr1-demos",
        "--repo-type",
        "dataset",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    card = hub.dataset_card(converted_dataset, "acme/gr1-demos", "apache-2.0")
    assert card_line(r) == f"add README.md ({len(card.encode())} bytes, generated card)"
    assert "add meta/info.json" in r.stdout and "add data/chunk-000/episode_000000.parquet" in r.stdout
    fields, body = split_card(card)
    assert fields == {
        "license": "apache-2.0",
        "task_categories": ["robotics"],
        "tags": ["LeRobot", "GR00T", "isaac-lab"],
        "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}],
    }
    parquet = [p.relative_to(converted_dataset).as_posix() for p in converted_dataset.rglob("*.parquet")]
    assert parquet and all(fnmatch.fnmatch(p, fields["configs"][0]["data_files"]) for p in parquet)
    info = json.loads(body.split("```json\n", 1)[1].split("\n```", 1)[0])  # meta/info.json, as the visualiser shows it
    assert info == json.loads((converted_dataset / "meta/info.json").read_text())
    assert "# gr1-demos" in body and "**Episodes:** 6" in body and 'LeRobotDataset("acme/gr1-demos")' in body
    assert "observation.images.ego_view" in body and "demos.hdf5" in body  # camera, source file


def test_card_license_and_a_readme_of_its_own(tmp_path, cache, copy_dataset):
    dataset = copy_dataset()
    r = hub_cli(
        tmp_path,
        cache,
        "upload",
        dataset,
        "--repo-id",
        "acme/ds",
        "--repo-type",
        "dataset",
        "--license",
        "cc-by-4.0",
        "--dry-run",
    )
    assert r.returncode == 0, r.stderr
    from posttrain import hub

    assert split_card(hub.dataset_card(dataset, "acme/ds", "cc-by-4.0"))[0]["license"] == "cc-by-4.0"
    (dataset / "README.md").write_text("# mine\n")
    r = hub_cli(tmp_path, cache, "upload", dataset, "--repo-id", "acme/ds", "--repo-type", "dataset", "--dry-run")
    assert card_line(r) == "add README.md (7 bytes)"  # the user's own, never replaced
    r = hub_cli(
        tmp_path,
        cache,
        "upload",
        dataset,
        "--repo-id",
        "acme/ds",
        "--repo-type",
        "dataset",
        "--path-in-repo",
        "task_1/lerobot",
        "--exclude",
        "README.md",
        "--dry-run",
    )
    assert "README.md" not in r.stdout  # into a folder: the root card belongs to the whole repository


def make_run(tmp_path, eval_step):
    """results/ds/train/run with DONE.json and checkpoint-20, and results/ds/eval/run/metrics.json."""
    run = tmp_path / "results" / "ds" / "train" / "run"
    ckpt = run / "checkpoint-20"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"w" * 10)
    (ckpt / "model_config.json").write_text('{"preset": "tiny"}')
    (ckpt / "train_config.json").write_text(
        json.dumps({"preset": "tiny", "learning_rate": 0.001, "dataset": "results/ds/lerobot", "max_steps": 20})
    )
    (ckpt / "trainer_state.json").write_text('{"global_step": 20}')
    (run / "DONE.json").write_text('{"final_checkpoint": "checkpoint-20", "step": 20}')
    metrics = {
        "step": eval_step,
        "heldout_episodes": [4, 5],
        "action_horizon": 16,
        "policy": {"mse": 0.0123, "mae": 0.05},
        "mean_action": {"mse": 0.04, "mae": 0.1},
        "hold_state": {"mse": 0.09, "mae": 0.2},
        "verdict": {"summary": "The policy beats both baselines."},
    }
    (tmp_path / "results" / "ds" / "eval" / "run").mkdir(parents=True)
    (tmp_path / "results" / "ds" / "eval" / "run" / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_checkpoint_upload_adds_a_model_card_with_config_and_eval(tmp_path, cache):
    from posttrain import hub

    run = make_run(tmp_path, eval_step=20)
    r = hub_cli(tmp_path, cache, "upload", run, "--repo-id", "acme/policy", "--repo-type", "model", "--dry-run")
    assert r.returncode == 0, r.stderr
    ckpt = run / "checkpoint-20"
    card = hub.model_card(ckpt, "acme/policy", "apache-2.0", hub.eval_metrics(ckpt, None))
    assert card_line(r) == f"add README.md ({len(card.encode())} bytes, generated card)"
    fields, body = split_card(card)
    assert fields["license"] == "apache-2.0" and fields["pipeline_tag"] == "robotics"
    assert {"LeRobot", "GR00T", "isaac-lab"} <= set(fields["tags"])
    config = json.loads(body.split("```json\n", 1)[1].split("\n```", 1)[0])
    assert config == json.loads((ckpt / "train_config.json").read_text())
    assert "| policy | 0.0123 | 0.05 |" in body and "| mean-action baseline | 0.04 | 0.1 |" in body
    assert "| hold-current-state baseline | 0.09 | 0.2 |" in body and "2 held-out episode(s)" in body
    assert "The policy beats both baselines." in body and "(step 20)" in body


def test_model_card_leaves_out_an_eval_of_another_checkpoint(tmp_path, cache):
    from posttrain import hub

    run = make_run(tmp_path, eval_step=10)
    ckpt = run / "checkpoint-20"
    assert hub.eval_metrics(ckpt, None) is None
    body = split_card(hub.model_card(ckpt, "acme/policy", "apache-2.0", None))[1]
    assert "No open-loop evaluation" in body and "| policy |" not in body
    given = tmp_path / "results/ds/eval/run/metrics.json"
    r = hub_cli(
        tmp_path,
        cache,
        "upload",
        run,
        "--repo-id",
        "acme/policy",
        "--repo-type",
        "model",
        "--eval-metrics",
        given,
        "--dry-run",
    )
    card = hub.model_card(ckpt, "acme/policy", "apache-2.0", hub.eval_metrics(ckpt, given))
    assert card_line(r) == f"add README.md ({len(card.encode())} bytes, generated card)"
    assert "| policy | 0.0123 | 0.05 |" in card and "step 10" in card  # the evaluated step is named
