# Shared by every .smk file: config validation, paths, wildcard constraints, the per-stage
# `params:` helpers that make an edit re-run exactly the stages it affects, and the final targets.

import json
import re
import shlex
import sys
from pathlib import Path

import yaml
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
            DEFAULT_CONFIG,
            HARDWARE,
            workflow.overwrite_configfiles,
            settings.config,
            schema,
            replace=settings.replace_workflow_config,
        )
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
RUN = config["train"]["run_name"]
# The demonstrations: dataset.source, or several under dataset.sources, each converted on its own and
# gathered into one dataset (rules/data.smk). DATA_SOURCES: name -> spec, in config order; one source is
# {None: dataset.source}, and its files keep their paths (results/<ds>/raw.hdf5, convert_shards/<k>).
MULTI_SOURCE = bool(config["dataset"].get("sources"))
SOURCE = config["dataset"].get("source") or {"kind": "synth"}
DATA_SOURCES = dict(config["dataset"]["sources"]) if MULTI_SOURCE else {None: SOURCE}
# A Hub dataset that is already LeRobot skips synthesis and conversion (rules/hub.smk downloads it).
RAW_SOURCE = MULTI_SOURCE or SOURCE["kind"] != "hub" or SOURCE.get("format", "hdf5") == "hdf5"


def check_sources() -> None:
    default = posttrain_workflow.read_config_file(DEFAULT_CONFIG).get("dataset", {}).get("source")
    synth_schema = yaml.safe_load(SCHEMA.read_text())["properties"]["synth"]
    problem = posttrain_workflow.sources_error(config, default, synth_schema)
    if problem:
        raise SystemExit(f"error: config: {problem}")


check_sources()


# One dataset and one run per config: the wildcards match only the configured names, so that
# `results/other/...` cannot build the configured dataset under another name.
wildcard_constraints:
    ds=re.escape(DS),
    run=re.escape(RUN),
    k=r"\d+",


# --- params: each rule's config block, as the flags of its `posttrain <stage>` command ------------
# One `args` param per rule: the command-line flags that give the stage exactly its config block's
# values (posttrain.settings), so that editing a value re-runs that rule and what follows, nothing else.
def stage_flags(stage: str) -> str:
    try:
        if stage == "train":
            return posttrain_workflow.train_flags(config["train"])
        return posttrain_workflow.stage_flags(stage, config[stage])
    except PosttrainError as err:
        raise SystemExit(f"error: {err}")


# Several sources (dataset.sources): per-source synth and convert flags, each source's task for the
# gather (posttrain.workflow: an instruction edit re-runs the gather, never a source's encoding).
def source_synth_args(name: str | None) -> str:
    return posttrain_workflow.source_synth_flags(config, name)


def source_convert_args(name: str | None) -> str:
    return posttrain_workflow.source_convert_flags(config, name)


def convert_gather_args() -> str:
    return posttrain_workflow.gather_flags(DATA_SOURCES)


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
    spec = source_spec(wildcards)
    if spec["kind"] != "hdf5":
        return ""
    return posttrain_workflow.content_fingerprint(spec["path"], FINGERPRINTS)


def all_source_fingerprints(wildcards=None) -> str:
    """source_fingerprint of every source (verify reads them all)."""
    if not MULTI_SOURCE:
        return source_fingerprint()
    return json.dumps({name: source_fingerprint({"source": name}) for name in DATA_SOURCES})


# The gr00t backend launches torchrun itself (from --num-gpus); the native trainer runs under the
# profile's `launcher` resource (e.g. `accelerate launch --num_processes 8 -m posttrain.cli`).
# Launcher and GPU count are resources, never params: switching hardware alone never retrains.
if config["train"]["backend"] == "gr00t":
    TRAIN_COMMAND = "posttrain train --num-gpus {resources.gpu}"
else:
    TRAIN_COMMAND = "{resources.launcher} train"


# --- paths ----------------------------------------------------------------------------------
def source_name(wildcards=None) -> str | None:
    """The {source} wildcard (a name of dataset.sources); None for the one dataset.source."""
    return wildcards.get("source") if wildcards is not None else None


def source_spec(wildcards=None) -> dict:
    return DATA_SOURCES[source_name(wildcards)]


