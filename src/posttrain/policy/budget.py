"""Peak GPU memory of one training step, from parameter counts: does a training preset fit the card?

    from posttrain.policy.budget import native_budget, gr00t_budget
    native_budget(PolicyConfig.from_preset("large"), micro_batch=16).peak  # bytes

Native policy: parameters are counted on the real model, and the activations are the tensors
autograd really saves for the backward pass, recorded in a forward pass over fake tensors (shapes
only: no memory, no compute). GR00T N1.6 (not installed here): the parameter counts of
shared/docs/gr00t_n16.md §4 per module group and a per-layer activation formula.

Assumptions (bf16 mixed precision, as both trainers run it):
  - trainable parameters are fp32 masters (4 B), with fp32 gradients (4 B) and AdamW's two fp32
    moments (8 B); frozen parameters have no gradient and no optimizer state;
  - frozen parameters are fp32 in the native policy and bf16 (2 B) in GR00T, whose backbone loads
    in bf16 and casts only its trainable parameters to fp32 (this reproduces the doc's checkpoint
    size: ~9 GB of weights and ~13 GB of AdamW state with GR00T's default tuning);
  - autocast keeps a bf16 copy (2 B) of every weight it casts, saved for the backward pass;
  - activations are the saved tensors at the micro-batch (global batch / gradient accumulation),
    bf16 where autocast casts: for the native policy as torch's CPU kernels save them (CUDA's fused
    attention kernels may save less), for GR00T with each attention score matrix counted;
  - torch's foreach AdamW allocates one fp32 temporary the size of the trainable parameters while
    it steps, when the activations are already freed;
  - 1 GiB for the CUDA context, cuBLAS workspaces and what the rest misses.

    peak = weights + gradients + AdamW state + max(saved for backward, AdamW step temporary) + 1 GiB

Gradients, weight copies and activations are counted as all resident at once (the gradients fill
up while the backward pass frees the activations), so the peak is an upper bound. A preset fits a
card when its peak is at most FIT_FRACTION of it: the rest is margin for allocator fragmentation
and for what the estimate misses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
CARD_24GB = 24 * GIB  # an RTX 3090 / 4090 (24,564 MiB)
CARD_48GB = 48 * GIB  # an RTX 6000 Ada (49,140 MiB), the seed's single-GPU card
FIT_FRACTION = 0.8  # fits = peak <= 80 % of the card
OVERHEAD = 1 * GIB

FP32, BF16 = 4, 2
ADAMW_STATE = 2 * FP32  # exp_avg and exp_avg_sq


@dataclass
class Budget:
    """Bytes of one training step's peak, by what holds them."""

    backend: str
    setting: str  # e.g. "large" or "projector"
    micro_batch: int
    trainable_params: int
    frozen_params: int
    weights: int
    gradients: int
    optimizer: int
    saved_for_backward: int  # bf16 weight copies + activations at the micro-batch
    optimizer_step_temporary: int
    overhead: int = OVERHEAD

    @property
    def peak(self) -> int:
        transient = max(self.saved_for_backward, self.optimizer_step_temporary)
        return self.weights + self.gradients + self.optimizer + transient + self.overhead

    def fits(self, card: int = CARD_24GB) -> bool:
        return self.peak <= FIT_FRACTION * card

    def to_dict(self) -> dict:
        gib = {
            k: round(v / GIB, 2)
            for k, v in asdict(self).items()
            if k in ("weights", "gradients", "optimizer", "saved_for_backward", "optimizer_step_temporary", "overhead")
        }
        return {
            "backend": self.backend,
            "setting": self.setting,
            "micro_batch": self.micro_batch,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            **{f"{k}_gib": v for k, v in gib.items()},
            "peak_gib": round(self.peak / GIB, 2),
            "of_24gb": round(self.peak / CARD_24GB, 3),
            "fits_24gb": self.fits(CARD_24GB),
        }


def _budget(
    backend: str, setting: str, micro_batch: int, trainable: int, frozen: int, frozen_bytes: int, saved: int
) -> Budget:
    return Budget(
        backend=backend,
        setting=setting,
        micro_batch=micro_batch,
        trainable_params=trainable,
        frozen_params=frozen,
        weights=trainable * FP32 + frozen * frozen_bytes,
        gradients=trainable * FP32,
        optimizer=trainable * ADAMW_STATE,
        saved_for_backward=saved,
        optimizer_step_temporary=trainable * FP32,
    )


