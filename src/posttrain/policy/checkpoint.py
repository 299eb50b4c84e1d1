"""Native checkpoint I/O and the inference wrapper `Policy`.

A checkpoint directory holds `model.safetensors` (the unwrapped model's state_dict, which is also
what accelerate's `save_state` writes), `model_config.json` (PolicyConfig), the dataset's
`stats.json` and `modality.json`, and optionally `split.json`. `Policy.predict` takes raw
observations (uint8 images of any size and shape, raw state, instruction text) and returns raw
actions; which columns make the raw state and action vectors is `posttrain.layout`'s rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from posttrain.errors import PosttrainError
from posttrain.files import atomic_file, write_json_atomic
from posttrain.video import centre_square

from .model import PolicyModel
from .normalize import Normalizer
from .presets import PolicyConfig
from .tokenizer import tokenize

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
STATS_FILE = "stats.json"
MODALITY_FILE = "modality.json"
SPLIT_FILE = "split.json"

# Prefixes that wrappers add to state_dict keys (DDP, torch.compile); stripped on load.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def save_pretrained(
    model: PolicyModel,
    directory: str | os.PathLike,
    *,
    stats: dict | None = None,
    modality: dict | None = None,
    split: dict | None = None,
) -> None:
    """Write model.safetensors + model_config.json (and the optional json files) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_file(directory / MODEL_FILE) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    write_json_atomic(directory / CONFIG_FILE, model.config.to_dict())
    for name, obj in ((STATS_FILE, stats), (MODALITY_FILE, modality), (SPLIT_FILE, split)):
        if obj is not None:
            write_json_atomic(directory / name, obj)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PosttrainError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PosttrainError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None


def load_model(directory: str | os.PathLike, config: PolicyConfig | None = None) -> PolicyModel:
    """Build the model from model_config.json (unless given) and load model.safetensors into it."""
    directory = Path(directory)
    if config is None:
        config = PolicyConfig.from_dict(_read_json(directory / CONFIG_FILE), source=str(directory / CONFIG_FILE))
    model = PolicyModel(config)
    path = directory / MODEL_FILE
    if not path.is_file():
        raise PosttrainError(f"{path}: missing")
    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise PosttrainError(f"{path}: cannot read safetensors ({err})") from None
    for prefix in _WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PosttrainError(
            f"{path}: does not match {CONFIG_FILE}: missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise PosttrainError(
                f"{path}: {key}: shape {tuple(value.shape)}, expected {tuple(expected[key].shape)} from {CONFIG_FILE}"
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise PosttrainError(
                f"{path}: {key}: non-finite weights (NaN or inf): the run that wrote this "
                "checkpoint diverged; retrain it (e.g. with a lower learning rate)"
            )
    model.load_state_dict(state)
    return model.eval()


def images_to_tensor(images, image_size: int) -> torch.Tensor:
    """uint8 (B, V, H, W, 3) -> float32 (B, V, 3, image_size, image_size) in [0, 1].

    The centre square of each image, area-resampled to image_size: the pixels training saw
    (`posttrain.video.read_square_frames` decodes videos the same way), whatever the camera's shape.
    """
    images = torch.as_tensor(np.asarray(images))
    if images.ndim != 5 or images.shape[-1] != 3:
        raise PosttrainError(f"images: shape {tuple(images.shape)}, expected (B, V, H, W, 3) uint8")
    B, V, H, W, _ = images.shape
    top, left, side = centre_square(H, W)
    images = images[:, :, top : top + side, left : left + side]
    x = images.permute(0, 1, 4, 2, 3).reshape(B * V, 3, side, side).float() / 255.0
    if side != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    return x.reshape(B, V, 3, image_size, image_size)


class Policy:
    """A trained model with its normalizer: raw observations in, raw actions out."""

    def __init__(
        self,
        model: PolicyModel,
        normalizer: Normalizer,
        config: PolicyConfig | None = None,
        *,
        stats: dict | None = None,
        modality: dict | None = None,
        split: dict | None = None,
    ):
        self.model = model.eval()
        self.normalizer = normalizer
        self.config = config or model.config
        self.stats, self.modality, self.split = stats, modality, split

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> Policy:
        directory = Path(directory)
        if not directory.is_dir():
            raise PosttrainError(f"{directory}: checkpoint directory not found")
        config = PolicyConfig.from_dict(_read_json(directory / CONFIG_FILE), source=str(directory / CONFIG_FILE))
        stats = _read_json(directory / STATS_FILE)
        modality = _read_json(directory / MODALITY_FILE)
        split = _read_json(directory / SPLIT_FILE) if (directory / SPLIT_FILE).exists() else None
        normalizer = Normalizer(
            stats,
            modality,
            config,
            stats_name=str(directory / STATS_FILE),
            modality_name=str(directory / MODALITY_FILE),
        )
        model = load_model(directory, config).to(device)
        return cls(model, normalizer, config, stats=stats, modality=modality, split=split)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def predict(self, images, state, texts: list[str], generator: torch.Generator | None = None) -> np.ndarray:
        """images uint8 (B, V, H, W, 3) of any H x W (the centre square is used), state raw (B, state_dim),
        texts (B strings) -> raw actions float32 (B, action_horizon, action_dim). Raw vectors are the
        columns of `normalizer.state_layout` / `action_layout` side by side (GR1: observation.state and
        action; G1: plus the eef pose and teleop columns). A seeded CPU `generator` makes it deterministic."""
        c = self.config
        state = np.asarray(state, dtype=np.float32)
        pixels = images_to_tensor(images, c.image_size)
        B = pixels.shape[0]
        if pixels.shape[1] != c.num_cameras:
            raise PosttrainError(f"images: {pixels.shape[1]} cameras, the policy was trained with {c.num_cameras}")
        if state.shape != (B, c.state_dim):
            raise PosttrainError(f"state: shape {state.shape}, expected ({B}, {c.state_dim})")
        if len(texts) != B:
            raise PosttrainError(f"texts: {len(texts)} instructions for a batch of {B}")
        device = self.device
        features = torch.from_numpy(self.normalizer.encode_state(state)).to(device)
        tokens = torch.from_numpy(tokenize(list(texts), c.text_max_length, c.text_vocab_size)).to(device)
        self.model.eval()
        normalized = self.model.sample(pixels.to(device), features, tokens, generator=generator)
        return self.normalizer.unnormalize_action(normalized.cpu().numpy())
