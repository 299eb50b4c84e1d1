"""State encoding and action normalization from `meta/stats.json`, as GR00T N1.6 does it.

Inputs and outputs are numpy (float32); torch tensors are accepted and converted.

- State, `sincos` (GR00T `apply_sincos_state_encoding`): per modality group, `[sin x, cos x]` of
  the raw values, groups concatenated in modality order: 26 dims -> 52.
- State, `minmax`: the same bounds and formula as actions.
- Action: `2 (x - lo) / max(hi - lo, 1e-8) - 1`, clipped to [-1, 1], where (lo, hi) is
  (min, max) or, with `q01_q99`, (q01, q99) (GR00T `use_percentiles`).

Bounds are per dimension: for every group in `modality[kind]`,
`stats[group.original_key][stat][start:end]` (original_key defaults to `observation.state` /
`action`), exactly how GR00T's loader slices them. Raw vectors are the groups' columns side by
side (`posttrain.layout`: for GR1 just `observation.state` / `action`; for G1 the eef pose and
teleop columns too). Normalized vectors list the groups in modality order; `unnormalize_action`
scatters them back to raw vector positions.
"""

from __future__ import annotations

import numpy as np

from posttrain.errors import PosttrainError
from posttrain.layout import Layout, group_columns, layout

EPS = 1e-8


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


class _Bounds:
    """Per-dimension (lo, hi), the raw vector position of each normalized dimension, and the layout."""

    def __init__(
        self,
        kind: str,
        stats: dict,
        modality: dict,
        dim: int,
        use_percentiles: bool,
        stats_name: str,
        modality_name: str,
    ):
        lo_key, hi_key = ("q01", "q99") if use_percentiles else ("min", "max")
        columns = group_columns(modality, kind, modality_name)
        widths = {
            column: self._width(
                stats, column, (lo_key, hi_key), dim if len(columns) == 1 else None, f"{kind}_dim", stats_name
            )
            for column in columns
        }
        if sum(widths.values()) != dim:
            raise PosttrainError(
                f"{stats_name}: {kind} columns {widths} have {sum(widths.values())} values in all, "
                f"expected {kind}_dim {dim}"
            )
        self.layout = layout(modality, kind, widths, modality_name)
        self.group_slices: list[slice] = []  # positions in the normalized vector
        index, lo, hi = [], [], []
        for group in self.layout.groups:
            self.group_slices.append(slice(len(index), len(index) + group.end - group.start))
            index.extend(range(group.positions.start, group.positions.stop))
            lo.extend(stats[group.column][lo_key][group.start : group.end])
            hi.extend(stats[group.column][hi_key][group.start : group.end])
        self.index = np.asarray(index, dtype=np.int64)
        self.lo = np.asarray(lo, dtype=np.float32)
        self.hi = np.asarray(hi, dtype=np.float32)
        self.span = np.maximum(self.hi - self.lo, EPS)

    @staticmethod
    def _width(stats: dict, column: str, keys: tuple[str, str], dim: int | None, dim_name: str, stats_name: str) -> int:
        """The column's width in stats.json: both bounds present and as wide (as `dim`, when it is the only column)."""
        bounds = [stats.get(column, {}).get(key) for key in keys]
        for key, values in zip(keys, bounds):
            if values is None:
                raise PosttrainError(f"{stats_name}: {column}: missing {key!r}")
        expected = len(bounds[0]) if dim is None else dim
        for key, values in zip(keys, bounds):
            if len(values) != expected:
                wanted = f"{dim_name} {dim}" if dim is not None else f"{expected} as {keys[0]}"
                raise PosttrainError(f"{stats_name}: {column}: {key} has {len(values)} values, expected {wanted}")
        return expected

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        x = raw[..., self.index]
        return np.clip(2.0 * (x - self.lo) / self.span - 1.0, -1.0, 1.0).astype(np.float32)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        x = (np.clip(normalized, -1.0, 1.0) + 1.0) / 2.0 * self.span + self.lo
        raw = np.empty_like(x)
        raw[..., self.index] = x
        return raw.astype(np.float32)


class Normalizer:
    def __init__(
        self, stats: dict, modality: dict, config, stats_name: str = "stats.json", modality_name: str = "modality.json"
    ):
        self.config = config
        use_percentiles = config.action_normalization == "q01_q99"
        self.state = _Bounds("state", stats, modality, config.state_dim, use_percentiles, stats_name, modality_name)
        self.action = _Bounds("action", stats, modality, config.action_dim, use_percentiles, stats_name, modality_name)

    @property
    def state_layout(self) -> Layout:
        """Which columns make the raw state vector, and where each state group sits in it."""
        return self.state.layout

    @property
    def action_layout(self) -> Layout:
        """Which columns make the raw action vector, and where each action group sits in it."""
        return self.action.layout

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
        """Inverse of `normalize_action` (input clipped to [-1, 1] first), in raw vector order."""
        normalized = _as_numpy(normalized)
        self._check(normalized, self.config.action_dim, "normalized action")
        return self.action.unnormalize(normalized)
