"""`PolicyConfig`: every size and switch of the native policy, with three named presets.

`tiny` is the CPU demo/test size (64x64 images, ~1M parameters, trains in minutes on 2 cores);
`base` is a small GPU size (224x224 images, width 512, 8 DiT layers, 55M parameters);
`large` is the single-24-GB-GPU size (256x256 images, a ViT-B/16-sized visual encoder, a 16-layer
width-1024 DiT, ~0.4B parameters), sized by `posttrain.policy.budget` to fit 24 GB with margin.
Any field can be overridden: `PolicyConfig.from_preset("tiny", action_normalization="q01_q99")`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from posttrain.errors import PosttrainError

STATE_ENCODINGS = ("sincos", "minmax")
ACTION_NORMALIZATIONS = ("min_max", "q01_q99")
VL_CROSS_ATTENTION = ("joint", "alternate")


@dataclass
class PolicyConfig:
    # Inputs and outputs
    image_size: int = 64  # square images, resized to this before the visual encoder
    num_cameras: int = 1
    state_dim: int = 26  # raw state width (observation.state)
    action_dim: int = 26  # raw action width (action)
    action_horizon: int = 16
    state_encoding: str = "sincos"  # "sincos": [sin x, cos x] per group (GR00T); "minmax": [-1, 1]
    action_normalization: str = "min_max"  # "min_max" | "q01_q99" (GR00T use_percentiles)

    # Visual encoder: strided conv stem -> patch grid -> transformer -> pooled to tokens_per_side**2
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_patch_size: int = 8  # conv stem stride; the patch grid is image_size / patch_size
    vision_tokens_per_side: int = 4  # tokens per camera = this squared

    # Language encoder (small transformer over hashed word tokens)
    text_vocab_size: int = 1024
    text_max_length: int = 16
    language_width: int = 64
    language_depth: int = 1
    language_heads: int = 4

    # Action head (DiT with AdaLN on the flow-matching timestep)
    head_width: int = 128
    head_depth: int = 4  # blocks alternate cross-attention (even) and self-attention (odd)
    head_heads: int = 4
    head_mlp_ratio: int = 4
    vl_cross_attention: str = "joint"  # "alternate": image-only / text-only blocks in turn (N1.6); "joint": both
    dropout: float = 0.0
    num_timestep_buckets: int = 1000
    num_inference_steps: int = 4

    @property
    def state_feature_dim(self) -> int:
        """Width of the encoded state vector the model consumes."""
        return 2 * self.state_dim if self.state_encoding == "sincos" else self.state_dim

    @property
    def vision_tokens(self) -> int:
        return self.num_cameras * self.vision_tokens_per_side**2

    def validate(self, source: str = "PolicyConfig") -> PolicyConfig:
        def bad(msg):
            raise PosttrainError(f"{source}: {msg}")

        if self.state_encoding not in STATE_ENCODINGS:
            bad(f"state_encoding {self.state_encoding!r}, expected one of {', '.join(STATE_ENCODINGS)}")
        if self.action_normalization not in ACTION_NORMALIZATIONS:
            bad(
                f"action_normalization {self.action_normalization!r}, "
                f"expected one of {', '.join(ACTION_NORMALIZATIONS)}"
            )
        if self.vl_cross_attention not in VL_CROSS_ATTENTION:
            bad(f"vl_cross_attention {self.vl_cross_attention!r}, expected one of {', '.join(VL_CROSS_ATTENTION)}")
        if self.image_size % self.vision_patch_size:
            bad(f"image_size {self.image_size} is not a multiple of vision_patch_size {self.vision_patch_size}")
        if (self.image_size // self.vision_patch_size) % self.vision_tokens_per_side:
            bad(
                f"patch grid {self.image_size // self.vision_patch_size} is not a multiple of "
                f"vision_tokens_per_side {self.vision_tokens_per_side}"
            )
        for name in ("vision", "language", "head"):
            width, heads = getattr(self, f"{name}_width"), getattr(self, f"{name}_heads")
            if width % heads:
                bad(f"{name}_width {width} is not divisible by {name}_heads {heads}")
        for name in (
            "num_cameras",
            "state_dim",
            "action_dim",
            "action_horizon",
            "num_inference_steps",
            "text_max_length",
            "head_depth",
        ):
            if getattr(self, name) < 1:
                bad(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    @classmethod
    def from_preset(cls, name: str, **overrides) -> PolicyConfig:
        if name not in PRESETS:
            raise PosttrainError(f"unknown policy preset {name!r}, expected one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides}, source=f"preset {name!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "model_config.json") -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PosttrainError(f"{source}: unknown policy config keys {unknown}")
        return cls(**values).validate(source)


# Only the values that differ from the dataclass defaults (which are the tiny sizes).
PRESETS: dict[str, dict] = {
    "tiny": {},
    "base": dict(
        image_size=224,
        vision_width=384,
        vision_depth=6,
        vision_heads=6,
        vision_patch_size=16,
        vision_tokens_per_side=7,
        text_max_length=32,
        language_width=256,
        language_depth=2,
        language_heads=4,
        head_width=512,
        head_depth=8,
        head_heads=8,
        dropout=0.1,
        vl_cross_attention="alternate",
    ),
    # GR00T N1.6's shape at about a seventh of its size: 64 image tokens per camera (N1.6 has 64
    # after pixel shuffle), alternate image/text cross-attention, a 16-layer DiT (N1.6: 32 x 1536).
    "large": dict(
        image_size=256,
        vision_width=768,
        vision_depth=12,
        vision_heads=12,
        vision_patch_size=16,
        vision_tokens_per_side=8,
        text_max_length=32,
        language_width=512,
        language_depth=4,
        language_heads=8,
        head_width=1024,
        head_depth=16,
        head_heads=16,
        dropout=0.1,
        vl_cross_attention="alternate",
    ),
}
