"""Build-system logic the Snakemake rules call, kept here so that it is unit-tested.

Code versions: Snakemake's `code` trigger only sees a rule's shell text, not the posttrain package
it calls. So each rule gets a `code` param: a hash of its stage module and every posttrain module it
imports (found statically, transitively). The hash is of the parsed syntax tree, so comments and
formatting never re-run anything; any change to what the code does re-runs that stage onward.
The dispatcher cli.py and this module are left out (they change no stage's output).

Also here: the config the rules see (config/config.yaml, the hardware preset, the user's overlays
and --config, merged in that order), the one-line config errors, the content fingerprint of a source
HDF5 (its content, not its mtime, re-runs conversion), the embodiment files conversion reads, and
each rule's command-line flags from its config block (posttrain.settings).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import yaml

from posttrain import settings
from posttrain.embodiment import load_embodiment
from posttrain.errors import PosttrainError

PACKAGE = Path(__file__).resolve().parent  # src/posttrain
# posttrain.settings too: a rule passes every setting as a flag (stage_flags), so its defaults and help
# texts never change what a workflow job computes.
NOT_HASHED = ("posttrain", "posttrain.cli", "posttrain.workflow", "posttrain.settings")


def module_file(name: str, package: Path = PACKAGE) -> Path | None:
    """posttrain.a.b -> src/posttrain/a/b.py (or a/b/__init__.py); None for a name that is not a module."""
    base = package.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, dotted: str) -> set[str]:
    """The posttrain names a module imports (absolute and relative imports, and `from x import module`)."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            found.add(base)
            # `from posttrain import lerobot` names a module, not an attribute
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "posttrain" or name.startswith("posttrain.")}


@functools.cache
def stage_sources(stage: str, package: Path = PACKAGE) -> tuple[Path, ...]:
    """posttrain/<stage>.py and the posttrain modules it imports, transitively, sorted (from the
    sources in `package`: the workflow's checkout passes its own src/posttrain)."""
    seen, todo, files = set(), [f"posttrain.{stage}"], set()
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_HASHED:
            continue
        seen.add(name)
        path = module_file(name, package)
        if path is not None:
            files.add(path)
            todo.extend(imported_modules(path, name))
    return tuple(sorted(files))


def source_digest(path: Path) -> bytes:
    """What a Python file does, without its comments and layout: the dump of its syntax tree."""
    return ast.dump(ast.parse(path.read_text(), filename=str(path))).encode()


def code_version(stage: str, extra: list[Path] = (), package: Path = PACKAGE) -> str:
    """16 hex digits over the stage's sources (syntax trees) and `extra` data files (bytes)."""
    package = Path(package)
    digest = hashlib.sha256()
    for path in stage_sources(stage, package):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + source_digest(path) + b"\0")
    for path in sorted(Path(p) for p in extra):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def embodiment_files(embodiment: str) -> list[Path]:
    """The files of the embodiment directory conversion reads (part of its code version), found the
    way the converter finds it (posttrain.embodiment.load_embodiment: a bundled name first, else a
    path from the working directory, which is the jobs' too). [] when there is no valid one: the
    converter then stops with its own one-line error, and fixing it changes the hash."""
    try:
        folder = load_embodiment(embodiment).directory
    except PosttrainError:
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file())


