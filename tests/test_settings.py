"""One source of truth for every setting (posttrain.settings): the CLIs, config/schema.yaml,
config/config.yaml and the rules' flags all come from it and agree."""

from __future__ import annotations

import argparse
import dataclasses
import shlex

import pytest
import yaml
from test_recipe import planned_train_command

from conftest import REPO
from posttrain import settings, workflow
from posttrain.settings import STAGES, TrainSettings, add_options, command_line, defaults, values
from posttrain.train import add_arguments as train_arguments
from posttrain.train import train_config

CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_schema_stage_blocks_are_generated_from_the_settings():
    current = settings.SCHEMA.read_text()
    assert settings.schema_text(current) == current, "run `python -m posttrain.settings --write-schema`"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_config_yaml_holds_the_cli_defaults(stage):
    assert CONFIG[stage] == defaults(STAGES[stage])


def parsed(cls, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_options(parser, cls)
    return parser.parse_args(argv)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_flags_carry_every_value_of_a_block(stage):
    """A block with a value other than the default in every setting reaches the CLI unchanged."""
    cls = STAGES[stage]
    other = {
        "synth": {
            "embodiment": "g1",
            "episodes": 5,
            "min_frames": 9,
            "max_frames": 11,
            "image_size": "48x64",
            "seed": 7,
            "motion": "smooth",
            "task": "reach_left",
        },
        "convert": {
            "embodiment": "/data/my robot",
            "language_instruction": "Open the microwave.",
            "task_index": 3,
            "fps": 30,
            "drop_frame": "last",
            "failed_demos": "include",
            "state_key": "obs/q",
            "action_key": "actions",
            "chunks_size": 7,
            "cameras": {"b": "observation.images.b", "a": "observation.images.a"},
            "video": {"crf": 23, "gop": 10, "preset": "medium"},
        },
        "verify": {"min_psnr_db": 30.5, "sampled_frames": 3, "preview_episodes": 0},
        "train": {
            "backend": "gr00t",
            "preset": "base",
            "holdout_episodes": 5,
            "global_batch_size": 64,
            "gradient_accumulation_steps": 2,
            "max_steps": 99,
            "epochs": 1.5,
            "min_steps": 9,
            "save_steps": 7,
            "save_total_limit": 4,
            "learning_rate": 1e-4,
            "warmup_ratio": 0.1,
            "weight_decay": 0.0,
            "seed": 1,
            "dataloader_num_workers": 4,
            "mixed_precision": "bf16",
            "use_wandb": True,
            "action_normalization": "q01_q99",
            "state_dropout_prob": 0.0,
            "tune_llm": True,
            "tune_visual": False,
            "tune_projector": False,
            "tune_diffusion_model": False,
            "color_jitter_params": {"hue": 0.1, "brightness": 0.2},
            "gr00t": {
                "repo": "/opt/gr00t",
                "base_model_path": "m",
                "embodiment_tag": "T",
                "modality_config_path": "c.py",
            },
        },
        "eval": {"all_checkpoints": True, "plot_episodes": 0, "stride": 4, "batch_size": 2, "seed": 9},
    }[stage]
    cli_values = values(parsed(cls, command_line(cls, other)), cls)
    expected = {**defaults(cls), **other}
    for key in [f for f in expected if f not in cli_values]:  # workflow-only (convert.shards, train.run_name)
        del expected[key]
    if stage == "synth":
        expected["image_size"] = str(expected["image_size"])  # text on the command line; synth parses it
    assert cli_values == expected
    assert all(cli_values[k] != v for k, v in defaults(cls).items() if k in other and not isinstance(v, dict))


@pytest.mark.slow
def test_a_hand_run_records_the_workflows_train_config(tmp_path):
    """`posttrain train --dataset D --output R` by hand and the default workflow's train job parse to
    the same settings, so they write the same train_config.json."""
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    command = shlex.split(planned_train_command(tmp_path).split("posttrain train ", 1)[1].split(" >> ")[0])
    workflow_args = parser.parse_args(command)
    hand_args = parser.parse_args(["--dataset", str(workflow_args.dataset), "--output", str(workflow_args.output)])
    assert train_config(hand_args) == train_config(workflow_args)
    assert train_config(hand_args)["learning_rate"] == CONFIG["train"]["learning_rate"]


def test_gr00t_block_reaches_training_only_with_the_gr00t_backend():
    native = dict(CONFIG["train"], gr00t=dict(CONFIG["train"]["gr00t"], tune_llm=True))
    assert workflow.train_flags(native) == workflow.train_flags(CONFIG["train"])  # no native retraining
    gr00t = dict(native, backend="gr00t", gr00t=dict(native["gr00t"], repo="/opt/gr00t", gradient_accumulation_steps=4))
    flags = shlex.split(workflow.train_flags(gr00t))
    args = parsed(TrainSettings, flags)
    assert args.tune_llm is True and args.gradient_accumulation_steps == 4 and args.gr00t_repo == "/opt/gr00t"
    with pytest.raises(Exception, match="train.gr00t.repo: empty"):
        workflow.train_flags(dict(native, backend="gr00t"))


def choices(cls, name: str) -> tuple:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["choices"]


def test_choices_are_the_stages_own():
    """settings.py stays import-light (no h5py): the stages keep their tuples, which must agree."""
    from posttrain import convert, synth

    assert choices(settings.SynthSettings, "embodiment") == tuple(synth.EMBODIMENTS)
    assert choices(settings.SynthSettings, "motion") == synth.MOTIONS
    assert choices(settings.SynthSettings, "task") == synth.TASKS
    assert choices(settings.ConvertSettings, "failed_demos") == convert.FAILED_DEMOS


def test_run_defining_settings():
    defining = settings.run_defining(TrainSettings)
    assert {"learning_rate", "preset", "global_batch_size", "color_jitter_params", "max_steps"} <= defining
    assert not {"save_steps", "dataloader_num_workers", "use_wandb", "backend", "run_name", "epochs"} & defining


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "d", "--output", "o", "--epochs", "0"], "error: --epochs: must be > 0, got 0.0"),
        (
            ["train", "--dataset", "d", "--output", "o", "--learning-rate", "fast"],
            "error: --learning-rate: expected float, got 'fast'",
        ),
        (
            ["train", "--dataset", "d", "--output", "o", "--state-dropout-prob", "1"],
            "error: --state-dropout-prob: must be < 1, got 1.0",
        ),
        (["verify", "d", "--output", "o", "--sampled-frames", "0"], "error: --sampled-frames: must be >= 1, got 0"),
        (["eval", "c", "d", "--output", "o", "--stride", "0"], "error: --stride: must be >= 1, got 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(capsys, argv, message):
    from conftest import run_cli

    assert run_cli(*argv) == 2
    assert capsys.readouterr().err.strip() == message
