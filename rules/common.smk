# Shared by every rule file: config validation, paths, wildcard constraints, the per-stage
# `params:` helpers that make an edit re-run exactly the stages it affects, and the final targets.

import json
import re
import os
import shlex
import sys
from pathlib import Path

import jsonschema
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from posttrain import workflow as posttrain_workflow

REPO = Path(workflow.basedir)  # the directory of the Snakefile
SCHEMA = REPO / "config" / "schema.yaml"
EMBODIMENTS = REPO / "config" / "embodiments"
REQUIRE_GPUS = REPO / "scripts" / "require_gpus.py"  # used as {REQUIRE_GPUS} in shell

# Jobs call `posttrain`, `accelerate` and `torchrun` from the environment Snakemake runs in, also
# when it was started as .venv/bin/snakemake without activating the venv (Slurm jobs inherit PATH).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


# --- configuration ---------------------------------------------------------------------------
def config_error(cfg: dict, schema: dict) -> str | None:
    """The first schema violation as one line that names the key, e.g.
    `train.learning_rate: '1e-4' is not of type 'number'`, or None when the config is valid."""
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(cfg))
    if not errors:
        return None
    error = jsonschema.exceptions.best_match(errors)
    where = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        return f"unknown key {keys} (allowed here: {', '.join(sorted(allowed))})"
    hint = ""
    if error.validator == "type" and isinstance(error.instance, str) and re.fullmatch(r"[-+.\deE]+", error.instance):
        hint = " (write floats with a dot, 1.0e-4: YAML reads 1e-4 as a string)"
    return f"{where or '<top level>'}: {error.message}{hint}"


def check_config(cfg: dict) -> None:
    problem = config_error(cfg, yaml.safe_load(SCHEMA.read_text()))
    if problem:
        raise WorkflowError(f"config: {problem} (schema: config/schema.yaml)")
    validate(cfg, "../config/schema.yaml")  # fills in the schema's defaults


check_config(config)

RESULTS = config["results"]
DS = config["dataset"]["name"]
SOURCE = config["dataset"]["source"]
RUN = config["train"]["run_name"]
# A Hub dataset that is already LeRobot skips synthesis and conversion (rules/hub.smk downloads it).
RAW_SOURCE = SOURCE["kind"] != "hub" or SOURCE.get("format", "hdf5") == "hdf5"

wildcard_constraints:
    ds=r"[A-Za-z0-9_.-]+",
    run=r"[A-Za-z0-9_.-]+",
    k=r"\d+",

localrules:
    all,


# --- params: each rule sees only its own config sub-tree -------------------------------------
def stage_config(*keys: str) -> str:
    """config[keys[0]][keys[1]]... as canonical JSON: a stable `params:` value (sorted keys, plain
    types only) whose change re-runs the rule and everything downstream, and nothing else."""
    node = config
    for key in keys:
        node = node[key]
    return json.dumps(node, sort_keys=True)


def train_config() -> str:
    """The train sub-tree; the gr00t block counts only when the gr00t backend is used."""
    train = dict(config["train"])
    if train["backend"] != "gr00t":
        train.pop("gr00t")
    return json.dumps(train, sort_keys=True)


# --- params: code versions -------------------------------------------------------------------
# A hash of each stage's posttrain sources (syntax trees: comments and layout do not count), so
# that a code change re-runs that stage onward (posttrain.workflow.code_version).
code_version = posttrain_workflow.code_version


def embodiment_files() -> list[Path]:
    """The joint maps and modality.json the converter reads: part of conversion's code version."""
    folder = EMBODIMENTS / config["convert"]["embodiment"]
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


# --- command-line arguments from config ------------------------------------------------------
def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def convert_args() -> str:
    c = config["convert"]
    args = [
        "--embodiment", c["embodiment"],
        "--language-instruction", c["language_instruction"],
        "--task-index", c["task_index"],
        "--fps", c["fps"],
        "--drop-frame", c["drop_frame"],
        "--state-key", c["state_key"],
        "--action-key", c["action_key"],
        "--chunks-size", c["chunks_size"],
        "--crf", c["video"]["crf"],
        "--gop", c["video"]["gop"],
        "--preset", c["video"]["preset"],
    ]
    for camera, key in sorted(c["cameras"].items()):
        args += ["--camera", f"{camera}={key}"]
    return shlex.join(str(a) for a in args)


