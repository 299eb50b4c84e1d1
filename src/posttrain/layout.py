"""The native policy's state and action vectors: which parquet columns, in which order.

Rule: the policy reads every `state` / `action` group of meta/modality.json, each from its own
column (`original_key`, default `observation.state` / `action`, as GR00T's loader reads them).
Its raw state (or action) vector is those columns side by side, whole, in the order the groups
first name them; a group sits at its column's offset + start:end. For GR1 that is just
`observation.state` (26) and `action` (26), as before. For Unitree G1 (config/embodiments/g1):

    state  = observation.state (43) + observation.eef_pose (14)                        -> 57
    action = action (43) + action.eef_pose (14) + teleop.base_height_command (1)
             + teleop.navigate_command (3) + teleop.torso_orientation_rpy_command (3)  -> 64

Every column a group names must be covered by its groups exactly once (no gaps, no overlap), so
that a predicted vector maps back onto whole columns. The trainer, the loader, checkpoints
(Policy.predict's raw state and actions) and eval all use this one layout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from posttrain.errors import PosttrainError

DEFAULT_COLUMNS = {"state": "observation.state", "action": "action"}


@dataclass(frozen=True)
class Slot:
    """A modality group in the vector: `column[start:end]` at positions `offset + start : offset + end`."""

    name: str
    column: str
    start: int
    end: int
    offset: int

    @property
    def positions(self) -> slice:
        return slice(self.offset + self.start, self.offset + self.end)


@dataclass(frozen=True)
class Layout:
    kind: str  # "state" or "action"
    columns: tuple[tuple[str, int], ...]  # (column, width), in vector order
    groups: tuple[Slot, ...]  # modality.json order

    @property
    def width(self) -> int:
        return sum(width for _, width in self.columns)

    @property
    def column_names(self) -> list[str]:
        return [column for column, _ in self.columns]

    def concat(self, columns: Mapping[str, np.ndarray], dtype=np.float32) -> np.ndarray:
        """(T, width) from {column: (T, column width)} arrays (e.g. `LeRobotDataset.read_episode`)."""
        return np.concatenate(
            [np.asarray(columns[c], dtype).reshape(len(columns[c]), -1) for c in self.column_names], axis=1
        )

    def stat(self, stats: Mapping[str, dict], key: str) -> np.ndarray:
        """One statistic (e.g. "mean") of every column, as one (width,) vector."""
        return np.concatenate([np.asarray(stats[c][key], np.float64) for c in self.column_names])


def group_columns(modality: dict, kind: str, where: str = "modality.json") -> list[str]:
    """The columns `kind`'s groups read, in order of first mention."""
    groups = modality.get(kind)
    if not isinstance(groups, dict) or not groups:
        raise PosttrainError(f"{where}: no {kind!r} groups")
    columns = []
    for name, spec in groups.items():
        if not isinstance(spec, dict):
            raise PosttrainError(f"{where}: {kind}.{name}: needs integer start and end")
        column = spec.get("original_key", DEFAULT_COLUMNS[kind])
        if column not in columns:
            columns.append(column)
    return columns


def layout(modality: dict, kind: str, widths: Mapping[str, int], where: str = "modality.json") -> Layout:
    """`kind`'s vector layout; `widths` gives each column's width (info.json features or stats.json)."""
    columns = group_columns(modality, kind, where)
    offsets, offset = {}, 0
    for column in columns:
        if column not in widths:
            raise PosttrainError(f"{where}: {kind} groups read column {column!r}, which the dataset does not have")
        offsets[column], offset = offset, offset + int(widths[column])
    slots, covered = [], {column: [] for column in columns}
    for name, spec in modality[kind].items():
        try:
            start, end = int(spec["start"]), int(spec["end"])
        except (KeyError, TypeError, ValueError):
            raise PosttrainError(f"{where}: {kind}.{name}: needs integer start and end") from None
        column = spec.get("original_key", DEFAULT_COLUMNS[kind])
        if not 0 <= start < end <= widths[column]:
            raise PosttrainError(
                f"{where}: {kind}.{name}: slice {start}:{end} outside '{column}' of width {widths[column]}"
            )
        slots.append(Slot(name, column, start, end, offsets[column]))
        covered[column].extend(range(start, end))
    for column, index in covered.items():
        if sorted(index) != list(range(widths[column])):
            raise PosttrainError(
                f"{where}: {kind} groups cover columns {sorted(set(index))[:3]}... of '{column}' "
                f"({len(index)} in all), expected each of 0..{widths[column] - 1} exactly once"
            )
    return Layout(kind, tuple((c, int(widths[c])) for c in columns), tuple(slots))


def feature_widths(features: dict) -> dict[str, int]:
    """Width of every 1-D numeric column of meta/info.json's features (video features excluded)."""
    widths = {}
    for name, spec in features.items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if spec.get("dtype") != "video" and isinstance(shape, list) and len(shape) == 1:
            widths[name] = int(shape[0])
    return widths


def dataset_layouts(dataset) -> tuple[Layout, Layout]:
    """A `LeRobotDataset`'s state and action layouts, column widths from meta/info.json."""
    widths = feature_widths(dataset.info["features"])
    where = str(dataset.root / "meta" / "modality.json")
    return layout(dataset.modality, "state", widths, where), layout(dataset.modality, "action", widths, where)