# --- configuration ------------------------------------------------------------------------------
# Snakemake's own layering cannot carry a hardware preset: a profile's `configfile:` list is
# replaced by the user's --configfile. So a profile sets only `hardware: NAME`, and the workflow
# merges config/hw/NAME.yaml itself, under the user's overlays:
#   config/config.yaml < config/hw/<hardware>.yaml < --configfile files (in order) < --config
def read_config_file(path: str | os.PathLike) -> dict:
    """A YAML config file as a mapping; a fault is one line naming the file, line and problem."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise PosttrainError(f"{path}: cannot read ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise PosttrainError(f"{path}: {where}{problem} (not valid YAML)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PosttrainError(f"{path}: expected config keys (a mapping) at the top level, got {type(data).__name__}")
    return data


def merge(*layers: dict) -> dict:
    """Deep merge, later layers win key by key (as Snakemake merges --configfile files)."""
    merged: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
    return merged


INTEGER = re.compile(r"[-+]?\d+")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
BOOLEANS = {"true": True, "false": False}


def _typed(text: str, types: set[str]):
    if types & {"integer", "number"} and INTEGER.fullmatch(text):
        return int(text)
    if "number" in types and NUMBER.fullmatch(text):
        return float(text)
    if "boolean" in types and text.lower() in BOOLEANS:
        return BOOLEANS[text.lower()]
    if "null" in types and text in ("null", "~", ""):  # e.g. train='{max_steps: null}'
        return None
    return text


def typed_cli_values(values: dict, schema: dict) -> dict:
    """--config values typed as the schema says. Snakemake reads a nested value such as
    `--config train='{max_steps: 100}'` with YAML's BaseLoader, which keeps every scalar a string
    ('100'); a string is converted only where the schema wants an integer, number or boolean."""
    typed = {}
    properties = schema.get("properties", {})
    for key, value in values.items():
        sub = properties.get(key, {})
        if isinstance(value, dict):
            typed[key] = typed_cli_values(value, sub)
        elif isinstance(value, str):
            kind = sub.get("type", ())
            typed[key] = _typed(value, {kind} if isinstance(kind, str) else set(kind))
        else:
            typed[key] = value
    return typed


def hardware_presets(hw_dir: Path) -> list[str]:
    return ["cpu", *sorted(p.stem for p in Path(hw_dir).glob("*.yaml"))]


def hardware_preset(name, hw_dir: Path) -> dict:
    """config/hw/<name>.yaml; {} for `cpu` (the default config is the CPU preset)."""
    if name == "cpu":
        return {}
    path = Path(hw_dir) / f"{name}.yaml"
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or not path.is_file():
        raise PosttrainError(
            f"config: hardware: {name!r} is not a preset (known: "
            f"{', '.join(hardware_presets(hw_dir))}; files {hw_dir}/<name>.yaml)"
        )
    return read_config_file(path)


def workflow_config(
    default: Path, hw_dir: Path, configfiles: list, cli: dict, schema: dict, replace: bool = False
) -> dict:
    """The config the rules see: `default` < hw_dir/<hardware>.yaml < `configfiles` < `cli` (--config,
    and a profile's `config:`). `hardware` itself may come from any layer. The default file among
    `configfiles` (the README's older `--configfile config/config.yaml my.yaml`) is skipped: it is
    the bottom layer already, and repeated above the preset it would undo it. `replace` is
    Snakemake's --replace-workflow-config: the user's files replace the default and the preset."""
    default = Path(default)
    files = [read_config_file(f) for f in configfiles if Path(f).resolve() != default.resolve()]
    overlays = merge(*files, typed_cli_values(cli, schema))
    if replace:
        return overlays
    base = read_config_file(default)
    hardware = merge(base, overlays).get("hardware", "cpu")
    return merge(base, hardware_preset(hardware, hw_dir), overlays)


def check_hardware(config: dict, explicit: bool, train_gpus: int, hw_dir: Path) -> None:
    """A profile that gives training GPUs names its preset in `config: {hardware: ...}`; a --config
    on the command line replaces that whole profile key. Refuse rather than train the CPU preset
    on the GPUs (`explicit`: some overlay, --config or the profile set `hardware`)."""
    if train_gpus > 0 and config.get("hardware", "cpu") == "cpu" and not explicit:
        raise PosttrainError(
            f"config: hardware: not set, but train gets {train_gpus} GPU(s) from the profile "
            "(a --config on the command line replaces the profile's `config:`, which names the preset): "
            f"add hardware=NAME to --config ({', '.join(hardware_presets(hw_dir))})"
        )


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
    wanted = error.validator_value if error.validator == "type" else ()
    if "number" in wanted and isinstance(error.instance, str) and NUMBER.fullmatch(error.instance):
        # YAML 1.1 reads a float only with a dot and a signed exponent: 1e-4 and 1.0e4 are strings
        hint = " (write floats with a dot, 1.0e-4: YAML reads 1e-4 as a string)"
    return f"{where or '<top level>'}: {error.message}{hint}"


# --- content fingerprints -----------------------------------------------------------------------
BLOCK = 8 << 20
_fingerprints: dict[tuple, str] = {}


def content_fingerprint(path: str | os.PathLike, cache_file: str | os.PathLike) -> str:
    """sha256 of a file's content (16 hex digits), for a `params:` value: the rule's input is then
    declared ancient(), so a touch or a copy with the same content re-runs nothing, and a changed
    content re-runs the rule. Hashing costs about 1 s per GB (SHA-NI), so the digest is cached in
    `cache_file` (JSON) by resolved path + size + mtime_ns and rehashed only when those change."""
    path = Path(path).resolve()
    try:
        st = path.stat()
    except OSError:
        return "missing"  # Snakemake reports the missing input itself
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _fingerprints:
        return _fingerprints[key]
    cache = _read_cache(Path(cache_file))
    entry = cache.get(key[0])
    if entry and (entry.get("size"), entry.get("mtime_ns")) == key[1:] and isinstance(entry.get("sha256"), str):
        digest = entry["sha256"]
    else:
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                hasher.update(block)
        digest = hasher.hexdigest()[:16]
        cache[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": digest}
        _write_cache(Path(cache_file), cache)
    _fingerprints[key] = digest
    return digest


def _read_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_file: Path, cache: dict) -> None:
    """Best effort (a cache): atomic, so that concurrent jobs never read half a file."""
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
        os.replace(tmp, cache_file)
    except OSError:
        tmp.unlink(missing_ok=True)


def verdict_line(metrics_path: str | os.PathLike) -> str | None:
    """The eval verdict of a finished run as one line for the end of `snakemake`'s output
    (None when there is no metrics.json or it has no verdict)."""
    try:
        verdict = json.loads(Path(metrics_path).read_text()).get("verdict") or {}
    except (OSError, ValueError):
        return None
    if "summary" not in verdict:
        return None
    mark = "" if verdict.get("beats_all_baselines") else "WARNING: "
    return f"{mark}eval verdict ({metrics_path}): {verdict['summary']}"


def put_first_on_path(directory: str | os.PathLike) -> None:
    """Jobs call `posttrain`, `accelerate` and `torchrun` from the environment Snakemake runs in, also
    when it was started as .venv/bin/snakemake without activating the venv (Slurm jobs inherit PATH)."""
    os.environ["PATH"] = os.pathsep.join([str(directory), os.environ.get("PATH", "")])


# --- command-line flags from config ---------------------------------------------------------------
def stage_flags(stage: str, block: dict) -> str:
    """The flags that give `posttrain <stage>` exactly the config block's values (posttrain.settings):
    the rule's one config `params:` value, so editing any setting re-runs the stage and nothing else."""
    return shlex.join(settings.command_line(settings.STAGES[stage], block))


GR00T_OWN = ("gradient_accumulation_steps", "tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model")


def train_flags(block: dict) -> str:
    """stage_flags of train. With the gr00t backend, train.gr00t's own tune_* switches and accumulation
    replace the native policy's; with the native one, train.gr00t is not passed (editing it retrains nothing)."""
    block = dict(block)
    gr00t = block.pop("gr00t", {})
    if block["backend"] == "gr00t":
        if not gr00t.get("repo"):
            raise PosttrainError(
                "config: train.gr00t.repo: empty, but train.backend is gr00t "
                "(set it to an Isaac-GR00T checkout, n1.6-release)"
            )
        block.update({key: gr00t[key] for key in GR00T_OWN if key in gr00t})
        block["gr00t"] = gr00t
    return stage_flags("train", block)


# --- several sources (dataset.sources) ---------------------------------------------------------------
def sources_error(cfg: dict, default_source: dict | None, synth_schema: dict) -> str | None:
    """What the schema cannot say about dataset.sources, as one line (None: fine): dataset.source set as
    well (the default config always has one, so only another value is an error), a name that is not a
    string, and each source's synth: overrides against the synth: block's schema (without filling in its
    defaults, which would hide the top-level block's values)."""
    sources = cfg["dataset"].get("sources")
    if not sources:
        return None
    if cfg["dataset"].get("source") not in (None, default_source):
        return (
            "dataset.source and dataset.sources are both set: with sources, every source is an entry of "
            "dataset.sources; remove dataset.source from your config"
        )
    for name, spec in sources.items():
        if not isinstance(name, str):  # YAML reads `1:` or `null:` as a number or None
            return f"dataset.sources: source name {name!r} is not a string; quote it"
        keys = ["dataset", "sources", name, "synth"]
        problem = config_error(_nested(keys, spec.get("synth", {})), _nested(keys, synth_schema, schema=True))
        if problem:
            return f"{problem} (schema: config/schema.yaml, synth:)"
    return None


def _nested(keys: list[str], leaf: dict, schema: bool = False) -> dict:
    """{keys[0]: {keys[1]: ... leaf}}, or the schema of objects that holds `leaf` (a schema) there."""
    for key in reversed(keys):
        leaf = {"type": "object", "properties": {key: leaf}} if schema else {key: leaf}
    return leaf


TASK_KEYS = ("language_instruction", "task_index")  # a source's task: given to the gather only


def source_synth_flags(cfg: dict, name: str | None) -> str:
    """synth's flags for one source: the top-level synth: block with the source's own overrides."""
    overrides = cfg["dataset"]["sources"][name].get("synth", {}) if name is not None else {}
    return stage_flags("synth", {**cfg["synth"], **overrides})


def source_convert_flags(cfg: dict, name: str | None) -> str:
    """convert's flags for one source's shards. With several sources the convert: block goes without the
    task, which the gather gives each source (gather_flags): an instruction edit re-encodes nothing."""
    if name is None:
        return stage_flags("convert", cfg["convert"])
    block = {key: value for key, value in cfg["convert"].items() if key not in TASK_KEYS}
    return shlex.join([*shlex.split(stage_flags("convert", block)), "--source", name])


def gather_flags(sources: dict) -> str:
    """Each source's task for the gather: its instruction, and its task index where the config sets one
    (the others: same instruction, same task; else numbered in order: posttrain.sources)."""
    args = []
    for name, spec in sources.items():
        args += ["--source-instruction", f"{name}={spec['language_instruction']}"]
        if spec.get("task_index") is not None:
            args += ["--source-task-index", f"{name}={spec['task_index']}"]
    return shlex.join(args)


def hub_source_flags(spec: dict, where: str) -> str:
    """`posttrain hub download` flags for a Hub source (`where`: its config key, for the messages)."""
    args = [
        "--repo-id",
        spec["repo_id"],
        "--repo-type",
        spec.get("repo_type", "dataset"),
        "--format",
        spec.get("format", "hdf5"),
    ]
    if spec.get("revision"):
        args += ["--revision", spec["revision"]]
    if spec.get("format", "hdf5") == "hdf5":
        path = spec.get("path") or spec.get("filename")
        if not path:
            raise PosttrainError(
                f"config: {where}.path: needed for a hub source with format hdf5 (the HDF5 file inside the repository)"
            )
        args += ["--path", path]
    else:
        patterns = spec.get("include")
        if not patterns:
            raise PosttrainError(
                f"config: {where}.include: needed for a hub source with format lerobot "
                "(glob(s) of the dataset's files, e.g. 'task/lerobot/**')"
            )
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            args += ["--include", pattern]
    return shlex.join(str(a) for a in args)


def upload_flags(hub_upload: dict, repo_key: str) -> str:
    args = ["--repo-id", hub_upload[repo_key]]
    if hub_upload.get("private"):
        args.append("--private")
    if hub_upload.get("dry_run"):
        args.append("--dry-run")
    return shlex.join(args)


def policy_image_size(preset: str, package: Path = PACKAGE) -> int:
    """A native preset's image size, from the package's policy/presets.py loaded on its own: importing
    the posttrain.policy package would import torch, which the Snakemake process need not have."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("posttrain_policy_presets", Path(package) / "policy" / "presets.py")
    presets = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = presets  # @dataclass looks its module up there
    spec.loader.exec_module(presets)
    return presets.PolicyConfig.from_preset(preset).image_size
