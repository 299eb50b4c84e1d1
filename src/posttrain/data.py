"""Training samples read straight from a LeRobot v2.1 dataset, GR00T style.

A sample is one (episode, start step i) pair (shared/docs/gr00t_n16.md §1): the camera images at
step i, the state at step i and the action chunk of rows i..i+H-1. There is no padding, so an
episode of length T gives T-H+1 samples and an episode shorter than H gives none.

Everything random about a sample (which sample, its colour jitter, whether its state is dropped,
its flow-matching noise and time) is a function of the run seed and the sample's global position
p = step * global_batch + j, never of the process or worker that builds it. That is what makes a
2-process run see the same samples as a 1-process run with the same global batch, and a resumed
run continue exactly where it stopped.

Camera frames come from one of two places, with bit-identical pixels:
- a frames directory (`posttrain frames`, `frames=DIR`): every frame decoded once at the model's
  resolution; a sample reads its S*S*3 bytes per camera through the page cache that all workers
  and processes share. The cost per sample and each worker's memory do not grow with the dataset.
  This is what the workflow uses.
- no frames directory (by hand, tests): videos are decoded a whole episode at a time at the
  model's resolution (ffmpeg scales while decoding) into a per-worker LRU cache bounded in bytes.
  Decoding costs per episode, so once the dataset outgrows the cache, random sampling decodes one
  episode per sample (measured: 4 samples/s at 512² sources); fine for small datasets only.
Both decode cameras of any shape the same way: the centre square, scaled to S (frames.decode_camera).
State, action and task come from the parquet files: with a frames directory all of them are read
once, in the main process, and shared by the forked workers (EpisodeTables); without, per episode
into the cache. The state and action vectors are the columns `posttrain.layout` names (for G1 the
eef pose and teleop columns beside observation.state and action), concatenated.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from posttrain.errors import PosttrainError
from posttrain.frames import FrameStore, decode_camera
from posttrain.layout import Layout, dataset_layouts, group_columns
from posttrain.lerobot import LeRobotDataset
from posttrain.policy import tokenize

log = logging.getLogger(__name__)

STAT_KEYS = ("mean", "std", "min", "max", "q01", "q99")


# --- dataset checks and split ------------------------------------------------------------------
def check_dataset(dataset: LeRobotDataset) -> None:
    """Fail early on a dataset the trainer cannot use: no stats, or stats/modality not matching the columns."""
    stats_path = dataset.root / "meta" / "stats.json"
    stats = dataset.stats  # raises a clear error when meta/stats.json is missing
    features = dataset.info["features"]
    for column in columns_read(dataset):
        if column not in features:
            raise PosttrainError(f"{dataset.root / 'meta' / 'info.json'}: features: no '{column}' column")
        width = features[column]["shape"][0]
        if column not in stats:
            raise PosttrainError(f"{stats_path}: no entry for '{column}'; rerun `posttrain stats`")
        for key in STAT_KEYS:
            values = stats[column].get(key)
            if values is None or np.shape(values) != (width,):
                raise PosttrainError(f"{stats_path}: {column}.{key}: shape {np.shape(values)}, expected ({width},)")
    dataset_layouts(dataset)  # every group inside its column, every column covered once
    for name, camera in camera_keys(dataset).items():
        if camera not in dataset.video_keys:
            raise PosttrainError(
                f"{dataset.root / 'meta' / 'modality.json'}: video.{name}: '{camera}' "
                f"is not a video feature of meta/info.json {dataset.video_keys}"
            )
    if not camera_keys(dataset):
        raise PosttrainError(
            f"{dataset.root / 'meta' / 'modality.json'}: no 'video' entries (the policy needs a camera)"
        )


def columns_read(dataset: LeRobotDataset) -> list[str]:
    """Every parquet column the policy's state and action vectors are made of (posttrain.layout)."""
    where = str(dataset.root / "meta" / "modality.json")
    return [c for kind in ("state", "action") for c in group_columns(dataset.modality, kind, where)]


def policy_dims(dataset: LeRobotDataset) -> dict[str, int]:
    """PolicyConfig's state_dim and action_dim for this dataset: the widths of its vector layouts."""
    state, action = dataset_layouts(dataset)
    return {"state_dim": state.width, "action_dim": action.width}


def camera_keys(dataset: LeRobotDataset) -> dict[str, str]:
    """modality.json video entries in order: view name -> LeRobot video key. The policy sees views in this order."""
    return {
        name: spec.get("original_key", f"observation.images.{name}")
        for name, spec in dataset.modality.get("video", {}).items()
    }


