"""`posttrain synth`: a synthetic GR1 dataset in the exact Isaac Lab Mimic HDF5 schema.

The task is a reach that NEEDS VISION. Each episode draws a target position (u, v) in the image
(a soft red disc); the target is not in the state. The right-arm joint targets (`processed_actions`)
are a smooth function of (u, v) (`right_arm_targets`), reached from the rest pose along a
minimum-jerk ramp. Once or twice mid-episode (in every demo of 30 steps or more) the target jumps
to a new random place, at least MIN_JUMP away; only the image tells where, so the policy has to
look throughout the episode, not only at the start.
Near the end the hands close (a smooth ramp), so the hand joints vary too. The grasp is announced
in the image only: the target turns from red to green over the GRASP_CUE steps before the hands
start closing, so when to grasp is learnable, but not from the state. The left arm mirrors a
small part of the right arm's motion.

Dynamics: the state follows the commanded targets with a first-order lag,
`state[t+1] = state[t] + LAG * (action[t] - state[t])`, state[0] = action[0] = the rest pose.
As in Isaac Lab, state and camera are recorded before the step and `processed_actions` after it,
so frame t shows the target active at step t and the arm as it is in state[t] (a grey soft blob,
the hand, that enters from the bottom of the image).

Index encoding (to catch a wrong remap): every column c of `obs/robot_joint_pos` and of
`processed_actions` carries a constant offset `INDEX_OFFSET * c` (1e-3 * c). At frame 0 the robot is
at rest, so `state[0] == REST_STATE + INDEX_OFFSET * arange(54)` and
`processed_actions[0] == REST_ACTION + INDEX_OFFSET * arange(36)` (REST_ACTION: the rest pose with
the thumbs commanded up): a policy vector remapped from row 0
tells which sim column each joint came from. Joints the policy does not use (legs, waist, head) hold
a small constant pose; the mimic finger joints follow their proximal joints, as in the sim.

Images are smooth (background gradient, soft-edged blobs) so that H.264 yuv420p at CRF 18 keeps
them above 35 dB PSNR, the threshold `posttrain verify` checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from posttrain.embodiment import load_embodiment
from posttrain.errors import PosttrainError
from posttrain.files import atomic_file

log = logging.getLogger(__name__)

ENV_NAME = "Isaac-GR1T2-Synthetic-Reach-v0"
CAMERA = "robot_pov_cam_rgb"
INDEX_OFFSET = 1e-3
LAG = 0.25            # fraction of the remaining distance the joints cover per step
ARM_RAMP = 10         # steps of a minimum-jerk move to a new target
HAND_RAMP = 10        # steps to close the hands
MIN_JUMP = 0.3        # a jump moves the target at least this far (image fraction)
GRASP_CUE = 16        # steps over which the target turns green before the hands close
WRITE_BATCH = 32      # frames rendered and written at a time

_SIDES = ("left", "right")
_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow_pitch", "wrist_yaw", "wrist_roll", "wrist_pitch")
_FINGERS = ("index", "middle", "ring", "pinky")

# Rest pose, by joint name (everything not listed is 0): elbows bent 90°, as in the golden episode's
# first frame; a slight stance for the legs and the head tilted down to the table.
REST_POSE = {
    "left_elbow_pitch_joint": -1.5708, "right_elbow_pitch_joint": -1.5708,
    "left_hip_pitch_joint": -0.04, "right_hip_pitch_joint": -0.04,
    "left_knee_pitch_joint": 0.08, "right_knee_pitch_joint": 0.08,
    "left_ankle_pitch_joint": -0.04, "right_ankle_pitch_joint": -0.04,
    "left_hip_roll_joint": 0.01, "right_hip_roll_joint": -0.01,
    "waist_pitch_joint": 0.02, "head_pitch_joint": 0.12,
}

_GR1 = load_embodiment("gr1")
STATE_COLUMNS: dict[str, int] = _GR1.state_joints
ACTION_COLUMNS: dict[str, int] = _GR1.action_joints
HAND_JOINTS = [n for n, _ in sorted(ACTION_COLUMNS.items(), key=lambda kv: kv[1]) if n[:2] in ("L_", "R_")]


def _vector(values: dict[str, float], columns: dict[str, int]) -> np.ndarray:
    out = np.zeros(len(columns), np.float64)
    for name, column in columns.items():
        out[column] = values.get(name, 0.0)
    return out


# The thumbs are commanded up from the first step, as in the golden episode's actions (its state
# starts at 0 and follows).
THUMB_PRESHAPE = {"R_thumb_proximal_pitch_joint": 0.9, "L_thumb_proximal_pitch_joint": 0.85}
THUMB_DISTAL_RATIO = 0.8  # the distal thumb joint mimics the proximal pitch
REST_STATE = _vector(REST_POSE, STATE_COLUMNS).astype(np.float32)          # state[0], offsets aside
REST_ACTION = _vector({**REST_POSE, **THUMB_PRESHAPE,
                       **{f"{k[0]}_thumb_distal_joint": THUMB_DISTAL_RATIO * v for k, v in THUMB_PRESHAPE.items()}},
                      ACTION_COLUMNS).astype(np.float32)                    # processed_actions[0], offsets aside


def min_jerk(x: np.ndarray) -> np.ndarray:
    """0 -> 1 with zero velocity and acceleration at both ends."""
    x = np.clip(x, 0.0, 1.0)
    return x**3 * (10 - 15 * x + 6 * x**2)


def right_arm_targets(u: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Right-arm joint targets for a target at image position (u right, v down, both 0..1).

    Smooth and invertible in (u, v) through the shoulder roll and pitch; values stay in the
    ranges of the golden GR1 episode.
    """
    return {
        "right_shoulder_pitch_joint": -0.95 + 0.75 * v,
        "right_shoulder_roll_joint": -0.2 + 0.45 * u,
        "right_shoulder_yaw_joint": -0.4 + 0.5 * u - 0.2 * v,
        "right_elbow_pitch_joint": -1.65 + 0.9 * (1 - v) * (0.5 + 0.5 * u),
        "right_wrist_yaw_joint": 0.1 + 0.3 * (v - 0.5),
        "right_wrist_roll_joint": 0.25 + 0.3 * u,
        "right_wrist_pitch_joint": -0.3 + 0.25 * (u - v),
    }