# ----------------------------------------------------------------------------- native policy


def native_budget(
    config,
    micro_batch: int,
    mixed_precision: str = "bf16",
    tune_llm: bool = False,
    tune_visual: bool = True,
    tune_projector: bool = True,
    tune_diffusion_model: bool = True,
    setting: str = "",
) -> Budget:
    """The native policy's peak for `config` (a PolicyConfig) at `micro_batch` samples per device."""
    # Fake tensors carry shapes and dtypes only (no memory, no compute); torch.compile relies on them.
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .model import PolicyModel

    with FakeTensorMode():
        model = PolicyModel(config)
        model.set_trainable(
            tune_llm=tune_llm,
            tune_visual=tune_visual,
            tune_projector=tune_projector,
            tune_diffusion_model=tune_diffusion_model,
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        saved = saved_for_backward(model, fake_batch(config, micro_batch), mixed_precision)
    return _budget("native", setting, micro_batch, trainable, frozen, FP32, saved)


def fake_batch(config, batch_size: int) -> dict:
    """A training batch of the right shapes (values do not matter for what autograd saves)."""
    import torch

    c = config
    return {
        "images": torch.empty(batch_size, c.num_cameras, 3, c.image_size, c.image_size),
        "state": torch.empty(batch_size, c.state_feature_dim),
        "action": torch.empty(batch_size, c.action_horizon, c.action_dim),
        "tokens": torch.ones(batch_size, c.text_max_length, dtype=torch.long),  # 1: not padding
        "noise": torch.empty(batch_size, c.action_horizon, c.action_dim),
        "time": torch.full((batch_size,), 0.5),
    }


def saved_for_backward(model, batch: dict, mixed_precision: str = "bf16") -> int:
    """Bytes of the distinct tensors autograd saves in `model(batch)`, parameters excluded (they are
    counted as weights); under autocast this includes the low-precision weight copies."""
    import torch

    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
        torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
    ):
        model(batch)
    return sum(saved.values())


# ----------------------------------------------------------------------------- GR00T N1.6-3B
# Parameter counts from shared/docs/gr00t_n16.md §4.
GR00T_BACKBONE = 1.56e9  # Eagle-Block2A-2B-v2: SigLIP2 + mlp1 + Qwen3-1.7B cut after layer 16
GR00T_ACTION_HEAD = 1.42e9  # LayerNorm + AlternateVLDiT (32 x 1536) + per-embodiment MLPs
GR00T_PROJECTOR = 32 * 10e6  # 32 embodiment slots of ~10M (all trainable with --tune-projector)
GR00T_DEFAULT_TRAINABLE = 1.62e9  # action head + the top 4 LLM layers (trained even with --no-tune-llm)
GR00T_TOP_LLM = GR00T_DEFAULT_TRAINABLE - GR00T_ACTION_HEAD  # 0.20B, always trainable
GR00T_DIFFUSION = GR00T_ACTION_HEAD - GR00T_PROJECTOR  # 1.10B


def _vit_layer_params(width: int, ffn: int) -> int:
    return 4 * width * width + 2 * width * ffn + 9 * width + ffn  # q, k, v, out, fc1, fc2, biases, 2 LNs


# SigLIP2 (27 layers, width 1152; MLP width 4304, SigLIP-so400m's) + mlp1 (LayerNorm, 4608->2048->2048).
GR00T_VISUAL = 27 * _vit_layer_params(1152, 4304) + (2 * 4608 + 4608 * 2048 + 2048 + 2048 * 2048 + 2048)
GR00T_LLM = GR00T_BACKBONE - GR00T_VISUAL  # 1.13B, the top 4 layers included

# Activation shapes per sample: ~196 VL tokens (the doc's collated input_ids); one camera view of
# 16 x 16 SigLIP patches (224 px, patch 14; 64 tokens after pixel shuffle); the DiT runs over
# 1 state token + 50 action steps (actions are padded to 50). Layer widths: Qwen3-1.7B 2048 (MLP
# 6144, gated, 16 heads), DiT 1536 (MLP 4 x, 32 heads, dropout 0.2), SigLIP2 1152 (MLP 4304, 16 heads).
GR00T_VL_TOKENS = 196
GR00T_PATCHES_PER_VIEW = 256
GR00T_DIT_TOKENS = 1 + 50


