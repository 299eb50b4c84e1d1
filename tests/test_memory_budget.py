"""The single-GPU presets fit a 24 GB card by the memory budget computed from parameter counts
(posttrain.policy.budget), for both backends; the seed's own GR00T setting does not."""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

from conftest import REPO
from posttrain.policy import PRESETS, PolicyConfig, PolicyModel, count_parameters
from posttrain.policy.budget import (
    CARD_24GB,
    CARD_48GB,
    FIT_FRACTION,
    GIB,
    fake_batch,
    gr00t_budget,
    native_budget,
    saved_for_backward,
    train_budgets,
)
from posttrain.workflow import hardware_preset, merge, read_config_file

CONFIG = REPO / "config"


def train_config(hardware: str) -> dict:
    """The `train:` block the rules see with `hardware: NAME` and no user overlay."""
    return merge(read_config_file(CONFIG / "config.yaml"), hardware_preset(hardware, CONFIG / "hw"))["train"]


@pytest.fixture(scope="module")
def gpu1() -> dict:
    return train_budgets(train_config("gpu1"))


@pytest.mark.parametrize("backend", ["native", "gr00t"])
def test_single_gpu_preset_fits_24gb_with_margin(gpu1, backend):
    budget = gpu1[backend]
    assert budget.peak <= FIT_FRACTION * CARD_24GB, budget.to_dict()
    # the seed's batch of 16 per optimizer step, in micro-batches that fit
    train = train_config("gpu1")
    accumulation = (train["gr00t"] if backend == "gr00t" else train)["gradient_accumulation_steps"]
    assert train["global_batch_size"] == 16 and budget.micro_batch * accumulation == 16


def test_native_single_gpu_preset_uses_the_card(gpu1):
    """`base` peaked at 2.6 GiB (11 % of the card); the 24 GB preset is sized to use it."""
    native = gpu1["native"]
    assert native.setting == "large" and native.peak >= 0.35 * CARD_24GB, native.to_dict()
    base = native_budget(PolicyConfig.from_preset("base"), 16)
    assert base.peak < 0.15 * CARD_24GB and native.trainable_params > 5 * base.trainable_params


def test_native_visual_encoder_is_trained_on_every_preset():
    """It is trained from scratch: the gr00t tuning switches never reach the native policy."""
    for hardware in ("gpu1", "gpu1-48gb", "gpu8"):
        assert train_config(hardware)["tune_visual"] is True, hardware


def test_seed_gr00t_setting_needs_more_than_24gb():
    """config/hw/gpu1-48gb.yaml is the seed's single-GPU command: over 24 GB, within 48 GB."""
    train = train_config("gpu1-48gb")
    g = train["gr00t"]
    assert (g["tune_llm"], g["tune_visual"], g["tune_projector"], g["tune_diffusion_model"]) == (
        False,
        True,
        True,
        True,
    )
    seed = train_budgets(train)["gr00t"]
    assert seed.micro_batch == 16 and CARD_24GB < seed.peak <= CARD_48GB, seed.to_dict()


def test_gr00t_projector_and_diffusion_tuning_does_not_fit_24gb_even_at_batch_1():
    """launch_finetune.py's default tuning (the maintainers' low-memory advice) OOMs at batch 1 on
    24-32 GB cards (Isaac-GR00T #536): its weights, gradients and AdamW state alone exceed 24 GiB."""
    default = gr00t_budget(1, tune_projector=True, tune_diffusion_model=True)
    assert default.weights + default.gradients + default.optimizer > CARD_24GB
    assert not default.fits(CARD_24GB)


def test_gr00t_counts_reproduce_the_documented_checkpoint_size():
    """shared/docs/gr00t_n16.md §3: ~22 GB per checkpoint with the default tuning, ~9 GB of weights
    and ~13 GB of AdamW state, an independent check of the dtypes and trainable counts assumed."""
    default = gr00t_budget(1)
    assert default.trainable_params + default.frozen_params == pytest.approx(2.98e9, rel=0.01)
    assert default.weights == pytest.approx(9e9, rel=0.05)
    assert default.optimizer == pytest.approx(13e9, rel=0.05)


def test_native_budget_counts_the_real_models_parameters():
    config = PolicyConfig.from_preset("tiny")
    budget = native_budget(config, 2, tune_llm=False)
    model = PolicyModel(config)
    language = sum(p.numel() for p in model.language.parameters())
    assert budget.trainable_params + budget.frozen_params == count_parameters(model)
    assert budget.frozen_params == language  # tune_llm=False freezes exactly the language encoder
    assert budget.weights == 4 * count_parameters(model) and budget.optimizer == 8 * budget.trainable_params


@pytest.mark.parametrize("mixed_precision", ["bf16", "no"])
def test_fake_forward_saves_what_a_real_forward_saves(mixed_precision):
    """The budget records saved tensors over fake (shape-only) tensors; a real CPU forward of the
    same model saves the same bytes."""
    config = PolicyConfig.from_preset("tiny", vl_cross_attention="alternate")
    torch.manual_seed(0)
    model = PolicyModel(config)
    model.set_trainable(tune_llm=False)
    batch = {k: (v.uniform_() if v.is_floating_point() else v) for k, v in fake_batch(config, 3).items()}
    real = saved_for_backward(model, batch, mixed_precision)
    fake = native_budget(config, 3, mixed_precision).saved_for_backward
    assert fake == pytest.approx(real, rel=0.01)
    # activations grow linearly with the batch, on top of the batch-independent weight copies
    six, nine = (native_budget(config, n, mixed_precision).saved_for_backward for n in (6, 9))
    assert six > fake and nine - six == pytest.approx(six - fake, rel=0.01)


def test_preset_names_agree_across_cli_schema_and_policy():
    from posttrain.train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    [preset] = [a for a in parser._actions if a.dest == "preset"]
    schema = yaml.safe_load((CONFIG / "schema.yaml").read_text())
    assert list(preset.choices) == list(PRESETS) == schema["properties"]["train"]["properties"]["preset"]["enum"]


def test_budget_reports_gib():
    budget = gr00t_budget(8, tune_diffusion_model=False)
    row = budget.to_dict()
    assert row["peak_gib"] == round(budget.peak / GIB, 2) and row["fits_24gb"] is True