def hand_position_in_image(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the right hand appears in the image for sim states (T, 54): the inverse of
    `right_arm_targets` on the shoulder pitch/roll (the rest pose lies below the image)."""
    pitch = state[:, STATE_COLUMNS["right_shoulder_pitch_joint"]] - INDEX_OFFSET * STATE_COLUMNS[
        "right_shoulder_pitch_joint"]
    roll = state[:, STATE_COLUMNS["right_shoulder_roll_joint"]] - INDEX_OFFSET * STATE_COLUMNS[
        "right_shoulder_roll_joint"]
    return (roll + 0.2) / 0.45, (pitch + 0.95) / 0.75


@dataclass
class SynthEpisode:
    """One generated demo; `targets[t]` is the (u, v) target shown in frame t and used for action t."""

    length: int
    image_size: int
    targets: np.ndarray            # (T, 2) float64, image fractions
    jump_steps: list[int]          # steps at which the target moved
    grasp_start: int               # step the hands start closing
    state: np.ndarray              # (T, 54) float32  obs/robot_joint_pos
    processed_actions: np.ndarray  # (T, 36) float32
    actions: np.ndarray            # (T, 36) float32  raw env action: eef poses (7+7) + 22 hand joints
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # other float32 policy observations

    def render(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Camera frames [start, stop) as uint8 (n, S, S, 3)."""
        stop = self.length if stop is None else stop
        cue = np.clip((np.arange(start, stop) - (self.grasp_start - GRASP_CUE)) / GRASP_CUE, 0.0, 1.0)
        return render_frames(self.targets[start:stop], self.state[start:stop], self.image_size, cue)


def _timeline(rng: np.random.Generator, length: int) -> tuple[list[int], int]:
    """Steps where the target jumps (0-2 of them, 1-2 whenever the episode has room) and the grasp start."""
    grasp_start = length - max(min(8, length // 3), int(round(length * rng.uniform(0.18, 0.25))))
    lo, hi = max(ARM_RAMP + 2, int(0.2 * length)), grasp_start - ARM_RAMP
    spacing = ARM_RAMP + 2
    if hi < lo:
        return [], grasp_start
    if rng.random() < 0.5 or hi - lo < spacing:
        return [int(rng.integers(lo, hi + 1))], grasp_start
    first = int(rng.integers(lo, hi - spacing + 1))
    return [first, int(rng.integers(first + spacing, hi + 1))], grasp_start


def _draw_target(rng: np.random.Generator, previous: np.ndarray | None) -> np.ndarray:
    for _ in range(1000):
        target = rng.uniform(0.2, 0.8, size=2)
        if previous is None or np.linalg.norm(target - previous) >= MIN_JUMP:
            return target
    raise AssertionError("no target far enough from the previous one")  # cannot happen in [0.2, 0.8]²


def make_episode(seed: int, index: int, min_frames: int, max_frames: int, image_size: int) -> SynthEpisode:
    """Demo `index` of the file generated with `seed` (each demo has its own generator: [seed, index])."""
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(min_frames, max_frames + 1))
    jumps, grasp_start = _timeline(rng, length)
    steps = np.arange(length)

    goals = [_draw_target(rng, None)]
    for _ in jumps:
        goals.append(_draw_target(rng, goals[-1]))
    starts = [0, *jumps]
    segment = np.searchsorted(np.array(starts), steps, side="right") - 1
    targets = np.array(goals)[segment]

    # Commanded right arm: ramps from the previous goal (or rest) to the current one.
    rest_right = {n: REST_POSE.get(n, 0.0) for n in right_arm_targets(np.zeros(1), np.zeros(1))}
    goal_joints = [right_arm_targets(np.float64(u), np.float64(v)) for u, v in goals]
    command: dict[str, np.ndarray] = {}
    for name, rest in rest_right.items():
        values = np.empty(length)
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else length
            before = rest if k == 0 else goal_joints[k - 1][name]
            ramp = min_jerk((steps[start:end] - start) / ARM_RAMP)
            values[start:end] = before + (goal_joints[k][name] - before) * ramp
        command[name] = values

    # Left arm: a damped echo of the right arm's motion; the signs keep it in the golden episode's ranges.
    for joint in _ARM:
        right = command[f"right_{joint}_joint"] - rest_right[f"right_{joint}_joint"]
        sign = -1.0 if joint.startswith(("shoulder", "elbow")) else 1.0
        command[f"left_{joint}_joint"] = REST_POSE.get(f"left_{joint}_joint", 0.0) + 0.15 * sign * right

    # Hands: thumbs up from the start, fingers close from grasp_start (the left hand only a little).
    close = min_jerk((steps - grasp_start) / HAND_RAMP)
    for side, scale in (("R", 1.0), ("L", 0.15)):
        for finger, amount in zip(_FINGERS, (-0.5, -0.55, -0.5, -0.6)):
            command[f"{side}_{finger}_proximal_joint"] = scale * amount * close
            command[f"{side}_{finger}_intermediate_joint"] = scale * amount * close  # mimic joint, ratio 1
        command[f"{side}_thumb_proximal_yaw_joint"] = scale * -0.15 * close
        command[f"{side}_thumb_proximal_pitch_joint"] = THUMB_PRESHAPE[f"{side}_thumb_proximal_pitch_joint"] \
            + scale * 0.15 * close
        command[f"{side}_thumb_distal_joint"] = THUMB_DISTAL_RATIO * command[f"{side}_thumb_proximal_pitch_joint"]

    action = np.tile(REST_ACTION.astype(np.float64), (length, 1))
    for name, values in command.items():
        action[:, ACTION_COLUMNS[name]] = values
    # First-order lag on every commanded joint; joints without a command (legs, waist, head) stay put.
    state = np.tile(REST_STATE.astype(np.float64), (length, 1))
    commanded = np.array([STATE_COLUMNS[n] for n in ACTION_COLUMNS])
    from_action = np.array([ACTION_COLUMNS[n] for n in ACTION_COLUMNS])
    for t in range(1, length):
        previous = state[t - 1, commanded]
        state[t, commanded] = previous + LAG * (action[t - 1, from_action] - previous)

    state += INDEX_OFFSET * np.arange(state.shape[1])
    action += INDEX_OFFSET * np.arange(action.shape[1])
    state, action = state.astype(np.float32), action.astype(np.float32)

    obs = _observations(state)
    return SynthEpisode(length=length, image_size=image_size, targets=targets, jump_steps=list(jumps),
                        grasp_start=grasp_start, state=state, processed_actions=action,
                        actions=_raw_actions(targets, action), obs=obs)


def _eef(u: np.ndarray, v: np.ndarray, side: str) -> np.ndarray:
    """A plausible end-effector position (robot base frame, metres) for an image position."""
    y = -0.25 + 0.3 * u if side == "right" else 0.25 - 0.05 * u
    return np.stack([0.25 + 0.15 * (1 - v), y, 0.05 + 0.1 * (1 - v)], axis=1)


def _quat(n: int, tilt: float) -> np.ndarray:
    """(n, 4) unit quaternions, wxyz as Isaac Lab writes them."""
    q = np.tile([np.cos(tilt / 2), 0.0, np.sin(tilt / 2), 0.0], (n, 1))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _raw_actions(targets: np.ndarray, action: np.ndarray) -> np.ndarray:
    """gr1_pink-style raw action: left eef pos+quat, right eef pos+quat (IK targets), 22 hand joints."""
    n = len(targets)
    right = _eef(targets[:, 0], targets[:, 1], "right")
    left = _eef(np.full(n, 0.5), np.full(n, 1.0), "left")
    hands = action[:, [ACTION_COLUMNS[j] for j in HAND_JOINTS]]
    return np.concatenate([left, _quat(n, 0.2), right, _quat(n, 0.4), hands], axis=1).astype(np.float32)


def _observations(state: np.ndarray) -> dict[str, np.ndarray]:
    """A few more of the `obs/` datasets the GR1 policy observation group records."""
    n = len(state)
    u, v = hand_position_in_image(state)
    return {
        "right_eef_pos": _eef(u, v, "right").astype(np.float32),
        "right_eef_quat": _quat(n, 0.4).astype(np.float32),
        "left_eef_pos": _eef(np.full(n, 0.5), np.full(n, 1.0), "left").astype(np.float32),
        "left_eef_quat": _quat(n, 0.2).astype(np.float32),
        "hand_joint_state": state[:, [STATE_COLUMNS[j] for j in HAND_JOINTS]],
        "head_joint_state": state[:, [STATE_COLUMNS[f"head_{a}_joint"] for a in ("roll", "pitch", "yaw")]],
        "robot_root_pos": np.zeros((n, 3), np.float32),
        "robot_root_rot": _quat(n, 0.0).astype(np.float32),
    }


def _soft_disc(xx, yy, cx, cy, radius, edge):
    """Coverage 0..1 of a disc with a smooth (smoothstep) edge `edge` wide (all in image fractions)."""
    d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    x = np.clip((radius + edge / 2 - d) / edge, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def render_frames(targets: np.ndarray, state: np.ndarray, size: int, grasp_cue: np.ndarray) -> np.ndarray:
    """Frames for targets (n, 2), states (n, 54) and grasp cues (n,) in 0..1: table gradient, a
    target that turns from red to green as the cue rises, grey hand blob."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    top, bottom = np.array([150, 165, 180], np.float32), np.array([105, 92, 80], np.float32)
    background = top + (bottom - top) * yy[..., None] + 12 * (xx[..., None] - 0.5)
    red, green = np.array([195, 60, 50], np.float32), np.array([50, 190, 60], np.float32)
    grey = np.array([55, 58, 66], np.float32)
    edge = max(3.0, 0.07 * size) / size  # soft edges survive 4:2:0 chroma subsampling
    hand_u, hand_v = hand_position_in_image(state)
    closing = np.clip(-(state[:, STATE_COLUMNS["R_index_proximal_joint"]]
                        - INDEX_OFFSET * STATE_COLUMNS["R_index_proximal_joint"]) / 0.6, 0, 1)
    frames = np.empty((len(targets), size, size, 3), np.uint8)
    for i, (u, v) in enumerate(targets):
        image = background.copy()
        alpha = _soft_disc(xx, yy, u, v, 0.09, edge)[..., None]
        image += (red + (green - red) * grasp_cue[i] - image) * alpha
        hand = 0.55 * _soft_disc(xx, yy, hand_u[i], hand_v[i], 0.07 * (1 - 0.3 * closing[i]), 2 * edge)[..., None]
        image += (grey - image) * hand
        frames[i] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_demo(group: h5py.Group, episode: SynthEpisode, seed: int) -> None:
    """One demo group in the Mimic layout, every dataset gzip-compressed."""
    def dataset(name, values):
        group.create_dataset(name, data=values, compression="gzip")

    t, size = episode.length, episode.image_size
    group.attrs["num_samples"] = t
    group.attrs["seed"] = seed
    group.attrs["success"] = True
    dataset("actions", episode.actions)
    dataset("processed_actions", episode.processed_actions)
    dataset("obs/robot_joint_pos", episode.state)
    last_action = np.concatenate([np.zeros_like(episode.actions[:1]), episode.actions[:-1]])
    dataset("obs/actions", last_action)
    for key, values in episode.obs.items():
        dataset(f"obs/{key}", values)
    # h5py's own chunk guess, as Isaac Lab's `create_dataset(data=..., compression="gzip")` gets it
    # (e.g. (21, 64, 64, 1) at 330 × 512²): readers and benchmarks see the layout of real files.
    frames = group.create_dataset(f"camera_obs/{CAMERA}", shape=(t, size, size, 3), dtype=np.uint8,
                                  chunks=True, compression="gzip")
    for start in range(0, t, WRITE_BATCH):
        stop = min(start + WRITE_BATCH, t)
        frames[start:stop] = episode.render(start, stop)


def write_synthetic(path: str | os.PathLike, episodes: int = 12, min_frames: int = 60, max_frames: int = 100,
                    image_size: int = 128, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic Mimic HDF5 to `path` (via a temporary file renamed at the end)."""
    path = Path(path)
    if episodes < 1:
        raise PosttrainError(f"{path}: --episodes must be >= 1, got {episodes}")
    if not 2 <= min_frames <= max_frames:
        raise PosttrainError(f"{path}: need 2 <= --min-frames <= --max-frames, got {min_frames}, {max_frames}")
    if image_size < 16 or image_size % 2:
        raise PosttrainError(f"{path}: --image-size must be even and >= 16, got {image_size}")
    total = 0
    try:
        with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps({"env_name": ENV_NAME, "type": 2})
            for i in tqdm(range(episodes), desc="synth", unit="demo", disable=not progress):
                episode = make_episode(seed, i, min_frames, max_frames, image_size)
                write_demo(data.create_group(f"demo_{i}"), episode, seed)
                total += episode.length
            data.attrs["total"] = total
    except OSError as err:
        raise PosttrainError(f"{path}: cannot write ({' '.join(str(err).split())})") from None
    log.info("%s: %d demos, %d steps, %dx%d images", path, episodes, total, image_size, image_size)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="HDF5 file to write")
    parser.add_argument("--episodes", type=int, default=12, help="number of demos (default 12)")
    parser.add_argument("--min-frames", type=int, default=60, help="shortest demo, in steps (default 60)")
    parser.add_argument("--max-frames", type=int, default=100, help="longest demo, in steps (default 100)")
    parser.add_argument("--image-size", type=int, default=128, help="square camera size in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the output is a function of it")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_synthetic(args.output, args.episodes, args.min_frames, args.max_frames, args.image_size, args.seed)
    return 0