def split_episodes(dataset: LeRobotDataset, holdout_episodes: int) -> dict:
    """Hold out the last `holdout_episodes` episodes of each task (in episodes.jsonl order) for evaluation,
    so that a dataset gathered from several sources, one after the other, is evaluated on every task."""
    if holdout_episodes < 0:
        raise PosttrainError(f"--holdout-episodes must be >= 0, got {holdout_episodes}")
    by_task: dict[tuple, list[int]] = {}
    for row in dataset.episodes:
        by_task.setdefault(tuple(row.get("tasks") or ()), []).append(row["episode_index"])
    heldout = set()
    for task, episodes in by_task.items():
        if len(episodes) < holdout_episodes + 1:
            which = f"task {task[0]!r}: " if len(by_task) > 1 and task else ""
            raise PosttrainError(
                f"{dataset.root / 'meta' / 'episodes.jsonl'}: {which}{len(episodes)} episodes; "
                f"holding out {holdout_episodes} needs at least {holdout_episodes + 1}"
            )
        heldout.update(episodes[len(episodes) - holdout_episodes :])
    order = [row["episode_index"] for row in dataset.episodes]
    return {
        "train_episodes": [e for e in order if e not in heldout],
        "heldout_episodes": [e for e in order if e in heldout],
    }


# --- deterministic sample order ----------------------------------------------------------------
class StepSampler:
    """Batches of (sample index, sample seed) for this process, as a pure function of (seed, step).

    Global sample position p = step * global_batch + j walks through epochs; epoch e visits the
    samples in the order of a permutation seeded by (seed, e). Each optimizer step's global batch
    is split into `accumulation` micro-batches, each split across processes, so rank r of n sees
    micro-batch k's slice [(k*n + r)*b, (k*n + r + 1)*b) where b is the per-device batch.
    """

    def __init__(
        self,
        num_samples: int,
        per_device_batch: int,
        num_processes: int,
        process_index: int,
        accumulation: int,
        seed: int,
        start_step: int,
        max_steps: int,
    ):
        self.num_samples = num_samples
        self.per_device_batch = per_device_batch
        self.num_processes = num_processes
        self.process_index = process_index
        self.accumulation = accumulation
        self.seed = seed
        self.start_step = start_step
        self.max_steps = max_steps
        self.global_batch = per_device_batch * num_processes * accumulation
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            self._perm_epoch = epoch
        return self._perm

    def epoch_at(self, step: int) -> float:
        """Epochs completed (fractional) after `step` optimizer steps."""
        return step * self.global_batch / self.num_samples

    def micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        """This process's `accumulation` micro-batches of step `step`."""
        out = []
        for k in range(self.accumulation):
            first = step * self.global_batch + (k * self.num_processes + self.process_index) * self.per_device_batch
            batch = []
            for p in range(first, first + self.per_device_batch):
                index = int(self._permutation(p // self.num_samples)[p % self.num_samples])
                batch.append((index, p))
            out.append(batch)
        return out

    def __iter__(self):
        for step in range(self.start_step, self.max_steps):
            yield from self.micro_batches(step)

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accumulation


# --- colour jitter -----------------------------------------------------------------------------
def _gray(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


# YIQ: luma and two chroma axes; a hue turn is a rotation about the luma axis.
TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
FROM_YIQ = torch.linalg.inv(TO_YIQ)


def color_jitter(images: torch.Tensor, params: dict, rng: np.random.Generator) -> torch.Tensor:
    """Random brightness/contrast/saturation/hue of float (V, 3, H, W) images in [0, 1].

    One draw per sample, shared by all views (GR00T applies the same augmentation to every view).
    Factors follow torchvision's ColorJitter: brightness/contrast/saturation in [1-x, 1+x], hue shift
    in [-x, x] turns. Hue is rotated in YIQ space (a linear approximation of the HSV hue shift).
    After the first operation (which leaves `images` as it is) every step works in place: at 224²
    this halves the cost of the loader's most expensive step; the arithmetic is the same.
    """
    brightness = rng.uniform(1 - params.get("brightness", 0.0), 1 + params.get("brightness", 0.0))
    contrast = rng.uniform(1 - params.get("contrast", 0.0), 1 + params.get("contrast", 0.0))
    saturation = rng.uniform(1 - params.get("saturation", 0.0), 1 + params.get("saturation", 0.0))
    hue = rng.uniform(-params.get("hue", 0.0), params.get("hue", 0.0))
    out = (images * brightness).clamp_(0, 1)
    mean = _gray(out).mean(dim=(-3, -2, -1), keepdim=True)
    out.sub_(mean).mul_(contrast).add_(mean).clamp_(0, 1)  # mean + contrast * (out - mean)
    gray = _gray(out)
    out.sub_(gray).mul_(saturation).add_(gray).clamp_(0, 1)  # gray + saturation * (out - gray)
    if hue:
        angle = 2 * math.pi * hue
        cos, sin = math.cos(angle), math.sin(angle)
        rotate = torch.tensor([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
        matrix = FROM_YIQ @ rotate @ TO_YIQ
        out = torch.einsum("ij,...jhw->...ihw", matrix.to(out.dtype), out).clamp_(0, 1)
    return out


# --- the dataset -------------------------------------------------------------------------------
@dataclass
class EpisodeTable:
    state: np.ndarray  # (T, S) float32
    action: np.ndarray  # (T, A) float32
    task_index: int


def read_episode_table(dataset: LeRobotDataset, episode_index: int, layouts: tuple[Layout, Layout]) -> EpisodeTable:
    """State and action vectors (the columns of `layouts`, concatenated) and the task of one episode."""
    state, action = layouts
    names = list(dict.fromkeys(state.column_names + action.column_names + ["task_index"]))
    columns = dataset.read_episode(episode_index, names)
    rows = len(columns["task_index"])
    length = next(row["length"] for row in dataset.episodes if row["episode_index"] == episode_index)
    if rows != length:  # samples were indexed from episodes.jsonl lengths
        raise PosttrainError(
            f"{dataset.parquet_path(episode_index)}: episode {episode_index}: {rows} rows, "
            f"meta/episodes.jsonl says length {length}"
        )
    return EpisodeTable(state.concat(columns), action.concat(columns), int(columns["task_index"][0]))


@dataclass
class EpisodeArrays:
    table: EpisodeTable
    frames: list[np.ndarray]  # per view: (T, size, size, 3) uint8

    @property
    def nbytes(self) -> int:
        return self.table.state.nbytes + self.table.action.nbytes + sum(f.nbytes for f in self.frames)


class EpisodeTables:
    """State and action of the given episodes, read once (in the main process) into two arrays.

    With a frames directory these are all a worker needs besides the images: forked DataLoader
    workers share the arrays' pages instead of each reading and holding its own copy (~70 KB per
    GR1 episode of 330 steps).
    """

    def __init__(self, dataset: LeRobotDataset, episodes: list[int], layouts: tuple[Layout, Layout]):
        with ThreadPoolExecutor(8) as pool:  # pyarrow reads release the GIL
            tables = list(pool.map(lambda e: read_episode_table(dataset, e, layouts), episodes))
        self.state = np.concatenate([t.state for t in tables])
        self.action = np.concatenate([t.action for t in tables])
        lengths = np.cumsum([0] + [len(t.state) for t in tables])
        self._rows = {
            e: (int(lengths[k]), int(lengths[k + 1]), t.task_index) for k, (e, t) in enumerate(zip(episodes, tables))
        }

    def get(self, episode_index: int) -> EpisodeTable:
        first, end, task_index = self._rows[episode_index]
        return EpisodeTable(self.state[first:end], self.action[first:end], task_index)


class EpisodeCache:
    """Decoded episodes of this process (each DataLoader worker has its own), least recently used evicted."""

    def __init__(
        self,
        dataset: LeRobotDataset,
        cameras: list[str],
        image_size: int,
        cache_bytes: int,
        layouts: tuple[Layout, Layout],
    ):
        self.dataset, self.cameras, self.image_size, self.cache_bytes = dataset, cameras, image_size, cache_bytes
        self.layouts = layouts
        self._episodes: OrderedDict[int, EpisodeArrays] = OrderedDict()

    def get(self, episode_index: int) -> EpisodeArrays:
        if episode_index in self._episodes:
            self._episodes.move_to_end(episode_index)
            return self._episodes[episode_index]
        episode = self._load(episode_index)
        self._episodes[episode_index] = episode
        while len(self._episodes) > 1 and sum(e.nbytes for e in self._episodes.values()) > self.cache_bytes:
            self._episodes.popitem(last=False)
        return episode

    def _load(self, episode_index: int) -> EpisodeArrays:
        table = read_episode_table(self.dataset, episode_index, self.layouts)
        rows = len(table.state)
        frames = []
        for camera in self.cameras:
            video = decode_camera(self.dataset, episode_index, camera, self.image_size)
            if len(video) != rows:
                raise PosttrainError(
                    f"{self.dataset.video_path(episode_index, camera)}: episode {episode_index}: "
                    f"{len(video)} video frames, expected {rows} (parquet rows)"
                )
            frames.append(video)
        return EpisodeArrays(table, frames)


class TrainingSamples(torch.utils.data.Dataset):
    """(episode, start step) samples of the given episodes, built into model-ready tensors.

    Indexed by (sample index, sample seed) pairs from `StepSampler`; the seed drives this sample's
    colour jitter and flow-matching noise. `normalizer` is `posttrain.policy.Normalizer`. With
    `frames` (a `posttrain frames` directory of this dataset at the policy's image size) images
    are read from it; without, videos are decoded into a per-worker cache of `cache_bytes`.
    """

    def __init__(
        self,
        dataset: LeRobotDataset,
        episodes: list[int],
        normalizer,
        *,
        color_jitter_params: dict | None = None,
        state_dropout_prob: float = 0.0,
        seed: int = 0,
        cache_bytes: int = 2 << 30,
        frames: str | Path | None = None,
    ):
        config = normalizer.config  # PolicyConfig: image size, horizon, widths, text length
        if state_dropout_prob and config.state_encoding != "sincos":
            raise PosttrainError(
                f"--state-dropout-prob needs the sincos state encoding (a dropped state is all "
                f"zeros, which no sin/cos pair encodes); the policy uses {config.state_encoding!r}"
            )
        self.state_dropout_prob = state_dropout_prob
        self.dataset = dataset
        self.normalizer = normalizer
        self.image_size = config.image_size
        self.horizon = action_horizon = config.action_horizon
        self.action_dim = config.action_dim
        self.jitter = dict(color_jitter_params or {})
        self.seed = seed
        self.cameras = list(camera_keys(dataset).values())
        self.cache_bytes = cache_bytes
        self._cache: EpisodeCache | None = None  # created lazily inside each worker process
        # Checked here, in the main process: a stale or mismatched frames directory fails before training.
        self.frames = None if frames is None else FrameStore(frames, dataset, self.image_size, self.cameras)
        # The columns the normalizer was built for (checkpoint stats + modality) are the ones read.
        self.layouts = (normalizer.state_layout, normalizer.action_layout)
        self.tables = None if frames is None else EpisodeTables(dataset, episodes, self.layouts)

        lengths = {row["episode_index"]: row["length"] for row in dataset.episodes}
        # (episode, start) rows as one array, not a list of tuples: forked workers would copy the
        # pages of the tuples they touch (reference counts), ~0.4 KB per sample each.
        self.samples = np.array(
            [(ep, start) for ep in episodes for start in range(lengths[ep] - action_horizon + 1)], dtype=np.int64
        ).reshape(-1, 2)
        if not len(self.samples):
            raise PosttrainError(
                f"{dataset.root}: no training samples: every one of episodes {episodes} is shorter "
                f"than the action horizon {action_horizon} (GR00T does not pad)"
            )
        # Token ids of each task text, computed once (tasks are few, samples are many).
        texts = [dataset.task_text(i) for i in sorted(dataset.tasks)]
        tokens = tokenize(texts, config.text_max_length, config.text_vocab_size)
        self.tokens = {i: torch.as_tensor(tokens[n], dtype=torch.long) for n, i in enumerate(sorted(dataset.tasks))}

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, episode_index: int, start: int) -> tuple[EpisodeTable, np.ndarray]:
        """The episode's table and the (V, S, S, 3) uint8 images at step `start`."""
        if self.frames is not None:
            return self.tables.get(episode_index), self.frames.images(episode_index, start)
        if self._cache is None:
            self._cache = EpisodeCache(self.dataset, self.cameras, self.image_size, self.cache_bytes, self.layouts)
        episode = self._cache.get(episode_index)
        return episode.table, np.stack([f[start] for f in episode.frames])

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        index, sample_seed = key if isinstance(key, tuple) else (key, key)
        episode_index, start = (int(x) for x in self.samples[index])
        table, pixels = self._read(episode_index, start)
        rng = np.random.default_rng([self.seed, sample_seed])

        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255)
        if self.jitter:
            images = color_jitter(images, self.jitter, rng)
        state = self.normalizer.encode_state(table.state[start : start + 1])[0]
        if self.state_dropout_prob and rng.random() < self.state_dropout_prob:
            # GR00T's state dropout: without the state the policy must read the target from the
            # image (the state alone predicts most steps, a shortcut that leaves vision unused).
            state = np.zeros_like(state)
        action = self.normalizer.normalize_action(table.action[start : start + self.horizon])
        # Flow-matching noise and time drawn here, from the sample's own seed, so that they do not
        # depend on how samples are spread over processes (see module docstring).
        # GR00T's flow time t = 0.999 (1 - u), u ~ Beta(1.5, 1).
        noise = rng.standard_normal((self.horizon, self.action_dim)).astype(np.float32)
        time = np.float32(0.999 * (1.0 - rng.beta(1.5, 1.0)))
        return {
            "images": images,
            "state": torch.as_tensor(state, dtype=torch.float32),
            "action": torch.as_tensor(action, dtype=torch.float32),
            "tokens": self.tokens[table.task_index],
            "noise": torch.from_numpy(noise),
            "time": torch.tensor(time),
        }
