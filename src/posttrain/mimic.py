"""Read and validate Isaac Lab Mimic HDF5 demo files (shared/docs/mimic_hdf5_and_arena_converter.md §1).

    /data                                  attrs: total, env_args
    /data/demo_{i}                         attrs: num_samples (= T), seed, success (both optional)
    /data/demo_{i}/processed_actions       (T, 36) float32   converter action source
    /data/demo_{i}/obs/robot_joint_pos     (T, 54) float32   converter state source
    /data/demo_{i}/camera_obs/<camera>     (T, H, W, 3) uint8
    /data/demo_{i}/obs/left_eef_pos, /data/demo_{i}/action/navigate_cmd, ...
                                           (T, D) float   extra columns an embodiment declares (G1)

Demos are listed in NUMERIC order (demo_2 before demo_10), not h5py's string order.
State and action may be float32 (what Isaac Lab writes) or float64 (cast to float32 on reading:
the LeRobot columns are float32 anyway); any other dtype is an error. Camera frames are never read
during `check`, only their shape and dtype; `iter_camera_frames` streams them in small batches.

Every error names the file, the demo and the key: `demos.hdf5: data/demo_3/obs/robot_joint_pos: ...`.
An object that is listed but cannot be opened (a file cut short or partly overwritten) is reported
as such: `demos.hdf5: data/demo_3: cannot be read, the file is truncated or corrupt (...)`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np
from isal import isal_zlib

from posttrain.errors import PosttrainError

log = logging.getLogger(__name__)

DEFAULT_STATE_KEY = "obs/robot_joint_pos"
DEFAULT_ACTION_KEY = "processed_actions"
DEFAULT_CAMERA = "robot_pov_cam_rgb"
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def camera_key(camera: str) -> str:
    """`robot_pov_cam_rgb` -> `camera_obs/robot_pov_cam_rgb`; a key with a `/` is taken as it is."""
    return camera if "/" in camera else f"camera_obs/{camera}"


def _demo_sort_key(name: str):
    match = re.fullmatch(r"(.*?)(\d+)", name)
    return (match[1], int(match[2]), name) if match else (name, -1, name)


class MimicFile:
    """A Mimic HDF5 file opened read-only. Use as a context manager (or call `close()`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.name = self.path.name
        try:
            # No file locking: readers never race a writer (files are written to a temporary name
            # and renamed), and shared filesystems on clusters often lack the locks HDF5 asks for.
            self.file = h5py.File(self.path, "r", locking=False)
        except (OSError, ValueError) as err:
            reason = "no such file" if not self.path.exists() else " ".join(str(err).split())
            raise PosttrainError(f"{self.path}: not a readable HDF5 file ({reason})") from None
        try:
            data = self._child(self.file, "data", "data")
        except PosttrainError:
            self.close()
            raise
        if not isinstance(data, h5py.Group):
            top = ", ".join(self.file.keys()) or "nothing"
            self.close()
            raise PosttrainError(f"{self.name}: data: group missing (the file has: {top})")
        self.data = data

    # -- basics -------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> MimicFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _damaged(self, where: str, err: Exception) -> PosttrainError:
        reason = " ".join(str(err).strip("'\"").split())
        return PosttrainError(f"{self.name}: {where}: cannot be read, the file is truncated or corrupt ({reason})")

    def _names(self, group: h5py.Group, where: str) -> list[str]:
        try:
            return list(group.keys())
        except (KeyError, OSError, RuntimeError, ValueError) as err:
            raise self._damaged(where, err) from None

    def _child(self, group: h5py.Group, name: str, where: str):
        """group[name], None when absent; a listed object that cannot be opened is a damaged file."""
        try:
            return group[name]
        except KeyError as err:
            if name not in self._names(group, where.rpartition("/")[0] or "/"):
                return None
            raise self._damaged(where, err) from None
        except (OSError, RuntimeError, ValueError) as err:
            raise self._damaged(where, err) from None

    def error(self, where: str, problem: str) -> PosttrainError:
        """An error in the house format: `<file>: data/<where>: <problem>`."""
        return PosttrainError(f"{self.name}: data/{where}: {problem}")

    @property
    def demos(self) -> list[str]:
        """Demo group names under /data, sorted numerically (demo_2 before demo_10)."""
        names = []
        for name in self._names(self.data, "data"):
            item = self._child(self.data, name, f"data/{name}")
            if not isinstance(item, h5py.Group):
                raise self.error(name, "expected a demo group, found a dataset")
            names.append(name)
        return sorted(names, key=_demo_sort_key)

    @property
    def env_args(self) -> dict:
        raw = self.data.attrs.get("env_args")
        if raw is None:
            return {}
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            return {}

    def success(self, demo: str) -> bool | None:
        """The demo's `success` attr (None when it has none: Mimic's exported files often do not)."""
        value = self._demo(demo).attrs.get("success")
        if value is None:
            return None
        value = np.asarray(value)
        if value.size != 1 or value.dtype.kind not in "biu":
            raise self.error(demo, f"attr success={value.tolist()!r}, expected True or False")
        return bool(value.item())

    def demo_attrs(self, demo: str) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._demo(demo).attrs.items()}

    def _demo(self, demo: str) -> h5py.Group:
        group = self._child(self.data, demo, f"data/{demo}")
        if not isinstance(group, h5py.Group):
            raise self.error(demo, f"no such demo (demos: {', '.join(self.demos) or 'none'})")
        return group

    def dataset(self, demo: str, key: str) -> h5py.Dataset:
        """`data/<demo>/<key>`; a missing key is reported with the keys that DO exist where it was expected."""
        node = self._demo(demo)
        walked = demo
        for part in key.strip("/").split("/"):
            child = self._child(node, part, f"data/{walked}/{part}") if isinstance(node, h5py.Group) else None
            if child is None:
                if isinstance(node, h5py.Group):
                    have = ", ".join(self._names(node, f"data/{walked}")) or "nothing"
                    hint = " (recorded without --enable_cameras?)" if part == "camera_obs" else ""
                    raise self.error(f"{demo}/{key}", f"missing; data/{walked} has: {have}{hint}")
                raise self.error(f"{demo}/{key}", f"missing; data/{walked} is a dataset, not a group")
            walked, node = f"{walked}/{part}", child
        if not isinstance(node, h5py.Dataset):
            raise self.error(f"{demo}/{key}", f"is a group ({', '.join(node.keys()) or 'empty'}), expected a dataset")
        return node

    def length(self, demo: str, action_key: str = DEFAULT_ACTION_KEY) -> int:
        """Number of recorded steps T of a demo (rows of its action dataset)."""
        shape = self.dataset(demo, action_key).shape
        if not shape:
            raise self.error(f"{demo}/{action_key}", "is a scalar, expected (T, D)")
        return int(shape[0])

    # -- validation ---------------------------------------------------------------------------

    def _float_matrix(self, demo: str, key: str, dims: int | None) -> h5py.Dataset:
        ds = self.dataset(demo, key)
        if ds.dtype not in FLOAT_DTYPES:
            raise self.error(f"{demo}/{key}", f"dtype {ds.dtype}, expected float32 (or float64)")
        if ds.ndim != 2 or (dims is not None and ds.shape[1] != dims):
            raise self.error(f"{demo}/{key}", f"shape {ds.shape}, expected (T, {dims if dims is not None else 'D'})")
        return ds

    def _read(self, ds: h5py.Dataset, demo: str, key: str, selection=()) -> np.ndarray:
        try:
            return ds[selection]
        except (OSError, ValueError, RuntimeError) as err:
            raise self.error(f"{demo}/{key}", f"unreadable ({' '.join(str(err).split())})") from None

    def _finite(self, values: np.ndarray, demo: str, key: str, dtype=np.float32) -> np.ndarray:
        values = values.astype(dtype, copy=False)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            kind = "NaN" if np.isnan(values[row, col]) else "inf"
            raise self.error(
                f"{demo}/{key}", f"{kind} at row {row}, column {col} ({int(bad.any(axis=1).sum())} bad rows)"
            )
        return values

    def check_camera(self, demo: str, camera: str, length: int | None = None) -> tuple[int, int, int]:
        """Shape check of one camera dataset without reading it; returns (T, H, W)."""
        key = camera_key(camera)
        ds = self.dataset(demo, key)
        if ds.dtype != np.uint8:
            raise self.error(f"{demo}/{key}", f"dtype {ds.dtype}, expected uint8")
        if ds.ndim != 4 or ds.shape[3] != 3:
            raise self.error(f"{demo}/{key}", f"shape {ds.shape}, expected (T, H, W, 3)")
        t, h, w = ds.shape[:3]
        if h % 2 or w % 2 or h == 0 or w == 0:
            raise self.error(f"{demo}/{key}", f"frame size {h}x{w}: H.264 yuv420p needs even, non-zero sizes")
        if length is not None and t != length:
            raise self.error(f"{demo}/{key}", f"{t} frames, but the action has {length} rows")
        return int(t), int(h), int(w)

    def check(
        self,
        state_key: str = DEFAULT_STATE_KEY,
        action_key: str = DEFAULT_ACTION_KEY,
        cameras: Iterable[str] = (DEFAULT_CAMERA,),
        state_dims: int | None = 54,
        action_dims: int | None = 36,
        demos: list[str] | None = None,
        extra: dict[str, int] | None = None,
    ) -> dict[str, int]:
        """Validate every demo, or those in `demos` (no image is read); return {demo: T} in numeric demo order.

        Checks: state/action present, float, (T, dims), finite; T >= 2 and equal across state,
        action, every camera and every `extra` dataset ({key: width}, checked like the state);
        cameras (T, H, W, 3) uint8 with even H, W; `num_samples` == T.
        """
        every = demos is None
        demos = self.demos if every else demos
        if not demos:
            raise PosttrainError(f"{self.name}: data: no demos (the file holds no demo_* groups)")
        cameras = list(cameras)
        lengths = {}
        for demo in demos:
            lengths[demo] = self.check_demo(demo, state_key, action_key, cameras, state_dims, action_dims, extra)
        total = self.data.attrs.get("total")
        if every and total is not None and int(total) != sum(lengths.values()):
            # Not fatal: merged or filtered files keep a stale total; nothing reads it.
            log.warning(
                "%s: data: attr total=%s but the demos hold %d samples", self.name, total, sum(lengths.values())
            )
        return lengths

    def check_demo(
        self,
        demo: str,
        state_key: str = DEFAULT_STATE_KEY,
        action_key: str = DEFAULT_ACTION_KEY,
        cameras: Iterable[str] = (DEFAULT_CAMERA,),
        state_dims: int | None = 54,
        action_dims: int | None = 36,
        extra: dict[str, int] | None = None,
    ) -> int:
        """Validate one demo (see `check`); return its length T."""
        action = self._float_matrix(demo, action_key, action_dims)
        state = self._float_matrix(demo, state_key, state_dims)
        length = action.shape[0]
        if length < 2:
            raise self.error(
                f"{demo}/{action_key}",
                f"{length} rows: a demo needs at least 2 recorded steps (one frame is dropped in conversion)",
            )
        if state.shape[0] != length:
            raise self.error(f"{demo}/{state_key}", f"{state.shape[0]} rows, but {action_key} has {length}")
        num_samples = self._demo(demo).attrs.get("num_samples")
        if num_samples is not None and int(num_samples) != length:
            raise self.error(demo, f"attr num_samples={int(num_samples)}, but {action_key} has {length} rows")
        for camera in cameras:
            self.check_camera(demo, camera, length)
        self._finite(self._read(action, demo, action_key), demo, action_key)
        self._finite(self._read(state, demo, state_key), demo, state_key)
        for key, width in (extra or {}).items():
            self.read_matrix(demo, key, width, length)
        return int(length)

    # -- reading ------------------------------------------------------------------------------

    def read_state_action(
        self, demo: str, state_key: str = DEFAULT_STATE_KEY, action_key: str = DEFAULT_ACTION_KEY
    ) -> tuple[np.ndarray, np.ndarray]:
        """(state (T, S), action (T, A)) as float32, checked for dtype, equal length and finite values."""
        state_ds = self._float_matrix(demo, state_key, None)
        action_ds = self._float_matrix(demo, action_key, None)
        if state_ds.shape[0] != action_ds.shape[0]:
            raise self.error(
                f"{demo}/{state_key}", f"{state_ds.shape[0]} rows, but {action_key} has {action_ds.shape[0]}"
            )
        state = self._finite(self._read(state_ds, demo, state_key), demo, state_key)
        action = self._finite(self._read(action_ds, demo, action_key), demo, action_key)
        return np.ascontiguousarray(state), np.ascontiguousarray(action)

    def read_matrix(self, demo: str, key: str, width: int, length: int | None = None) -> np.ndarray:
        """A (T, width) float dataset in its own dtype (float32 or float64: a float64 pose keeps its
        precision), checked for shape, `length` rows and finite values."""
        ds = self._float_matrix(demo, key, width)
        if length is not None and ds.shape[0] != length:
            raise self.error(f"{demo}/{key}", f"{ds.shape[0]} rows, but the action has {length}")
        return self._finite(self._read(ds, demo, key), demo, key, ds.dtype)

    def camera_shape(self, demo: str, camera: str) -> tuple[int, int, int, int]:
        """(T, H, W, 3) of a camera dataset, checked, without reading it."""
        t, h, w = self.check_camera(demo, camera)
        return t, h, w, 3

    def iter_camera_frames(
        self, demo: str, camera: str, start: int = 0, stop: int | None = None, batch: int = 32
    ) -> Iterator[np.ndarray]:
        """Yield frames [start, stop) as uint8 (n, H, W, 3) batches of about `batch` frames.

        Only one batch is in memory at a time, so a 512² episode of hundreds of frames never has to
        fit in memory whole. On the fast path a batch is a whole number of chunk rows, so that each
        stored chunk is inflated once (Isaac Lab's files have chunks of ~21 frames × 64² tiles).
        """
        key = camera_key(camera)
        t, _, _ = self.check_camera(demo, camera)
        stop = t if stop is None else stop
        if not 0 <= start <= stop <= t:
            raise self.error(f"{demo}/{key}", f"frame range [{start}, {stop}) outside [0, {t})")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        ds = self.dataset(demo, key)
        direct = is_plain_deflate(ds)
        if direct:  # whole chunk rows per batch: each stored chunk is inflated once
            rows = ds.chunks[0]
            batch = rows * max(1, round(batch / rows))
        for first in _batch_starts(start, stop, batch):
            last = min((first // batch + 1) * batch, stop)
            if direct:
                try:
                    yield read_deflate_chunks(ds, first, last)
                    continue
                except (OSError, ValueError, RuntimeError, isal_zlib.error):
                    direct = False  # e.g. a chunk never written: let h5py apply the fill value
            yield self._read(ds, demo, key, np.s_[first:last])

    def read_camera_frames(self, demo: str, camera: str, indices: Iterable[int]) -> np.ndarray:
        """The frames at `indices` (any order, repeats allowed) as uint8 (n, H, W, 3), one frame read at a time."""
        key = camera_key(camera)
        t, h, w = self.check_camera(demo, camera)
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < t]
        if bad:
            raise self.error(f"{demo}/{key}", f"frame index {bad[0]} outside [0, {t})")
        ds = self.dataset(demo, key)
        out = np.empty((len(indices), h, w, 3), np.uint8)
        for row, index in enumerate(indices):
            out[row] = self._read(ds, demo, key, index)
        return out


def _batch_starts(start: int, stop: int, batch: int) -> list[int]:
    """Batch starts aligned to multiples of `batch` (the first batch may be shorter)."""
    return [start, *range((start // batch + 1) * batch, stop, batch)] if start < stop else []


# --- fast frame reads ---------------------------------------------------------------------------
# Mimic files store camera frames with gzip (HDF5's deflate filter). At 512² inflating a frame
# with zlib costs ~1 ms, a third of what encoding it costs, so conversion reads the compressed
# chunks itself and inflates them with ISA-L (~4x faster, same zlib stream format). Any other
# filter pipeline (shuffle, checksums, ...) goes through h5py unchanged.


def is_plain_deflate(ds: h5py.Dataset) -> bool:
    """True when the dataset is chunked and its only filter is deflate (gzip)."""
    if ds.chunks is None:
        return False
    plist = ds.id.get_create_plist()
    return [plist.get_filter(i)[0] for i in range(plist.get_nfilters())] == [h5py.h5z.FILTER_DEFLATE]


def read_deflate_chunks(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """ds[start:stop] for a deflate-only chunked dataset, whatever its chunk shape.

    Each stored chunk is full-size (edge chunks included); the part inside the dataset and the
    requested rows is copied out.
    """
    shape, chunks = ds.shape, ds.chunks
    out = np.empty((stop - start, *shape[1:]), ds.dtype)
    first_chunk_row = start - start % chunks[0]
    grids = [range(0, n, c) for n, c in zip(shape[1:], chunks[1:])]
    for row in range(first_chunk_row, stop, chunks[0]):
        for offset in np.ndindex(*(len(g) for g in grids)):
            corner = tuple(g[i] for g, i in zip(grids, offset))
            filter_mask, raw = ds.id.read_direct_chunk((row, *corner))
            data = raw if filter_mask & 1 else isal_zlib.decompress(raw)  # bit 0 set: stored uncompressed
            chunk = np.frombuffer(data, ds.dtype).reshape(chunks)
            lo, hi = max(row, start), min(row + chunks[0], stop)
            inner = tuple(slice(c, min(c + size, n)) for c, size, n in zip(corner, chunks[1:], shape[1:]))
            out[(slice(lo - start, hi - start), *inner)] = chunk[
                (slice(lo - row, hi - row), *(slice(0, sl.stop - sl.start) for sl in inner))
            ]
    return out
