"""Unit tests of posttrain.workflow: config layering and errors, content fingerprints, embodiment
files and code versions (the Snakemake side is tested by running it: test_workflow.py, test_profiles.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from posttrain import workflow
from posttrain.embodiment import load_embodiment
from posttrain.errors import PosttrainError

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def layers(tmp_path):
    """A default config, two hardware presets and a user overlay, each setting train.max_steps."""
    default = write(tmp_path / "config.yaml", "hardware: cpu\ntrain: {max_steps: 800, run_name: default}\n")
    hw = tmp_path / "hw"
    write(hw / "gpu1.yaml", "train: {max_steps: 30000, run_name: gpu1, preset: base}\n")
    write(hw / "gpu8.yaml", "train: {max_steps: 20000, run_name: gpu8}\n")
    mine = write(tmp_path / "my.yaml", "dataset: {name: mine}\ntrain: {max_steps: 5}\n")
    return default, hw, mine


# --- configuration -------------------------------------------------------------------------------
def test_preset_goes_under_the_users_overlay_and_over_the_default(layers):
    default, hw, mine = layers
    cfg = workflow.workflow_config(default, hw, [], {"hardware": "gpu1"}, SCHEMA)
    assert cfg["train"] == {"max_steps": 30000, "run_name": "gpu1", "preset": "base"}
    cfg = workflow.workflow_config(default, hw, [mine], {"hardware": "gpu1"}, SCHEMA)
    assert cfg["train"] == {"max_steps": 5, "run_name": "gpu1", "preset": "base"}  # the user's file wins
    assert cfg["dataset"] == {"name": "mine"}
    cfg = workflow.workflow_config(default, hw, [mine], {"hardware": "gpu1", "train": {"max_steps": "7"}}, SCHEMA)
    assert cfg["train"]["max_steps"] == 7  # --config wins over the files, typed by the schema


def test_hardware_may_come_from_the_users_file(layers, tmp_path):
    default, hw, _ = layers
    mine = write(tmp_path / "gpu8_mine.yaml", "hardware: gpu8\n")
    assert workflow.workflow_config(default, hw, [mine], {}, SCHEMA)["train"]["run_name"] == "gpu8"
    assert workflow.workflow_config(default, hw, [], {}, SCHEMA)["train"]["run_name"] == "default"


def test_the_default_file_among_the_overlays_does_not_undo_the_preset(layers):
    """The README's older form `--configfile config/config.yaml my.yaml` with a GPU profile."""
    default, hw, mine = layers
    cfg = workflow.workflow_config(default, hw, [default, mine], {"hardware": "gpu1"}, SCHEMA)
    assert cfg["train"]["run_name"] == "gpu1"


def test_replace_workflow_config_keeps_only_the_users_layers(layers):
    default, hw, mine = layers
    cfg = workflow.workflow_config(default, hw, [mine], {"hardware": "gpu1"}, SCHEMA, replace=True)
    assert cfg == {"dataset": {"name": "mine"}, "train": {"max_steps": 5}, "hardware": "gpu1"}


def test_unknown_hardware_names_the_known_presets(layers):
    default, hw, _ = layers
    with pytest.raises(PosttrainError, match=r"hardware: 'gpu3' is not a preset \(known: cpu, gpu1, gpu8;"):
        workflow.workflow_config(default, hw, [], {"hardware": "gpu3"}, SCHEMA)


def test_merge_is_deep_and_later_layers_win():
    a = {"train": {"x": 1, "y": {"p": 1}}, "keep": [1]}
    b = {"train": {"y": {"q": 2}}, "keep": [2]}
    assert workflow.merge(a, b) == {"train": {"x": 1, "y": {"p": 1, "q": 2}}, "keep": [2]}
    assert a == {"train": {"x": 1, "y": {"p": 1}}, "keep": [1]}  # inputs untouched


def test_command_line_values_are_typed_by_the_schema():
    """Snakemake reads `--config train='{max_steps: 100}'` nested values as strings."""
    typed = workflow.typed_cli_values(
        {
            "train": {
                "max_steps": "100",
                "learning_rate": "1.0e-4",
                "warmup_ratio": "0",
                "use_wandb": "true",
                "run_name": "1",
                "color_jitter_params": {"hue": ".1"},
            },
            "hardware": "gpu1",
        },
        SCHEMA,
    )
    assert typed == {
        "train": {
            "max_steps": 100,
            "learning_rate": 1.0e-4,
            "warmup_ratio": 0,
            "use_wandb": True,
            "run_name": "1",
            "color_jitter_params": {"hue": 0.1},
        },
        "hardware": "gpu1",
    }
    assert workflow.typed_cli_values({"train": {"max_steps": "1e3"}}, SCHEMA) == {"train": {"max_steps": "1e3"}}