def layer_activation_bytes(
    tokens: int,
    width: int,
    ffn: int,
    heads: int,
    context: int | None = None,
    gated: bool = False,
    dropout: bool = False,
) -> int:
    """Bytes one pre-norm transformer layer saves per sample in 16-bit (Korthikanti et al. 2022,
    "Reducing activation recomputation", generalised to cross-attention and gated MLPs).

    Attention: norm input, q/k/v input, q, k and v (over `context` tokens for cross-attention),
    attention output, the score matrix (twice with dropout, plus its 1-byte mask); MLP: norm input,
    fc1 input, 2 (3 gated) hidden-width tensors; dropout masks (1 byte) after attention and MLP.
    """
    s, h, kv = tokens, width, context or tokens
    attention = 2 * (4 * s * h + 2 * kv * h) + heads * s * kv * (5 if dropout else 2)
    mlp = 2 * (2 * s * h + (3 if gated else 2) * s * ffn)
    masks = 2 * s * h if dropout else 0
    return attention + mlp + masks


def gr00t_activation_bytes(tune_llm: bool, tune_visual: bool, views: int = 1) -> int:
    """Per-sample saved activations of GR00T N1.6: the DiT always (the projector's encoders sit
    below it); the top 4 LLM layers always (trained); all 16 LLM layers and SigLIP2 when the
    gradient must reach the visual encoder or the whole LLM."""
    dit_self = layer_activation_bytes(GR00T_DIT_TOKENS, 1536, 6144, 32, dropout=True)
    dit_cross = layer_activation_bytes(GR00T_DIT_TOKENS, 1536, 6144, 32, context=GR00T_VL_TOKENS, dropout=True)
    total = 16 * dit_self + 16 * dit_cross
    llm_layers = 16 if (tune_llm or tune_visual) else 4
    total += llm_layers * layer_activation_bytes(GR00T_VL_TOKENS, 2048, 6144, 16, gated=True)
    if tune_visual:
        total += views * 27 * layer_activation_bytes(GR00T_PATCHES_PER_VIEW, 1152, 4304, 16)
    return total


def gr00t_budget(
    micro_batch: int,
    tune_llm: bool = False,
    tune_visual: bool = False,
    tune_projector: bool = True,
    tune_diffusion_model: bool = True,
    setting: str = "",
) -> Budget:
    """GR00T N1.6-3B's peak under launch_finetune.py's fixed recipe (AdamW, bf16 autocast, no
    gradient checkpointing) with these --tune-* switches, at `micro_batch` samples per GPU."""
    groups = {  # parameters, trainable?
        "top_llm": (GR00T_TOP_LLM, True),
        "llm": (GR00T_LLM - GR00T_TOP_LLM, tune_llm),
        "visual": (GR00T_VISUAL, tune_visual),
        "projector": (GR00T_PROJECTOR, tune_projector),
        "diffusion": (GR00T_DIFFUSION, tune_diffusion_model),
    }
    trainable = int(sum(n for n, train in groups.values() if train))
    frozen = int(sum(n for n, train in groups.values() if not train))
    copies = trainable * BF16
    saved = copies + micro_batch * gr00t_activation_bytes(tune_llm, tune_visual)
    return _budget("gr00t", setting, micro_batch, trainable, frozen, BF16, saved)


# ----------------------------------------------------------------------------- from a config


def train_budgets(train: dict, num_gpus: int = 1) -> dict[str, Budget]:
    """Both backends' budgets for a merged config's `train:` block on `num_gpus` GPUs (DDP for the
    native trainer; the gr00t numbers assume one GPU: DeepSpeed ZeRO-2 shards state over several)."""
    from .presets import PolicyConfig

    native_micro = train["global_batch_size"] // (num_gpus * train["gradient_accumulation_steps"])
    g = train["gr00t"]
    gr00t_micro = train["global_batch_size"] // (num_gpus * g["gradient_accumulation_steps"])
    tune = ("tune_llm", "tune_visual", "tune_projector", "tune_diffusion_model")
    gr00t_setting = "+".join(k.removeprefix("tune_") for k in tune if g[k]) or "nothing"
    return {
        "native": native_budget(
            PolicyConfig.from_preset(train["preset"]),
            native_micro,
            train["mixed_precision"],
            **{k: train[k] for k in tune},
            setting=train["preset"],
        ),
        "gr00t": gr00t_budget(gr00t_micro, **{k: g[k] for k in tune}, setting=gr00t_setting),
    }