def synth_args() -> str:
    s = config["synth"]
    return shlex.join(str(a) for a in [
        "--episodes", s["episodes"], "--min-frames", s["min_frames"], "--max-frames", s["max_frames"],
        "--image-size", s["image_size"], "--seed", s["seed"]])


def verify_args() -> str:
    v = config["verify"]
    return shlex.join(str(a) for a in [
        "--min-psnr-db", v["min_psnr_db"], "--sampled-frames", v["sampled_frames"],
        "--preview-episodes", v["preview_episodes"]])


TRAIN_BOOLEANS = ("use_wandb", "tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model")
TRAIN_VALUES = ("backend", "preset", "holdout_episodes", "global_batch_size", "gradient_accumulation_steps",
                "max_steps", "save_steps", "save_total_limit", "learning_rate", "warmup_ratio", "weight_decay",
                "seed", "dataloader_num_workers", "mixed_precision", "action_normalization", "state_dropout_prob")


def train_args() -> str:
    t = config["train"]
    args = []
    for key in TRAIN_VALUES:
        args += [flag(key), t[key]]
    args += [flag(key) if t[key] else "--no-" + flag(key)[2:] for key in TRAIN_BOOLEANS]
    if t["color_jitter_params"]:
        args.append("--color-jitter-params")
        for key in ("brightness", "contrast", "saturation", "hue"):  # the seed command's order
            if key in t["color_jitter_params"]:
                args += [key, t["color_jitter_params"][key]]
    if t["backend"] == "gr00t":
        g = t["gr00t"]
        if not g["repo"]:
            raise WorkflowError("config: train.gr00t.repo: empty, but train.backend is gr00t "
                                "(set it to an Isaac-GR00T checkout, n1.6-release)")
        args += ["--gr00t-repo", g["repo"], "--base-model-path", g["base_model_path"],
                 "--embodiment-tag", g["embodiment_tag"]]
        if g["modality_config_path"]:
            args += ["--modality-config-path", g["modality_config_path"]]
    return shlex.join(str(a) for a in args)


# The gr00t backend launches torchrun itself (from --num-gpus); the native trainer runs under the
# profile's `launcher` resource (e.g. `accelerate launch --num_processes 8 -m posttrain.cli`).
# Launcher and GPU count are resources, never params: switching hardware alone never retrains.
if config["train"]["backend"] == "gr00t":
    TRAIN_COMMAND = "posttrain train --num-gpus {resources.gpu}"
else:
    TRAIN_COMMAND = "{resources.launcher} train"


# --- paths ----------------------------------------------------------------------------------
def raw_hdf5(wildcards=None) -> str:
    """The source HDF5: the configured file for `kind: hdf5`, else what synth/hub writes."""
    if SOURCE["kind"] == "hdf5":
        return SOURCE["path"]
    return f"{RESULTS}/{DS}/raw.hdf5"


def dataset_dir(wildcards) -> str:
    return f"{RESULTS}/{wildcards.ds}/lerobot"


def convert_shard_dirs(wildcards) -> list[str]:
    return [f"{RESULTS}/{wildcards.ds}/convert_shards/{k}" for k in range(config["convert"]["shards"])]


def final_outputs(wildcards=None) -> list[str]:
    """`rule all`: the trained run, open-loop eval metrics and the report pages.

    A GR00T checkpoint is evaluated with Isaac-GR00T's own open_loop_eval.py (`posttrain eval`
    prints the command), so with the gr00t backend the workflow ends at training and its report.
    """
    # called when the DAG is built, after rules/report.smk has defined report_pages()
    targets = [f"{RESULTS}/{DS}/train/{RUN}/DONE.json", *report_pages()]
    if config["train"]["backend"] == "native":
        targets.append(f"{RESULTS}/{DS}/eval/{RUN}/metrics.json")
    return targets
