"""The native GR00T-N1.6-style policy: config, model, normalization, tokenizer and checkpoints.

    from posttrain.policy import Policy
    policy = Policy.from_checkpoint("results/ds/train/default/checkpoint-600")
    actions = policy.predict(images_uint8_BVHW3, raw_state_B26, ["instruction"] * B)  # (B, 16, 26)

Images may have any H x W (the centre square is used). The raw state and action vectors are the
columns `posttrain.layout` names (GR1: 26 + 26; Unitree G1: 57 + 64 with the eef and teleop columns).

Training uses `PolicyModel(config)` directly: `loss = model(batch)` with
batch = {"images": (B, V, 3, H, W) float in [0, 1], "state": Normalizer.encode_state(raw),
"action": Normalizer.normalize_action(raw) (B, H, D), "tokens": tokenize(texts, ...)} and optionally
"noise" (B, H, D), "time" (B,) and "action_mask" (B, H, D). Fine-tuning switches: `model.set_trainable(...)`,
then build the optimizer from `model.trainable_parameters()`.
"""

from .checkpoint import (
    CONFIG_FILE,
    MODALITY_FILE,
    MODEL_FILE,
    SPLIT_FILE,
    STATS_FILE,
    Policy,
    images_to_tensor,
    load_model,
    save_pretrained,
)
from .model import PolicyModel, count_parameters
from .normalize import Normalizer
from .presets import PRESETS, PolicyConfig
from .tokenizer import PAD_ID, padding_mask, tokenize

__all__ = [
    "CONFIG_FILE",
    "MODALITY_FILE",
    "MODEL_FILE",
    "PAD_ID",
    "PRESETS",
    "SPLIT_FILE",
    "STATS_FILE",
    "Normalizer",
    "Policy",
    "PolicyConfig",
    "PolicyModel",
    "count_parameters",
    "images_to_tensor",
    "load_model",
    "padding_mask",
    "save_pretrained",
    "tokenize",
]
