"""Every configurable setting of every stage, written once: type, default, help, limits, and whether it
defines a training run.

The dataclasses below are the one source of truth. From them come
  - each stage's command-line options (`add_options`), so `posttrain train` by hand does the workflow's run;
  - the stage blocks of config/schema.yaml (`python -m posttrain.settings --write-schema`, checked
    current by tests/test_settings.py, as is the agreement of config/config.yaml with these defaults);
  - the flags a rule passes (`command_line`): one string that is the rule's config `params:` value;
  - the options that define a training run (`run_defining`), for posttrain.runs' identity.
Dataclasses rather than pydantic: no new dependency, and the Snakemake process and the data stages
import this module without importing anything heavy.
"""

from __future__ import annotations

import argparse
import math
import sys
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path


def setting(
    default,
    help: str,
    *,
    choices: tuple | None = None,
    run: bool = True,
    cli: bool = True,
    flag: str | None = None,
    **limits,
):
    """One setting. limits: JSON-schema keywords (minimum, maximum, exclusiveMinimum, exclusiveMaximum,
    pattern, minLength) checked on the command line too. run=False: a checkpoint made with another value
    is still the same run (posttrain.runs). cli=False: a workflow-only setting (no command-line option)."""
    meta = {"help": help, "choices": choices, "run": run, "cli": cli, "flag": flag, "limits": limits}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


def nested(cls):
    """A block of settings inside another (its description is the class's docstring)."""
    return field(
        default_factory=cls,
        metadata={"help": cls.__doc__, "run": True, "cli": True, "flag": None, "choices": None, "limits": {}},
    )


# --- the stages' settings -----------------------------------------------------------------------
@dataclass
class SynthSettings:
    """`posttrain synth`, used when dataset.source.kind is synth (a block of its own, so that an overlay
    setting another source merges cleanly over the default)."""

    embodiment: str = setting(
        "gr1", "gr1: GR1 arms and hands; g1: Unitree G1 loco-manipulation schema", choices=("gr1", "g1")
    )
    episodes: int = setting(16, "number of demos", minimum=1)
    min_frames: int = setting(70, "shortest demo, in steps", minimum=2)
    max_frames: int = setting(100, "longest demo, in steps", minimum=2)
    image_size: int | str | None = setting(
        None,
        'camera size in pixels: N (square) or "HEIGHTxWIDTH", e.g. '
        '"240x320"; null: the embodiment\'s camera (gr1 64, g1 480x640)',
        minimum=8,
        pattern=r"^[0-9]+(x[0-9]+)?$",
    )
    seed: int = setting(0, "random seed; the output is a function of it")
    motion: str = setting(
        "reach",
        "reach: a reach that needs the camera; smooth: smooth, state-predictable joint "
        "motion where holding the state is a strong baseline (gr1)",
        choices=("reach", "smooth"),
    )
    task: str = setting(
        "reach_right",
        "which hand reaches for the target (gr1 reach): reach_right, or reach_left "
        "(same targets and images for a seed: only the instruction tells which)",
        choices=("reach_right", "reach_left"),
    )


X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


@dataclass
class VideoSettings:
    """libx264, yuv420p."""

    crf: int = setting(18, "libx264 constant rate factor (0 = lossless, 51 = worst)", minimum=0, maximum=51)
    gop: int = setting(50, "keyframe interval in frames", minimum=1)
    preset: str = setting("veryfast", "libx264 preset", choices=X264_PRESETS)


