"""The native policy: a small GR00T-N1.6-style vision-language-action model with a flow-matching DiT head.

Read top to bottom:
  1. building blocks (attention, MLP, transformer block, timestep embedding)
  2. VisualEncoder   images (B, V, 3, H, W) in [0, 1] -> tokens (B, V*k, vision_width)
  3. LanguageEncoder tokens (B, L)                     -> tokens (B, L, language_width) + mask
  4. DiTBlock        AdaLN(t) + self-attention over [state, actions] or cross-attention to VL tokens
  5. PolicyModel     wiring, flow-matching loss (`forward`) and Euler sampling (`sample`)

Module groups (the seed's fine-tuning switches; see `parameter_groups`):
  language  -> tune_llm             visual    -> tune_visual
  projector -> tune_projector (VL projections + LayerNorm, state/action encoders, action decoder,
                                     action position embedding)
  diffusion -> tune_diffusion_model (timestep embedding, DiT blocks, output AdaLN)

Flow matching as in N1.6: t = 0.999 (1 - u), u ~ Beta(1.5, 1); x_t = (1 - t) eps + t a; the
model predicts the velocity a - eps; the timestep is embedded as floor(1000 t). Sampling runs
`num_inference_steps` Euler steps from t = 0 (pure noise) towards t = 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .presets import PolicyConfig
from .tokenizer import PAD_ID

# ----------------------------------------------------------------------------- 1. building blocks


class Attention(nn.Module):
    """Multi-head attention; self-attention when `context` is None. `key_mask` True = attend."""

    def __init__(self, width: int, heads: int, dropout: float, context_width: int | None = None):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x, context=None, key_mask=None):
        context = x if context is None else context
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(B, context.shape[1], 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Sequential):
    def __init__(self, width: int, hidden: int, out: int | None = None, dropout: float = 0.0):
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out or width))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block (visual and language encoders)."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.mlp = MLP(width, 4 * width, dropout=dropout)

    def forward(self, x, key_mask=None):
        x = x + self.attn(self.norm1(x), key_mask=key_mask)
        return x + self.mlp(self.norm2(x))


def sinusoidal_embedding(steps: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) integer timesteps -> (B, width) [sin, cos] features at geometric frequencies."""
    half = width // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=steps.device, dtype=torch.float32) / half)
    angles = steps.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


# ----------------------------------------------------------------------------- 2. visual encoder