def test_gpus_without_a_hardware_name_are_refused():
    hw = REPO / "config" / "hw"
    with pytest.raises(PosttrainError, match=r"hardware: not set, but train gets 1 GPU\(s\) .*add hardware=NAME"):
        workflow.check_hardware({"hardware": "cpu"}, explicit=False, train_gpus=1, hw_dir=hw)
    workflow.check_hardware({"hardware": "cpu"}, explicit=True, train_gpus=2, hw_dir=hw)  # e.g. slurm-local
    workflow.check_hardware({"hardware": "cpu"}, explicit=False, train_gpus=0, hw_dir=hw)
    workflow.check_hardware({"hardware": "gpu1"}, explicit=False, train_gpus=1, hw_dir=hw)  # set in config.yaml


def test_invalid_yaml_is_one_line_naming_file_line_and_problem(tmp_path):
    bad = write(tmp_path / "bad.yaml", "train:\n  max_steps: 100\n   lr: [1\n")
    with pytest.raises(PosttrainError) as err:
        workflow.read_config_file(bad)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{bad}: line 3, column ") and message.endswith("(not valid YAML)")
    with pytest.raises(PosttrainError, match="expected config keys"):
        workflow.read_config_file(write(tmp_path / "list.yaml", "- a\n- b\n"))
    assert workflow.read_config_file(write(tmp_path / "empty.yaml", "# nothing\n")) == {}


def test_float_hint_only_where_a_number_is_wanted():
    assert workflow.config_error(
        {"dataset": {"name": "x", "source": {"kind": "synth"}}, "train": {"learning_rate": "1e-4"}}, SCHEMA
    ).endswith("(write floats with a dot, 1.0e-4: YAML reads 1e-4 as a string)")
    problem = workflow.config_error(
        {"dataset": {"name": "x", "source": {"kind": "synth"}}, "train": {"save_steps": "100"}}, SCHEMA
    )
    assert problem == "train.save_steps: '100' is not of type 'integer'"


# --- content fingerprints ------------------------------------------------------------------------
def test_fingerprint_follows_content_not_mtime(tmp_path):
    data, cache = tmp_path / "demos.hdf5", tmp_path / "cache" / "fp.json"
    data.write_bytes(os.urandom(3 << 20))
    first = workflow.content_fingerprint(data, cache)
    os.utime(data, ns=(data.stat().st_atime_ns, data.stat().st_mtime_ns + 10**9))  # touch
    assert workflow.content_fingerprint(data, cache) == first
    copy = tmp_path / "copy.hdf5"
    shutil.copyfile(data, copy)
    assert workflow.content_fingerprint(copy, cache) == first
    data.write_bytes(data.read_bytes()[:-1] + b"x")
    assert workflow.content_fingerprint(data, cache) != first
    assert workflow.content_fingerprint(tmp_path / "absent.hdf5", cache) == "missing"


def test_fingerprint_is_cached_by_path_size_and_mtime(tmp_path):
    """Same size and mtime: the cached digest is used, the file is not read again (here shown by
    changing the bytes behind the cache's back); the cache survives the process (JSON file)."""
    data, cache = tmp_path / "demos.hdf5", tmp_path / "fp.json"
    data.write_bytes(b"a" * 1000)
    first = workflow.content_fingerprint(data, cache)
    stat = data.stat()
    data.write_bytes(b"b" * 1000)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    workflow._fingerprints.clear()  # a new Snakemake process: only the JSON cache is left
    assert workflow.content_fingerprint(data, cache) == first
    cache.write_text("{not json")  # a broken cache costs a re-hash, nothing else
    workflow._fingerprints.clear()
    assert workflow.content_fingerprint(data, cache) != first


# --- embodiments and code versions ---------------------------------------------------------------
def test_embodiment_files_are_found_where_the_converter_finds_them(tmp_path, monkeypatch):
    bundled = REPO / "config" / "embodiments" / "gr1"
    assert workflow.embodiment_files("gr1") == sorted(p for p in bundled.iterdir() if p.is_file())
    outside = tmp_path / "robots" / "my_robot"
    shutil.copytree(bundled, outside)
    assert workflow.embodiment_files(str(outside)) == sorted(outside.iterdir())
    monkeypatch.chdir(tmp_path)  # a relative path is the working directory's, as for the converter
    files = workflow.embodiment_files("robots/my_robot")
    assert files == sorted(outside.iterdir())
    assert files[0].parent == load_embodiment("robots/my_robot").directory
    assert workflow.embodiment_files("robots/none") == []


