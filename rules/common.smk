# Shared by every .smk file: config validation, paths, wildcard constraints, the per-stage
# `params:` helpers that make an edit re-run exactly the stages it affects, and the final targets.

import importlib.util
import json
import re
import os
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from posttrain import workflow as posttrain_workflow
from posttrain.errors import PosttrainError

REPO = Path(workflow.basedir)  # the directory of the Snakefile
DEFAULT_CONFIG = REPO / "config" / "config.yaml"
HARDWARE = REPO / "config" / "hw"  # presets, picked by config `hardware` (profiles set it)
SCHEMA = REPO / "config" / "schema.yaml"
# the checkout's own sources (its code versions); the installed package where there are none
SOURCES = REPO / "src" / "posttrain" if (REPO / "src" / "posttrain").is_dir() else posttrain_workflow.PACKAGE
FINGERPRINTS = Path(".snakemake") / "posttrain" / "content_fingerprints.json"  # in the working directory

# Jobs call `posttrain`, `accelerate` and `torchrun` from the environment Snakemake runs in, also
# when it was started as .venv/bin/snakemake without activating the venv (Slurm jobs inherit PATH).
posttrain_workflow.put_first_on_path(Path(sys.executable).parent)


# --- configuration ---------------------------------------------------------------------------
# config/config.yaml < config/hw/<hardware>.yaml < --configfile files < --config (and a profile's
# `config:`), merged by posttrain.workflow.workflow_config: a profile sets only `hardware: NAME`, so
# a user's --configfile no longer drops the preset. Snakemake has already merged the user's files
# and --config into `config`; they are re-layered here over the default and the preset. A config
# fault stops the run with one line (SystemExit: Snakemake adds no traceback to it).
def profile_train_gpus() -> int:
    """resources.gpu of the train rule as the profile (or --set-resources) sets it; 0 without."""
    resource = workflow.resource_settings.overwrite_resources.get("train", {}).get("gpu")
    try:
        return int(resource.value)
    except (AttributeError, TypeError, ValueError):
        return 0


def load_config() -> dict:
    settings = workflow.config_settings
    schema = yaml.safe_load(SCHEMA.read_text())
    try:
        merged = posttrain_workflow.workflow_config(
            DEFAULT_CONFIG, HARDWARE, workflow.overwrite_configfiles, settings.config, schema,
            replace=settings.replace_workflow_config)
        explicit = "hardware" in settings.overwrite_config
        posttrain_workflow.check_hardware(merged, explicit, profile_train_gpus(), HARDWARE)
    except PosttrainError as err:
        raise SystemExit(f"error: {err}")
    problem = posttrain_workflow.config_error(merged, schema)
    if problem:
        raise SystemExit(f"error: config: {problem} (schema: config/schema.yaml)")
    return merged


config.clear()
config.update(load_config())
validate(config, "../config/schema.yaml")  # fills in the schema's defaults

RESULTS = config["results"]
DS = config["dataset"]["name"]
SOURCE = config["dataset"]["source"]
RUN = config["train"]["run_name"]
# A Hub dataset that is already LeRobot skips synthesis and conversion (rules/hub.smk downloads it).
RAW_SOURCE = SOURCE["kind"] != "hub" or SOURCE.get("format", "hdf5") == "hdf5"

# One dataset and one run per config: the wildcards match only the configured names, so that
# `results/other/...` cannot build the configured dataset under another name.
wildcard_constraints:
    ds=re.escape(DS),
    run=re.escape(RUN),
    k=r"\d+",


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


# --- params: code versions and content fingerprints -------------------------------------------
# A hash of each stage's posttrain sources (syntax trees: comments and layout do not count), so
# that a code change re-runs that stage onward (posttrain.workflow.code_version).
def code_version(stage: str, extra: list[Path] = ()) -> str:
    return posttrain_workflow.code_version(stage, extra, SOURCES)


def embodiment_files() -> list[Path]:
    """The joint maps and modality.json the converter reads: part of conversion's code version."""
    return posttrain_workflow.embodiment_files(config["convert"]["embodiment"])


def source_fingerprint(wildcards=None) -> str:
    """A user's source HDF5 counts by content (its input is ancient(): see raw_hdf5_input); the
    raw.hdf5 that synth/hub write is re-made only when their own params change, so its mtime is
    what it should be ("" here, and a fingerprint of a file not yet written could not be stable)."""
    if SOURCE["kind"] != "hdf5":
        return ""
    return posttrain_workflow.content_fingerprint(SOURCE["path"], FINGERPRINTS)


# --- command-line arguments from config ------------------------------------------------------
def flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def convert_args() -> str:
    c = config["convert"]
    args = [
        "--embodiment", c["embodiment"],
        "--language-instruction", c["language_instruction"],
        "--task-index", c["task_index"],
        "--fps", c["fps"],
        "--drop-frame", c["drop_frame"],
        "--failed-demos", c["failed_demos"],
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
        "--embodiment", s["embodiment"], "--episodes", s["episodes"], "--min-frames", s["min_frames"],
        "--max-frames", s["max_frames"], "--image-size", s["image_size"], "--seed", s["seed"]])


def verify_args() -> str:
    v = config["verify"]
    return shlex.join(str(a) for a in [
        "--min-psnr-db", v["min_psnr_db"], "--sampled-frames", v["sampled_frames"],
        "--preview-episodes", v["preview_episodes"]])


