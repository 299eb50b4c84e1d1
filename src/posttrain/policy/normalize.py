"""State encoding and action normalization from `meta/stats.json`, as GR00T N1.6 does it.

Inputs and outputs are numpy (float32); torch tensors are accepted and converted.

- State, `sincos` (GR00T `apply_sincos_state_encoding`): per modality group, `[sin x, cos x]` of
  the raw values, groups concatenated in modality order: 26 dims -> 52.
- State, `minmax`: the same bounds and formula as actions.
- Action: `2 (x - lo) / max(hi - lo, 1e-8) - 1`, clipped to [-1, 1], where (lo, hi) is
  (min, max) or, with `q01_q99`, (q01, q99) (GR00T `use_percentiles`).

Bounds are per dimension: for every group in `modality[kind]`,
`stats[group.original_key][stat][start:end]` (original_key defaults to `observation.state` /
`action`), exactly how GR00T's loader slices them. Normalized vectors list the groups in modality
order; `unnormalize_action` scatters them back to raw column positions.
"""

from __future__ import annotations

import numpy as np

from posttrain.errors import PosttrainError

DEFAULT_KEYS = {"state": "observation.state", "action": "action"}
EPS = 1e-8


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class _Bounds:
    """Per-dimension (lo, hi) and the raw column index of each normalized dimension."""

    def __init__(self, kind: str, stats: dict, modality: dict, dim: int, use_percentiles: bool,
                 stats_name: str, modality_name: str):
        groups = modality.get(kind)
        if not isinstance(groups, dict) or not groups:
            raise PosttrainError(f"{modality_name}: no {kind!r} groups")
        lo_key, hi_key = ("q01", "q99") if use_percentiles else ("min", "max")
        self.group_slices: list[slice] = []   # positions in the normalized vector
        index, lo, hi = [], [], []
        for name, group in groups.items():
            try:
                start, end = int(group["start"]), int(group["end"])
            except (KeyError, TypeError, ValueError):
                raise PosttrainError(f"{modality_name}: {kind}.{name}: needs integer start and end") from None
            column = group.get("original_key", DEFAULT_KEYS[kind])
            if not 0 <= start < end <= dim:
                raise PosttrainError(f"{modality_name}: {kind}.{name}: slice {start}:{end} does not fit "
                                     f"the policy's {kind}_dim {dim}")
            for stat in (lo_key, hi_key):
                values = stats.get(column, {}).get(stat)
                if values is None:
                    raise PosttrainError(f"{stats_name}: {column}: missing {stat!r}")
                if len(values) != dim:
                    raise PosttrainError(f"{stats_name}: {column}: {stat} has {len(values)} values, "
                                         f"expected {kind}_dim {dim}")
            self.group_slices.append(slice(len(index), len(index) + end - start))
            index.extend(range(start, end))
            lo.extend(stats[column][lo_key][start:end])
            hi.extend(stats[column][hi_key][start:end])
        if sorted(index) != list(range(dim)):
            raise PosttrainError(f"{modality_name}: {kind} groups cover columns {sorted(set(index))[:3]}... "
                                 f"({len(index)} in all), expected each of 0..{dim - 1} exactly once")
        self.index = np.asarray(index, dtype=np.int64)
        self.lo = np.asarray(lo, dtype=np.float32)
        self.hi = np.asarray(hi, dtype=np.float32)
        self.span = np.maximum(self.hi - self.lo, EPS)

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        x = raw[..., self.index]
        return np.clip(2.0 * (x - self.lo) / self.span - 1.0, -1.0, 1.0).astype(np.float32)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        x = (np.clip(normalized, -1.0, 1.0) + 1.0) / 2.0 * self.span + self.lo
        raw = np.empty_like(x)
        raw[..., self.index] = x
        return raw.astype(np.float32)


class Normalizer:
    def __init__(self, stats: dict, modality: dict, config, stats_name: str = "stats.json",
                 modality_name: str = "modality.json"):
        self.config = config
        use_percentiles = config.action_normalization == "q01_q99"
        self.state = _Bounds("state", stats, modality, config.state_dim, use_percentiles, stats_name, modality_name)
        self.action = _Bounds("action", stats, modality, config.action_dim, use_percentiles, stats_name,
                              modality_name)

    def _check(self, x: np.ndarray, dim: int, what: str) -> None:
        if x.ndim < 1 or x.shape[-1] != dim:
            raise PosttrainError(f"{what}: shape {tuple(x.shape)}, expected (..., {dim})")

    def encode_state(self, raw) -> np.ndarray:
        """Raw state (..., state_dim) -> features (..., config.state_feature_dim), float32."""
        raw = _as_numpy(raw)
        self._check(raw, self.config.state_dim, "state")
        if self.config.state_encoding == "minmax":
            return self.state.normalize(raw)
        x = raw[..., self.state.index]
        parts = []
        for group in self.state.group_slices:
            parts += [np.sin(x[..., group]), np.cos(x[..., group])]
        return np.concatenate(parts, axis=-1).astype(np.float32)

    def normalize_action(self, raw) -> np.ndarray:
        """Raw actions (..., action_dim) -> [-1, 1] (..., action_dim), groups in modality order."""
        raw = _as_numpy(raw)
        self._check(raw, self.config.action_dim, "action")
        return self.action.normalize(raw)

    def unnormalize_action(self, normalized) -> np.ndarray:
        """Inverse of `normalize_action` (input clipped to [-1, 1] first), raw column order."""
        normalized = _as_numpy(normalized)
        self._check(normalized, self.config.action_dim, "normalized action")
        return self.action.unnormalize(normalized)