def test_code_version_of_another_source_tree(tmp_path):
    copy = tmp_path / "posttrain"
    shutil.copytree(workflow.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = workflow.code_version("convert", package=copy)
    assert before == workflow.code_version("convert")  # same sources, same hash
    (copy / "convert.py").write_text((copy / "convert.py").read_text() + "\n# a comment\n")
    assert workflow.code_version("convert", package=copy) == before
    (copy / "convert.py").write_text((copy / "convert.py").read_text() + "EDITED = 1\n")
    assert workflow.code_version("convert", package=copy) != before
    assert workflow.code_version("train", package=copy) == workflow.code_version("train")


def test_verdict_line(tmp_path):
    metrics = tmp_path / "metrics.json"
    assert workflow.verdict_line(metrics) is None  # no eval yet
    metrics.write_text(json.dumps({"verdict": {"beats_all_baselines": False, "summary": "It loses."}}))
    assert workflow.verdict_line(metrics) == f"WARNING: eval verdict ({metrics}): It loses."
    metrics.write_text(json.dumps({"verdict": {"beats_all_baselines": True, "summary": "It wins."}}))
    assert workflow.verdict_line(metrics) == f"eval verdict ({metrics}): It wins."


def test_command_line_null_where_the_schema_allows_it():
    schema = {
        "properties": {
            "train": {"properties": {"max_steps": {"type": ["integer", "null"]}, "run_name": {"type": "string"}}}
        }
    }
    typed = workflow.typed_cli_values({"train": {"max_steps": "null", "run_name": "null"}}, schema)
    assert typed == {"train": {"max_steps": None, "run_name": "null"}}
    assert workflow.typed_cli_values({"train": {"max_steps": "100"}}, schema) == {"train": {"max_steps": 100}}


# --- several sources and the rules' flags ------------------------------------------------------------
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
TWO = {
    "left": {"kind": "synth", "language_instruction": "Use the left hand.", "synth": {"task": "reach_left"}},
    "bottle": {"kind": "hdf5", "path": "/data/bottle.hdf5", "language_instruction": "Bottle.", "task_index": 4},
}


def with_sources(sources: dict, **dataset) -> dict:
    return {**CONFIG, "dataset": {"name": "mix", "sources": sources, **dataset}}


def test_sources_errors_are_one_line():
    synth_schema = SCHEMA["properties"]["synth"]
    default = CONFIG["dataset"]["source"]
    assert workflow.sources_error(CONFIG, default, synth_schema) is None  # one source: nothing to check
    assert workflow.sources_error(with_sources(TWO, source=default), default, synth_schema) is None
    assert "dataset.source and dataset.sources are both set" in workflow.sources_error(
        with_sources(TWO, source={"kind": "hdf5", "path": "x.hdf5"}), default, synth_schema
    )
    assert (
        workflow.sources_error(with_sources({1: TWO["left"]}), default, synth_schema)
        == "dataset.sources: source name 1 is not a string; quote it"
    )
    bad = {"left": {**TWO["left"], "synth": {"task": "reach_up"}}}
    assert "dataset.sources.left.synth.task" in workflow.sources_error(with_sources(bad), default, synth_schema)


def test_a_sources_flags_take_its_overrides_and_leave_its_task_to_the_gather():
    cfg = with_sources(TWO)
    assert "--task reach_left" in workflow.source_synth_flags(cfg, "left")
    assert "--task reach_right" in workflow.source_synth_flags(cfg, None)
    flags = workflow.source_convert_flags(cfg, "bottle")
    assert flags.endswith("--source bottle") and "--language-instruction" not in flags and "--task-index" not in flags
    assert "--language-instruction" in workflow.source_convert_flags(CONFIG, None)
    assert workflow.gather_flags(TWO) == (
        "--source-instruction 'left=Use the left hand.' "
        "--source-instruction bottle=Bottle. --source-task-index bottle=4"
    )


def test_hub_and_upload_flags():
    spec = {"kind": "hub", "repo_id": "nvidia/x", "revision": "v1", "format": "hdf5", "path": "a.hdf5"}
    assert (
        workflow.hub_source_flags(spec, "dataset.source")
        == "--repo-id nvidia/x --repo-type dataset --format hdf5 --revision v1 --path a.hdf5"
    )
    with pytest.raises(PosttrainError, match=r"dataset.sources.b.include: needed"):
        workflow.hub_source_flags({"repo_id": "nvidia/x", "format": "lerobot"}, "dataset.sources.b")
    assert (
        workflow.upload_flags({"dataset_repo": "me/ds", "private": True, "dry_run": True}, "dataset_repo")
        == "--repo-id me/ds --private --dry-run"
    )


def test_policy_image_size_without_importing_torch():
    assert workflow.policy_image_size("tiny") == 64 and workflow.policy_image_size("base") == 224