class VisualEncoder(nn.Module):
    """Conv stem (stride = patch size) -> patch-grid transformer -> average-pooled to k x k tokens per camera."""

    def __init__(self, c: PolicyConfig):
        super().__init__()
        w, p = c.vision_width, c.vision_patch_size
        # Two convs: a 4x4 stride-4 patchify, then the rest of the stride; cheaper than one big patch on CPU.
        first = 4 if p % 4 == 0 and p > 4 else p
        layers = [nn.Conv2d(3, w // 2, first, stride=first), nn.GELU()]
        if p // first > 1:
            layers += [nn.Conv2d(w // 2, w, p // first, stride=p // first)]
        else:
            layers += [nn.Conv2d(w // 2, w, 1)]
        self.stem = nn.Sequential(*layers)
        grid = c.image_size // p
        self.pos = nn.Parameter(torch.zeros(1, grid * grid, w))
        self.camera = nn.Parameter(torch.zeros(c.num_cameras, w))
        self.blocks = nn.ModuleList(TransformerBlock(w, c.vision_heads, c.dropout) for _ in range(c.vision_depth))
        self.norm = nn.LayerNorm(w)
        self.grid, self.tokens_per_side = grid, c.vision_tokens_per_side
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.camera, std=0.02)

    def forward(self, images):
        B, V = images.shape[:2]
        x = self.stem(images.flatten(0, 1) * 2.0 - 1.0)  # [0, 1] -> [-1, 1]; (B*V, w, g, g)
        x = x.flatten(2).transpose(1, 2) + self.pos  # (B*V, g*g, w)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).transpose(1, 2).reshape(B * V, -1, self.grid, self.grid)
        x = F.adaptive_avg_pool2d(x, self.tokens_per_side).flatten(2).transpose(1, 2)  # (B*V, k*k, w)
        x = x.reshape(B, V, -1, x.shape[-1]) + self.camera[None, :, None, :]
        return x.flatten(1, 2)  # (B, V*k*k, w)


# ----------------------------------------------------------------------------- 3. language encoder


class LanguageEncoder(nn.Module):
    def __init__(self, c: PolicyConfig):
        super().__init__()
        self.embed = nn.Embedding(c.text_vocab_size, c.language_width, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.zeros(1, c.text_max_length, c.language_width))
        self.blocks = nn.ModuleList(
            TransformerBlock(c.language_width, c.language_heads, c.dropout) for _ in range(c.language_depth)
        )
        self.norm = nn.LayerNorm(c.language_width)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens):
        mask = tokens != PAD_ID  # (B, L) True = real token
        x = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        for block in self.blocks:
            x = block(x, key_mask=mask)
        return self.norm(x), mask


# ----------------------------------------------------------------------------- 4. DiT block


class DiTBlock(nn.Module):
    """AdaLN (shift, scale and gate from the timestep) -> attention -> AdaLN -> MLP.

    `cross=True`: the action sequence attends to VL tokens; otherwise self-attention over it.
    The modulation is zero-initialised so every block starts as the identity (DiT's adaLN-Zero).
    """

    def __init__(self, c: PolicyConfig, cross: bool):
        super().__init__()
        w = c.head_width
        self.cross = cross
        self.norm1 = nn.LayerNorm(w, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(w, elementwise_affine=False)
        self.attn = Attention(w, c.head_heads, c.dropout)
        self.mlp = MLP(w, c.head_mlp_ratio * w, dropout=c.dropout)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(w, 6 * w))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x, temb, context=None, context_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(temb)[:, None, :].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        if self.cross:
            h = self.attn(h, context=context, key_mask=context_mask)
        else:
            h = self.attn(h)
        x = x + gate1 * h
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


# ----------------------------------------------------------------------------- 5. the policy


class PolicyModel(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        c = self.config = config.validate()
        w = c.head_width

        self.language = LanguageEncoder(c)
        self.visual = VisualEncoder(c)

        self.projector = nn.ModuleDict(
            dict(
                vision=nn.Linear(c.vision_width, w),
                language=nn.Linear(c.language_width, w),
                vl_norm=nn.LayerNorm(w),  # GR00T's LayerNorm on the VL tokens
                state=MLP(c.state_feature_dim, 2 * w, w),  # one state token
                action_in=nn.Linear(c.action_dim, w),  # action encoder W1
                action_time=nn.Sequential(nn.Linear(2 * w, w), nn.SiLU(), nn.Linear(w, w)),  # W2(cat(a, t)), W3
                action_out=MLP(w, w, c.action_dim),  # action decoder
            )
        )
        self.action_pos = nn.Parameter(torch.zeros(1, c.action_horizon, w))  # learned, in the projector group
        nn.init.normal_(self.action_pos, std=0.02)

        self.diffusion = nn.ModuleDict(
            dict(
                time=nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)),
                blocks=nn.ModuleList(DiTBlock(c, cross=(i % 2 == 0)) for i in range(c.head_depth)),
                norm_out=nn.LayerNorm(w, elementwise_affine=False),
                ada_out=nn.Sequential(nn.SiLU(), nn.Linear(w, 2 * w)),
            )
        )
        nn.init.zeros_(self.diffusion.ada_out[1].weight)
        nn.init.zeros_(self.diffusion.ada_out[1].bias)

    # -- module groups -------------------------------------------------------------------------

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The four fine-tuning groups; together they hold every parameter exactly once."""
        return {
            "language": list(self.language.parameters()),
            "visual": list(self.visual.parameters()),
            "projector": list(self.projector.parameters()) + [self.action_pos],
            "diffusion": list(self.diffusion.parameters()),
        }

    def set_trainable(
        self,
        tune_llm: bool = False,
        tune_visual: bool = True,
        tune_projector: bool = True,
        tune_diffusion_model: bool = True,
    ) -> None:
        """Set requires_grad per group (defaults are GR00T's launch_finetune.py defaults, visual aside)."""
        switches = {
            "language": tune_llm,
            "visual": tune_visual,
            "projector": tune_projector,
            "diffusion": tune_diffusion_model,
        }
        for group, params in self.parameter_groups().items():
            for p in params:
                p.requires_grad_(bool(switches[group]))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- conditioning --------------------------------------------------------------------------

    def encode_context(self, images, tokens):
        """Vision and language tokens projected to the head width: (B, Nv, w), (B, L, w), text mask (B, L)."""
        vision = self.projector.vl_norm(self.projector.vision(self.visual(images)))
        text, text_mask = self.language(tokens)
        text = self.projector.vl_norm(self.projector.language(text))
        return vision, text, text_mask

    def velocity(self, noisy_action, t, state_token, vision, text, text_mask):
        """Predicted velocity (B, H, action_dim) for noisy actions at flow time t in [0, 1] (B,)."""
        c, w = self.config, self.config.head_width
        buckets = (t * c.num_timestep_buckets).long().clamp(0, c.num_timestep_buckets - 1)
        t_sin = sinusoidal_embedding(buckets, w).to(noisy_action.dtype)
        a = self.projector.action_in(noisy_action)
        a = self.projector.action_time(torch.cat([a, t_sin[:, None, :].expand_as(a)], dim=-1))
        a = a + self.action_pos[:, : a.shape[1]]
        x = torch.cat([state_token, a], dim=1)  # (B, 1 + H, w)
        temb = self.diffusion.time(t_sin)
        # "alternate" (N1.6's AlternateVLDiT): cross-attention blocks take turns attending to image
        # tokens and to text tokens. "joint": every cross-attention block sees both.
        vl = torch.cat([vision, text], dim=1)
        vl_mask = torch.cat([torch.ones(vision.shape[:2], dtype=torch.bool, device=vision.device), text_mask], dim=1)
        cross_index = 0
        for block in self.diffusion.blocks:
            if not block.cross:
                x = block(x, temb)
                continue
            if c.vl_cross_attention == "joint":
                x = block(x, temb, vl, vl_mask)
            elif cross_index % 2 == 0:
                x = block(x, temb, vision)
            else:
                x = block(x, temb, text, text_mask)
            cross_index += 1
        shift, scale = self.diffusion.ada_out(temb)[:, None, :].chunk(2, dim=-1)
        x = self.diffusion.norm_out(x) * (1 + scale) + shift
        return self.projector.action_out(x[:, 1:])  # drop the state token

    # -- training ------------------------------------------------------------------------------

    def sample_time(self, batch_size: int, device, generator=None) -> torch.Tensor:
        """t = 0.999 (1 - u), u ~ Beta(1.5, 1): more weight near the noise end (t = 0)."""
        # Beta(a, 1) has CDF u**a, so U**(1/a) samples it exactly and honours a seeded generator.
        u = torch.rand(batch_size, generator=generator) ** (1.0 / 1.5)
        return 0.999 * (1.0 - u.to(device))

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss for a batch {images, state, action, tokens[, noise, time, action_mask]}.

        `noise` (B, H, D) and `time` (B,) are drawn here (from `generator` when given) unless the
        batch brings them; `action_mask` (B, H, D) makes the loss a masked mean, as in N1.6.
        """
        action = batch["action"]
        B = action.shape[0]
        vision, text, text_mask = self.encode_context(batch["images"], batch["tokens"])
        state_token = self.projector.state(batch["state"])[:, None, :]
        # The trainer may pass per-sample noise and time (drawn from each sample's own seed) so that
        # the loss does not depend on how a global batch is split over processes.
        noise = batch.get("noise")
        if noise is None:
            noise = torch.randn(action.shape, generator=generator, device="cpu" if generator else action.device)
        noise = noise.to(action.device, action.dtype)
        t = batch.get("time")
        t = self.sample_time(B, action.device, generator) if t is None else t.to(action.device, torch.float32)
        tb = t[:, None, None].to(action.dtype)
        noisy = (1 - tb) * noise + tb * action
        pred = self.velocity(noisy, t, state_token, vision, text, text_mask)
        error = (pred.float() - (action - noise).float()) ** 2
        mask = batch.get("action_mask")
        if mask is None:
            return error.mean()
        mask = mask.to(error.dtype)
        return (error * mask).sum() / mask.sum().clamp_min(1.0)

    # -- inference -----------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, images, state, tokens, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalized actions (B, horizon, action_dim), float32, by Euler integration of the velocity.

        The noise is drawn on the CPU from `generator`, so a seeded generator gives the same actions
        on any device.
        """
        c = self.config
        B, device = state.shape[0], state.device
        vision, text, text_mask = self.encode_context(images, tokens)
        state_token = self.projector.state(state)[:, None, :]
        x = torch.randn((B, c.action_horizon, c.action_dim), generator=generator).to(device)
        dt = 1.0 / c.num_inference_steps
        for step in range(c.num_inference_steps):
            t = torch.full((B,), step * dt, device=device)
            v = self.velocity(x.to(vision.dtype), t, state_token, vision, text, text_mask)
            x = x + dt * v.float()
        return x


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