def source_path(name: str) -> str:
    """An output template of a per-source rule: results/<ds>/NAME for one source, else
    results/<ds>/sources/<source>/NAME."""
    return f"{RESULTS}/{{ds}}/sources/{{source}}/{name}" if MULTI_SOURCE else f"{RESULTS}/{{ds}}/{name}"


def source_log(folder: str, name: str = "") -> str:
    """logs/<rule>/<ds>[/<source>][/<name>] (without .log / .tsv)."""
    path = f"{folder}/{{ds}}/{{source}}" if MULTI_SOURCE else f"{folder}/{{ds}}"
    return f"{path}/{name}" if name else path


def source_names(kind: str | None = None) -> str:
    """A wildcard constraint: the names of the sources (of this kind: a synth rule never makes a hub source)."""
    names = [name for name, spec in DATA_SOURCES.items() if kind in (None, spec["kind"]) and name is not None]
    return "|".join(re.escape(name) for name in names) or "(?!)"


def raw_hdf5(wildcards=None) -> str:
    """The source HDF5: the configured file for `kind: hdf5`, else what synth/hub writes."""
    spec, name = source_spec(wildcards), source_name(wildcards)
    if spec["kind"] == "hdf5":
        return spec["path"]
    return f"{RESULTS}/{DS}/sources/{name}/raw.hdf5" if MULTI_SOURCE else f"{RESULTS}/{DS}/raw.hdf5"


def raw_hdf5_input(wildcards=None):
    """raw_hdf5 as an input: a user's file with its mtime ignored (ancient), because its
    content fingerprint is a param (source_fingerprint): a touch or an rsync re-runs nothing."""
    return ancient(raw_hdf5(wildcards)) if source_spec(wildcards)["kind"] == "hdf5" else raw_hdf5(wildcards)


def all_raw_hdf5_inputs(wildcards=None) -> list:
    """raw_hdf5_input of every source, in config order."""
    return [raw_hdf5_input({"source": name} if MULTI_SOURCE else None) for name in DATA_SOURCES]


def verify_source_args(wildcards=None) -> str:
    """verify's --source: the HDF5, or NAME=HDF5 for each of several sources."""
    if not MULTI_SOURCE:
        return shlex.join(["--source", raw_hdf5()])
    return shlex.join(a for name in DATA_SOURCES for a in ("--source", f"{name}={raw_hdf5({'source': name})}"))


def dataset_dir(wildcards) -> str:
    return f"{RESULTS}/{wildcards.ds}/lerobot"


# The dataset's meta/ files, written by convert_gather (or the Hub download); stats.json and
# episodes_stats.jsonl are rules.stats.output.
META = f"{RESULTS}/{{ds}}/lerobot/meta"


def run_dir(wildcards) -> str:
    """results/<ds>/train/<run>: checkpoints, tensorboard and DONE.json of one training run."""
    return f"{RESULTS}/{wildcards.ds}/train/{wildcards.run}"


def verify_dir(wildcards) -> str:
    return f"{RESULTS}/{wildcards.ds}/verify"


def eval_dir(wildcards) -> str:
    return f"{RESULTS}/{wildcards.ds}/eval/{wildcards.run}"


def convert_shard_dirs(wildcards) -> list[str]:
    """Every shard directory the gather reads: per source, in config order."""
    shards = range(config["convert"]["shards"])
    if MULTI_SOURCE:
        return [f"{RESULTS}/{wildcards.ds}/sources/{name}/convert_shards/{k}" for name in DATA_SOURCES for k in shards]
    return [f"{RESULTS}/{wildcards.ds}/convert_shards/{k}" for k in shards]


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


def export_outputs() -> list[str]:
    """The copies config `export:` asks for (added to `rule all` by final_outputs)."""
    if config["export"]["lerobot_v3"]:
        return [f"{RESULTS}/{DS}/lerobot_v3"]
    return []


def policy_image_size() -> int:
    return posttrain_workflow.policy_image_size(config["train"]["preset"], SOURCES)


def hub_source_args(name: str | None = None) -> str:
    where = f"dataset.sources.{name}" if name is not None else "dataset.source"
    try:
        return posttrain_workflow.hub_source_flags(DATA_SOURCES[name], where)
    except PosttrainError as err:
        raise SystemExit(f"error: {err}")


HUB_UPLOAD = config.get("hub_upload") or {}


def upload_args(repo_key: str) -> str:
    return posttrain_workflow.upload_flags(HUB_UPLOAD, repo_key)