@dataclass
class ConvertSettings:
    """`posttrain convert`: a Mimic HDF5 source to a LeRobot v2.1 dataset."""

    embodiment: str = setting("gr1", "embodiment name (config/embodiments/<name>/) or directory")
    language_instruction: str = setting(
        "Reach for the red target with the right hand.", "the task text of every episode", minLength=1
    )
    task_index: int = setting(0, "the task's index in meta/tasks.jsonl", minimum=0)
    fps: int = setting(50, "frames per second of the recording", minimum=1)
    drop_frame: str = setting(
        "first", "first: video frames[1:], drops the stale first render; last: as Arena", choices=("first", "last")
    )
    failed_demos: str = setting(
        "skip",
        "demos with attr success=False: skip (listed in meta/source.json), include, or error",
        choices=("skip", "include", "error"),
    )
    state_key: str = setting("obs/robot_joint_pos", "state dataset inside each demo group")
    action_key: str = setting("processed_actions", "action dataset inside each demo group")
    cameras: dict[str, str] = setting(
        {}, "camera_obs/NAME -> video key (observation.images.*); {} = the embodiment's camera", flag="camera"
    )
    chunks_size: int = setting(1000, "episodes per chunk directory", minimum=1)
    shards: int = setting(2, "conversion jobs (Slurm: one job each); a gather job writes meta/", minimum=1, cli=False)
    video: VideoSettings = nested(VideoSettings)


@dataclass
class VerifySettings:
    """`posttrain verify`: the converted dataset checked against its source."""

    min_psnr_db: float = setting(35.0, "decoded vs source frames after yuv420p; lower on fine texture")
    sampled_frames: int = setting(8, "frames compared per episode and camera", minimum=1)
    preview_episodes: int = setting(2, "episodes in the contact-sheet previews", minimum=0)


COLOR_JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")  # the seed command's order


@dataclass
class Gr00tSettings:
    """Used only with train.backend gr00t."""

    repo: str = setting("", "Isaac-GR00T checkout (n1.6-release)", flag="gr00t-repo", run=False)
    base_model_path: str = setting("nvidia/GR00T-N1.6-3B", "base model", run=False)
    embodiment_tag: str = setting("GR1", "GR00T embodiment tag", run=False)
    modality_config_path: str = setting("", "Python file registering the modality config", run=False)
    # GR00T's own switches (train.tune_* are the native policy's): the workflow passes these as
    # --tune-* and --gradient-accumulation-steps when train.backend is gr00t. Defaults: the seed command.
    tune_llm: bool = setting(False, "GR00T: train the language model", cli=False)
    tune_visual: bool = setting(True, "GR00T: train the vision tower", cli=False)
    tune_projector: bool = setting(True, "GR00T: train the projector", cli=False)
    tune_diffusion_model: bool = setting(True, "GR00T: train the action head", cli=False)
    gradient_accumulation_steps: int = setting(1, "GR00T: micro-batches per optimizer step", minimum=1, cli=False)