TRAIN_BOOLEANS = ("use_wandb", "tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model")
TRAIN_VALUES = ("backend", "preset", "holdout_episodes", "global_batch_size", "gradient_accumulation_steps",
                "max_steps", "epochs", "min_steps", "save_steps", "save_total_limit", "learning_rate", "warmup_ratio",
                "weight_decay", "seed", "dataloader_num_workers", "mixed_precision", "action_normalization",
                "state_dropout_prob")
# The gr00t backend's own values of these, under train.gr00t (the native policy trains other modules).
TRAIN_GR00T_OWN = ("gradient_accumulation_steps", "tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model")


def train_args() -> str:
    t = config["train"]
    if t["backend"] == "gr00t":
        t = {**t, **{key: t["gr00t"][key] for key in TRAIN_GR00T_OWN}}
    args = []
    for key in TRAIN_VALUES:
        if t[key] is not None:  # max_steps: null = the length comes from train.epochs
            args += [flag(key), t[key]]
    args += [flag(key) if t[key] else f"--no-{flag(key)[2:]}" for key in TRAIN_BOOLEANS]
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


def raw_hdf5_input(wildcards=None):
    """raw_hdf5 as an input: a user's file with its mtime ignored (ancient), because its
    content fingerprint is a param (source_fingerprint): a touch or an rsync re-runs nothing."""
    return ancient(raw_hdf5()) if SOURCE["kind"] == "hdf5" else raw_hdf5()


def dataset_dir(wildcards) -> str:
    return f"{RESULTS}/{wildcards.ds}/lerobot"


def convert_shard_dirs(wildcards) -> list[str]:
    return [f"{RESULTS}/{wildcards.ds}/convert_shards/{k}" for k in range(config["convert"]["shards"])]


def print_verdict() -> None:
    line = posttrain_workflow.verdict_line(f"{RESULTS}/{DS}/eval/{RUN}/metrics.json")
    if line:
        print(line, file=sys.stderr)


def final_outputs(wildcards=None) -> list[str]:
    """The final targets (`all`): the trained run, open-loop eval metrics and the report pages.

    A GR00T checkpoint is evaluated with Isaac-GR00T's own open_loop_eval.py (`posttrain eval`
    prints the command), so with the gr00t backend the workflow ends at training and its report.
    """
    # called when the DAG is built, after rules/report.smk has defined report_pages()
    targets = [f"{RESULTS}/{DS}/train/{RUN}/DONE.json", *report_pages()]
    if config["train"]["backend"] == "native":
        targets.append(f"{RESULTS}/{DS}/eval/{RUN}/metrics.json")
    return [*targets, *export_outputs()]  # rules/export.smk: the copies config `export:` turns on


# --- helpers used by one .smk file each (here, because `snakemake --lint` wants functions apart) ---
def report_pages() -> list[str]:
    """The report pages `rule all` asks for (one dataset, one run)."""
    base = f"{RESULTS}/{DS}/report"
    pages = [f"{base}/dataset.html", f"{base}/verify.html", f"{base}/episode_video.html"]
    # Our TensorBoard tags and checkpoint layout are the native trainer's; a GR00T run has its own
    # logs (wandb/trainer_state.json) and is evaluated with Isaac-GR00T's open_loop_eval.py.
    if config["train"]["backend"] == "native":
        pages += [f"{base}/{RUN}/training_curves.png", f"{base}/{RUN}/eval_metrics.html"]
    return pages


def eval_args() -> str:
    e = config["eval"]
    args = ["--episodes-to-plot", e["plot_episodes"], "--stride", e.get("stride", 1),
            "--batch-size", e.get("batch_size", 8), "--seed", e.get("seed", 0)]
    if e["all_checkpoints"]:
        args.append("--all-checkpoints")
    return shlex.join(str(a) for a in args)


def export_outputs() -> list[str]:
    """The copies config `export:` asks for (added to `rule all` by final_outputs)."""
    if config["export"]["lerobot_v3"]:
        return [f"{RESULTS}/{DS}/lerobot_v3"]
    return []


def policy_image_size() -> int:
    """train.preset's image size, from the checkout's policy/presets.py loaded on its own: importing
    the posttrain.policy package would import torch, which the Snakemake process need not have.
    """
    spec = importlib.util.spec_from_file_location(
        "posttrain_policy_presets", SOURCES / "policy" / "presets.py"
    )
    presets = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = presets  # @dataclass looks its module up there
    spec.loader.exec_module(presets)
    return presets.PolicyConfig.from_preset(config["train"]["preset"]).image_size


def hub_source_args() -> str:
    s = SOURCE
    args = ["--repo-id", s["repo_id"], "--repo-type", s.get("repo_type", "dataset"),
            "--format", s.get("format", "hdf5")]
    if s.get("revision"):
        args += ["--revision", s["revision"]]
    if s.get("format", "hdf5") == "hdf5":
        path = s.get("path") or s.get("filename")
        if not path:
            raise WorkflowError("config: dataset.source.path: needed for a hub source with format hdf5 "
                                "(the HDF5 file inside the repository)")
        args += ["--path", path]
    else:
        patterns = s.get("include")  # (a variable may not be called `include` in a .smk file)
        if not patterns:
            raise WorkflowError("config: dataset.source.include: needed for a hub source with format lerobot "
                                "(glob(s) of the dataset's files, e.g. 'task/lerobot/**')")
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            args += ["--include", pattern]
    return shlex.join(str(a) for a in args)


HUB_UPLOAD = config.get("hub_upload") or {}


def upload_args(repo_key: str) -> str:
    args = ["--repo-id", HUB_UPLOAD[repo_key]]
    if HUB_UPLOAD.get("private"):
        args.append("--private")
    if HUB_UPLOAD.get("dry_run"):
        args.append("--dry-run")
    return shlex.join(args)