@dataclass
class TrainSettings:
    """`posttrain train`: the native policy or Isaac-GR00T post-training."""

    backend: str = setting(
        "native",
        "native flow-matching policy, or Isaac-GR00T's launch_finetune.py",
        choices=("native", "gr00t"),
        run=False,
    )
    run_name: str = setting("default", "results/<dataset>/train/<run_name>/", pattern=r"^[A-Za-z0-9_.-]+$", cli=False)
    preset: str = setting(
        "tiny", "native model size: tiny (CPU), base, large (one 24 GB GPU)", choices=("tiny", "base", "large")
    )
    holdout_episodes: int = setting(
        2, "the last N episodes of each task are kept out of training (for eval)", minimum=0
    )
    global_batch_size: int = setting(32, "samples per optimizer step, over all processes", minimum=1)
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step", minimum=1)
    max_steps: int | None = setting(
        None, "the run's length in optimizer steps; null: from epochs and min_steps", minimum=1
    )
    # epochs and min_steps count through the step count they resolve to (train.resolve_steps)
    epochs: float = setting(
        3.0,
        "with max_steps null: steps = max(min_steps, ceil(epochs x train samples / global_batch_size))",
        exclusiveMinimum=0,
        run=False,
    )
    min_steps: int = setting(800, "the least steps when the length comes from epochs", minimum=1, run=False)
    save_steps: int = setting(400, "checkpoint every N steps", minimum=1, run=False)
    save_total_limit: int = setting(2, "checkpoints kept (oldest removed)", minimum=1, run=False)
    learning_rate: float = setting(1.0e-3, "peak learning rate (the GPU presets use GR00T's 1e-4)", exclusiveMinimum=0)
    warmup_ratio: float = setting(0.05, "share of the steps spent warming up", minimum=0, exclusiveMaximum=1)
    weight_decay: float = setting(1.0e-5, "AdamW weight decay", minimum=0)
    seed: int = setting(42, "seed of initialisation, sampling and augmentation")
    dataloader_num_workers: int = setting(1, "loader processes per training process", minimum=0, run=False)
    mixed_precision: str = setting("no", "autocast precision", choices=("no", "fp16", "bf16"))
    use_wandb: bool = setting(False, "also log to Weights & Biases (one run per run identity)", run=False)
    action_normalization: str = setting(
        "min_max", "action bounds: min/max or 1st/99th percentiles", choices=("min_max", "q01_q99")
    )
    state_dropout_prob: float = setting(
        0.5, "probability of replacing the state by a learned mask token", minimum=0, exclusiveMaximum=1
    )
    tune_llm: bool = setting(False, "train the language encoder")
    tune_visual: bool = setting(True, "train the visual encoder")
    tune_projector: bool = setting(True, "train the projector")
    tune_diffusion_model: bool = setting(True, "train the action head")
    color_jitter_params: dict[str, float] = setting(
        {"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08},
        "KEY VALUE pairs of brightness, contrast, saturation, hue (<= 0.5); none = no jitter",
    )
    gr00t: Gr00tSettings = nested(Gr00tSettings)


@dataclass
class EvalSettings:
    """`posttrain eval`: open-loop evaluation on the held-out episodes."""

    all_checkpoints: bool = setting(False, "also evaluate every kept checkpoint, not only the final one")
    plot_episodes: int = setting(3, "held-out episodes in trajectories.png", minimum=0, flag="episodes-to-plot")
    stride: int = setting(1, "evaluate every N-th start step", minimum=1)
    batch_size: int = setting(8, "chunks per predict() call", minimum=1)
    seed: int = setting(0, "seed of the flow-matching noise (repeatable metrics)")


STAGES = {
    "synth": SynthSettings,
    "convert": ConvertSettings,
    "verify": VerifySettings,
    "train": TrainSettings,
    "eval": EvalSettings,
}


# --- reading the dataclasses ----------------------------------------------------------------------
def _types(cls) -> dict:
    return typing.get_type_hints(cls)


def _default(f):
    return f.default_factory() if f.default is MISSING else f.default


def defaults(cls) -> dict:
    """The defaults as a config block (nested blocks as dicts)."""
    return {f.name: defaults(_types(cls)[f.name]) if _is_block(cls, f) else _default(f) for f in fields(cls)}


def _is_block(cls, f) -> bool:
    return is_dataclass(_types(cls)[f.name])


def _flag(f) -> str:
    return "--" + (f.metadata["flag"] or f.name.replace("_", "-"))


def _dest(f) -> str:
    """The attribute of the parsed args: the flag's name (train.gr00t.repo is args.gr00t_repo)."""
    return _flag(f)[2:].replace("-", "_")


def _cli_fields(cls):
    """(dest, field, owner class) of every command-line setting; nested blocks flatten (video.crf -> crf)."""
    for f in fields(cls):
        if _is_block(cls, f):
            yield from _cli_fields(_types(cls)[f.name])
        elif f.metadata["cli"]:
            yield _dest(f), f, cls


# --- command line -------------------------------------------------------------------------------
def _check_limits(value, limits: dict) -> None:
    tests = {
        "minimum": (lambda v, x: v >= x, ">="),
        "maximum": (lambda v, x: v <= x, "<="),
        "exclusiveMinimum": (lambda v, x: v > x, ">"),
        "exclusiveMaximum": (lambda v, x: v < x, "<"),
    }
    for key, (ok, sign) in tests.items():
        if key in limits and isinstance(value, (int, float)) and not ok(value, limits[key]):
            raise argparse.ArgumentTypeError(f"must be {sign} {limits[key]}, got {value}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    if "minLength" in limits and isinstance(value, str) and len(value) < limits["minLength"]:
        raise argparse.ArgumentTypeError("must not be empty")


def bounded(kind, **limits):
    """An argparse type: text -> kind, checked against JSON-schema limits (minimum=1, ...)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        _check_limits(value, limits)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


class ColorJitterAction(argparse.Action):
    """`--color-jitter-params brightness 0.3 contrast 0.4` -> {"brightness": 0.3, "contrast": 0.4} (tyro's
    dict form, as GR00T's finetune script takes it); no pairs = no jitter."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, parse_color_jitter(values))
        except ValueError as err:
            parser.error(f"argument {option_string}: {err}")


def parse_color_jitter(values: list[str]) -> dict[str, float]:
    if len(values) % 2:
        raise ValueError(f"expected KEY VALUE pairs, got {' '.join(values)}")
    params = {}
    for key, value in zip(values[::2], values[1::2]):
        if key not in COLOR_JITTER_KEYS:
            raise ValueError(f"unknown key {key!r}, expected one of {', '.join(COLOR_JITTER_KEYS)}")
        try:
            params[key] = float(value)
        except ValueError:
            raise ValueError(f"{key} {value!r} is not a number") from None
        limit = 0.5 if key == "hue" else math.inf
        if not 0 <= params[key] <= limit:
            raise ValueError(f"{key} {value} outside [0, {limit}]")
    return params


class CameraAction(argparse.Action):
    """Repeatable `--camera NAME=VIDEO_KEY` -> {NAME: VIDEO_KEY}."""

    def __call__(self, parser, namespace, values, option_string=None):
        name, sep, key = values.partition("=")
        if not sep or not name or not key:
            parser.error(f"argument {option_string}: expected NAME=VIDEO_KEY, got {values!r}")
        cameras = dict(getattr(namespace, self.dest) or {})
        if name in cameras:
            parser.error(f"argument {option_string}: camera {name} given twice")
        cameras[name] = key
        setattr(namespace, self.dest, cameras)


def add_options(parser: argparse.ArgumentParser, cls, *, with_defaults: bool = True) -> None:
    """One option per command-line setting of cls. with_defaults=False: every default is None, for a stage
    that layers another source of values (convert's Arena YAML) between the defaults and the flags."""
    for dest, f, owner in _cli_fields(cls):
        kind = _types(owner)[f.name]
        default = _default(f) if with_defaults else None
        help_text = f.metadata["help"] + (f" (default {_default(f)!r})" if not with_defaults else "")
        options = {"dest": dest, "default": default, "help": help_text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif f.name == "color_jitter_params":
            options.update(nargs="*", metavar="KEY VALUE", action=ColorJitterAction)
        elif f.name == "cameras":
            options.update(action=CameraAction, metavar="NAME=VIDEO_KEY")
        elif f.metadata["choices"]:
            options["choices"] = f.metadata["choices"]
        else:
            kinds = typing.get_args(kind) or (kind,)  # int | None -> (int, NoneType)
            if str not in kinds:  # int | str (synth's image size) stays text: the stage parses it
                options["type"] = bounded(kinds[0], **f.metadata["limits"])
        parser.add_argument(_flag(f), **options)


def values(args: argparse.Namespace, cls) -> dict:
    """The command-line settings of cls from parsed args, as a config block (nested blocks as dicts; the
    workflow-only settings left out): what train_config.json records."""
    block = {}
    for f in fields(cls):
        if _is_block(cls, f):
            block[f.name] = values(args, _types(cls)[f.name])
        elif f.metadata["cli"]:
            block[f.name] = getattr(args, _dest(f))
    return block


def run_defining(cls) -> set[str]:
    """Names of the top-level command-line settings that define a run (nested blocks count when any of
    their settings does)."""
    names = set()
    for f in fields(cls):
        if _is_block(cls, f):
            if run_defining(_types(cls)[f.name]):
                names.add(f.name)
        elif f.metadata["cli"] and f.metadata["run"]:
            names.add(f.name)
    return names


def command_line(cls, block: dict) -> list[str]:
    """A config block -> the flags that make the stage's CLI use exactly its values. A setting the block
    leaves out is not passed (the CLI's default is the config's: tests/test_settings.py)."""
    args = []
    for f in fields(cls):
        value = block.get(f.name)
        if _is_block(cls, f):
            args += command_line(_types(cls)[f.name], value or {})
            continue
        if not f.metadata["cli"] or value is None:  # e.g. train.max_steps: null = the length from epochs
            continue
        flag = _flag(f)
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif f.name == "color_jitter_params":
            args.append(flag)
            for key in COLOR_JITTER_KEYS:
                if key in value:
                    args += [key, str(value[key])]
        elif f.name == "cameras":
            for name, key in sorted(value.items()):
                args += [flag, f"{name}={key}"]
        else:
            args += [flag, str(value)]
    return args


# --- config/schema.yaml -------------------------------------------------------------------------
JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", type(None): "null"}


def schema(cls, description: str = "") -> dict:
    """The JSON schema of a config block of cls (what config/schema.yaml holds for the stage)."""
    properties = {}
    for f in fields(cls):
        kind = _types(cls)[f.name]
        if _is_block(cls, f):
            properties[f.name] = schema(kind, kind.__doc__)
            continue
        prop = {}
        if f.metadata["choices"]:
            prop["enum"] = list(f.metadata["choices"])
        elif typing.get_origin(kind) is dict:
            prop.update(_dict_schema(f.name))
        else:
            names = [JSON_TYPES[t] for t in (typing.get_args(kind) or (kind,))]
            prop["type"] = names[0] if len(names) == 1 else names
        prop.update(f.metadata["limits"])
        prop["default"] = _default(f)
        prop["description"] = f.metadata["help"]
        properties[f.name] = prop
    block = {"type": "object", "additionalProperties": False, "default": {}}
    if description:
        block["description"] = description
    block["properties"] = properties
    return block


def _dict_schema(name: str) -> dict:
    if name == "cameras":
        return {"type": "object", "additionalProperties": {"type": "string", "pattern": r"^observation\.images\."}}
    if name == "color_jitter_params":
        number = {"type": "number", "minimum": 0}
        return {
            "type": "object",
            "additionalProperties": False,
            "properties": {**{k: number for k in COLOR_JITTER_KEYS[:3]}, "hue": {**number, "maximum": 0.5}},
        }
    raise KeyError(name)


SCHEMA = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"
BEGIN = "  # --- generated from src/posttrain/settings.py by `python -m posttrain.settings --write-schema`: do not edit"
END = "  # --- end of the generated blocks"


def schema_text(current: str) -> str:
    """config/schema.yaml's text with the stage blocks (between the BEGIN and END lines) regenerated."""
    import yaml

    head, sep, rest = current.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise ValueError(f"config/schema.yaml: the lines {BEGIN.strip()!r} ... {END.strip()!r} are missing")
    blocks = {name: schema(cls, cls.__doc__) for name, cls in STAGES.items()}
    body = yaml.safe_dump(blocks, sort_keys=False, width=96, default_flow_style=None, allow_unicode=True)
    indented = "".join(f"  {line}" if line.strip() else line for line in body.splitlines(keepends=True))
    return f"{head}{BEGIN}\n{indented}{END}{tail}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m posttrain.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--write-schema", action="store_true", help="regenerate config/schema.yaml's stage blocks")
    args = parser.parse_args(argv)
    text = schema_text(SCHEMA.read_text())
    if args.write_schema:
        SCHEMA.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
