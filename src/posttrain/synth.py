"""`posttrain synth`: a synthetic GR1 (or G1) dataset in the exact Isaac Lab Mimic HDF5 schema.

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
them above 35 dB PSNR, the threshold `posttrain verify` checks. They may be non-square (`--image-size
HxW`): u runs across the width, v down the height, and discs stay round.

`--embodiment g1` writes the Unitree G1 loco-manipulation schema instead (config/embodiments/g1/):
43-joint `obs/robot_joint_pos` and `processed_actions` (one sim order for both), `obs/` and
`action/` end-effector poses (`left_eef_pos` (T, 3), `left_eef_quat` (T, 4, wxyz), same for right),
the teleop commands `action/base_height_cmd` (T, 1), `action/navigate_cmd` (T, 3: vx, vy, yaw rate)
and `action/torso_orientation_rpy_cmd` (T, 3), and the camera `camera_obs/robot_head_cam_rgb`,
480 x 640 by default. The task is the same reach that needs vision (targets, jumps, grasp cue), with
G1 joints; besides the arm, the commands depend on the target too: the robot steps towards each new
target (a velocity bell in `navigate_cmd`), turns its torso to it (`torso_orientation_rpy_cmd`,
followed by the waist joints) and squats while it grasps, the lower the target the deeper
(`base_height_cmd`, followed by hips, knees and ankles). The raw `actions` (T, 35: both hands'
joints, the commanded eef poses, the teleop commands) is a plausible layout; no converter reads it.

`--motion smooth` (GR1) writes smooth, state-predictable joint motion instead, where holding the
current state is a strong baseline (see "smooth motion" below).

`--task reach_left` (GR1 reach) is a second task for multi-task datasets: the LEFT hand reaches for
the target (the mirror image of the right arm's joint targets, `arm_targets`), the right arm only
echoes it, the left hand grasps, and the camera shows the left hand. For a seed, the plan (targets,
jumps, grasp) is that of the default `reach_right`, and every demo starts at the same rest pose with
the hand below the image: from the first frames only the instruction tells which hand should move.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from posttrain.embodiment import load_embodiment
from posttrain.errors import PosttrainError
from posttrain.files import atomic_file
from posttrain.settings import SynthSettings, add_options

log = logging.getLogger(__name__)

ENV_NAME = "Isaac-GR1T2-Synthetic-Reach-v0"
CAMERA = "robot_pov_cam_rgb"
INDEX_OFFSET = 1e-3
LAG = 0.25  # fraction of the remaining distance the joints cover per step
ARM_RAMP = 10  # steps of a minimum-jerk move to a new target
HAND_RAMP = 10  # steps to close the hands
MIN_JUMP = 0.3  # a jump moves the target at least this far (image fraction)
GRASP_CUE = 16  # steps over which the target turns green before the hands close
WRITE_BATCH = 32  # frames rendered and written at a time

_SIDES = ("left", "right")
_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow_pitch", "wrist_yaw", "wrist_roll", "wrist_pitch")
_FINGERS = ("index", "middle", "ring", "pinky")

# Rest pose, by joint name (everything not listed is 0): elbows bent 90°, as in the golden episode's
# first frame; a slight stance for the legs and the head tilted down to the table.
REST_POSE = {
    "left_elbow_pitch_joint": -1.5708,
    "right_elbow_pitch_joint": -1.5708,
    "left_hip_pitch_joint": -0.04,
    "right_hip_pitch_joint": -0.04,
    "left_knee_pitch_joint": 0.08,
    "right_knee_pitch_joint": 0.08,
    "left_ankle_pitch_joint": -0.04,
    "right_ankle_pitch_joint": -0.04,
    "left_hip_roll_joint": 0.01,
    "right_hip_roll_joint": -0.01,
    "waist_pitch_joint": 0.02,
    "head_pitch_joint": 0.12,
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
REST_STATE = _vector(REST_POSE, STATE_COLUMNS).astype(np.float32)  # state[0], offsets aside
REST_ACTION = _vector(
    {
        **REST_POSE,
        **THUMB_PRESHAPE,
        **{f"{k[0]}_thumb_distal_joint": THUMB_DISTAL_RATIO * v for k, v in THUMB_PRESHAPE.items()},
    },
    ACTION_COLUMNS,
).astype(np.float32)  # processed_actions[0], offsets aside


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


MIRRORED = ("shoulder_roll", "shoulder_yaw", "wrist_yaw", "wrist_roll")  # opposite signs on the left arm


def arm_targets(u: np.ndarray, v: np.ndarray, side: str) -> dict[str, np.ndarray]:
    """Joint targets of the `side` arm for a target at image position (u, v). The left arm's are the
    mirror image of the right arm's for the target mirrored across the image (u -> 1 - u; roll and
    yaw joints negated), so that either hand ends up at (u, v) in the image."""
    if side == "right":
        return right_arm_targets(u, v)
    mirrored = right_arm_targets(1 - u, v)
    return {
        name.replace("right_", "left_", 1): -value if name.startswith(tuple(f"right_{j}" for j in MIRRORED)) else value
        for name, value in mirrored.items()
    }


def hand_position_in_image(state: np.ndarray, side: str = "right") -> tuple[np.ndarray, np.ndarray]:
    """Where the `side` hand appears in the image for sim states (T, 54): the inverse of
    `arm_targets` on the shoulder pitch/roll (the rest pose lies below the image)."""
    pitch = (
        state[:, STATE_COLUMNS[f"{side}_shoulder_pitch_joint"]]
        - INDEX_OFFSET * STATE_COLUMNS[f"{side}_shoulder_pitch_joint"]
    )
    roll = (
        state[:, STATE_COLUMNS[f"{side}_shoulder_roll_joint"]]
        - INDEX_OFFSET * STATE_COLUMNS[f"{side}_shoulder_roll_joint"]
    )
    if side == "left":
        return 1 - (0.2 - roll) / 0.45, (pitch + 0.95) / 0.75
    return (roll + 0.2) / 0.45, (pitch + 0.95) / 0.75


@dataclass
class SynthEpisode:
    """One generated demo; `targets[t]` is the (u, v) target shown in frame t and used for action t."""

    length: int
    height: int  # camera frame size in pixels
    width: int
    targets: np.ndarray  # (T, 2) float64, image fractions (u across the width, v down the height)
    jump_steps: list[int]  # steps at which the target moved
    grasp_start: int  # step the hands start closing
    state: np.ndarray  # (T, S) float32  obs/robot_joint_pos
    processed_actions: np.ndarray  # (T, A) float32
    actions: np.ndarray  # (T, R) float32  raw env action
    hand: np.ndarray  # (T, 3) where the hand is drawn (u, v) and how far it has closed (0..1)
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # other float32 `obs/` datasets
    action: dict[str, np.ndarray] = field(default_factory=dict)  # float32 `action/` datasets (G1)
    camera: str = CAMERA

    def render(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Camera frames [start, stop) as uint8 (n, H, W, 3)."""
        stop = self.length if stop is None else stop
        cue = np.clip((np.arange(start, stop) - (self.grasp_start - GRASP_CUE)) / GRASP_CUE, 0.0, 1.0)
        return render_frames(self.targets[start:stop], self.hand[start:stop], self.height, self.width, cue)


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


@dataclass
class Plan:
    """What an episode shows, whatever the robot: its length, targets, their jumps and the grasp."""

    length: int
    goals: list[np.ndarray]  # the targets in the order shown
    starts: list[int]  # the step each goal appears (0, then the jumps)
    grasp_start: int

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.length)

    @property
    def targets(self) -> np.ndarray:
        """(T, 2) the target shown at each step."""
        segment = np.searchsorted(np.array(self.starts), self.steps, side="right") - 1
        return np.array(self.goals)[segment]

    def ramps(self, goal_values: list[dict[str, float]], rest: dict[str, float]) -> dict[str, np.ndarray]:
        """Per name, minimum-jerk moves from the previous goal's value (or rest) to each goal's."""
        out = {}
        for name, rest_value in rest.items():
            values = np.empty(self.length)
            for k, start in enumerate(self.starts):
                end = self.starts[k + 1] if k + 1 < len(self.starts) else self.length
                before = rest_value if k == 0 else goal_values[k - 1][name]
                ramp = min_jerk((self.steps[start:end] - start) / ARM_RAMP)
                values[start:end] = before + (goal_values[k][name] - before) * ramp
            out[name] = values
        return out

    def bells(self) -> np.ndarray:
        """(T,) 0..1 velocity bells, one ARM_RAMP long after each goal appears (the speed of `ramps`)."""
        out = np.zeros(self.length)
        for start in self.starts:
            x = np.clip((self.steps - start) / ARM_RAMP, 0.0, 1.0)
            out += 16 * x**2 * (1 - x) ** 2
        return out

    def closing(self) -> np.ndarray:
        """(T,) 0 -> 1 from grasp_start over HAND_RAMP steps."""
        return min_jerk((self.steps - self.grasp_start) / HAND_RAMP)


def make_plan(rng: np.random.Generator, min_frames: int, max_frames: int) -> Plan:
    length = int(rng.integers(min_frames, max_frames + 1))
    jumps, grasp_start = _timeline(rng, length)
    goals = [_draw_target(rng, None)]
    for _ in jumps:
        goals.append(_draw_target(rng, goals[-1]))
    return Plan(length, goals, [0, *jumps], grasp_start)


def follow(
    action: np.ndarray, rest_state: np.ndarray, state_columns: np.ndarray, action_columns: np.ndarray
) -> np.ndarray:
    """First-order lag of the state towards the commanded joints; joints without a command stay put."""
    state = np.tile(rest_state.astype(np.float64), (len(action), 1))
    for t in range(1, len(action)):
        previous = state[t - 1, state_columns]
        state[t, state_columns] = previous + LAG * (action[t - 1, action_columns] - previous)
    return state


def image_size_of(value) -> tuple[int, int]:
    """`--image-size`: 64 (square) or 48x64 (height x width) -> (height, width)."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", str(value).strip())
    if not match:
        raise PosttrainError(f"--image-size: expected N or HEIGHTxWIDTH (e.g. 480x640), got {value!r}")
    return int(match[1]), int(match[2] or match[1])


def make_episode(
    seed: int, index: int, min_frames: int, max_frames: int, image_size, task: str = "reach_right"
) -> SynthEpisode:
    """GR1 demo `index` of the file generated with `seed` (each demo has its own generator: [seed, index]).
    `task` picks the hand that reaches (TASKS); the plan (targets, jumps, grasp) is the same for both."""
    rng = np.random.default_rng([seed, index])
    plan = make_plan(rng, min_frames, max_frames)
    length, steps, targets = plan.length, plan.steps, plan.targets
    reach, other = TASK_SIDES[task]

    # Commanded reaching arm: ramps from the previous goal (or rest) to the current one.
    rest_reach = {n: REST_POSE.get(n, 0.0) for n in arm_targets(np.zeros(1), np.zeros(1), reach)}
    command = plan.ramps([arm_targets(np.float64(u), np.float64(v), reach) for u, v in plan.goals], rest_reach)

    # The other arm: a damped echo of the reaching arm's motion; the signs keep the left arm in the
    # golden (right-hand) episode's ranges.
    for joint in _ARM:
        moved = command[f"{reach}_{joint}_joint"] - rest_reach[f"{reach}_{joint}_joint"]
        sign = -1.0 if joint.startswith(("shoulder", "elbow")) else 1.0
        command[f"{other}_{joint}_joint"] = REST_POSE.get(f"{other}_{joint}_joint", 0.0) + 0.15 * sign * moved

    # Hands: thumbs up from the start, fingers close from grasp_start (the other hand only a little).
    close = min_jerk((steps - plan.grasp_start) / HAND_RAMP)
    for side, scale in (("R", 1.0 if reach == "right" else 0.15), ("L", 0.15 if reach == "right" else 1.0)):
        for finger, amount in zip(_FINGERS, (-0.5, -0.55, -0.5, -0.6)):
            command[f"{side}_{finger}_proximal_joint"] = scale * amount * close
            command[f"{side}_{finger}_intermediate_joint"] = scale * amount * close  # mimic joint, ratio 1
        command[f"{side}_thumb_proximal_yaw_joint"] = scale * -0.15 * close
        command[f"{side}_thumb_proximal_pitch_joint"] = (
            THUMB_PRESHAPE[f"{side}_thumb_proximal_pitch_joint"] + scale * 0.15 * close
        )
        command[f"{side}_thumb_distal_joint"] = THUMB_DISTAL_RATIO * command[f"{side}_thumb_proximal_pitch_joint"]

    action = np.tile(REST_ACTION.astype(np.float64), (length, 1))
    for name, values in command.items():
        action[:, ACTION_COLUMNS[name]] = values
    # First-order lag on every commanded joint; joints without a command (legs, waist, head) stay put.
    state = follow(
        action,
        REST_STATE,
        np.array([STATE_COLUMNS[n] for n in ACTION_COLUMNS]),
        np.array([ACTION_COLUMNS[n] for n in ACTION_COLUMNS]),
    )

    state += INDEX_OFFSET * np.arange(state.shape[1])
    action += INDEX_OFFSET * np.arange(action.shape[1])
    state, action = state.astype(np.float32), action.astype(np.float32)

    hand_u, hand_v = hand_position_in_image(state, reach)  # the camera shows the reaching hand
    finger = STATE_COLUMNS[f"{reach[0].upper()}_index_proximal_joint"]
    closing = np.clip(-(state[:, finger] - INDEX_OFFSET * finger) / 0.6, 0, 1)
    height, width = image_size_of(image_size)
    return SynthEpisode(
        length=length,
        height=height,
        width=width,
        targets=targets,
        jump_steps=plan.starts[1:],
        grasp_start=plan.grasp_start,
        state=state,
        processed_actions=action,
        actions=_raw_actions(targets, action, reach),
        hand=np.stack([hand_u, hand_v, closing], axis=1),
        obs=_observations(state, reach),
    )


def _eef(u: np.ndarray, v: np.ndarray, side: str) -> np.ndarray:
    """A plausible end-effector position (robot base frame, metres) for an image position."""
    y = -0.25 + 0.3 * u if side == "right" else 0.25 - 0.05 * u
    return np.stack([0.25 + 0.15 * (1 - v), y, 0.05 + 0.1 * (1 - v)], axis=1)


def _quat(n: int, tilt) -> np.ndarray:
    """(n, 4) unit quaternions about y by `tilt` (a number or (n,) radians), wxyz as Isaac Lab writes them."""
    tilt = np.broadcast_to(np.asarray(tilt, np.float64), (n,))
    q = np.stack([np.cos(tilt / 2), np.zeros(n), np.sin(tilt / 2), np.zeros(n)], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _eef_pair(u: np.ndarray, v: np.ndarray, reach: str) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) end-effector positions with the `reach` hand at image position (u, v) and the
    other one near rest. A left reach is the right one mirrored (u -> 1 - u, y -> -y)."""
    n = len(u)
    idle = _eef(np.full(n, 0.5), np.full(n, 1.0), "left")
    if reach == "right":
        return idle, _eef(u, v, "right")
    mirror = np.array([1.0, -1.0, 1.0])
    return _eef(1 - u, v, "right") * mirror, idle * mirror


def _raw_actions(targets: np.ndarray, action: np.ndarray, reach: str = "right") -> np.ndarray:
    """gr1_pink-style raw action: left eef pos+quat, right eef pos+quat (IK targets), 22 hand joints."""
    n = len(targets)
    left, right = _eef_pair(targets[:, 0], targets[:, 1], reach)
    tilt = (0.2, 0.4) if reach == "right" else (0.4, 0.2)  # (left, right): the reaching hand tilts more
    hands = action[:, [ACTION_COLUMNS[j] for j in HAND_JOINTS]]
    return np.concatenate([left, _quat(n, tilt[0]), right, _quat(n, tilt[1]), hands], axis=1).astype(np.float32)


def _observations(state: np.ndarray, reach: str = "right") -> dict[str, np.ndarray]:
    """A few more of the `obs/` datasets the GR1 policy observation group records."""
    n = len(state)
    left, right = _eef_pair(*hand_position_in_image(state, reach), reach)
    tilt = (0.2, 0.4) if reach == "right" else (0.4, 0.2)
    return {
        "right_eef_pos": right.astype(np.float32),
        "right_eef_quat": _quat(n, tilt[1]).astype(np.float32),
        "left_eef_pos": left.astype(np.float32),
        "left_eef_quat": _quat(n, tilt[0]).astype(np.float32),
        "hand_joint_state": state[:, [STATE_COLUMNS[j] for j in HAND_JOINTS]],
        "head_joint_state": state[:, [STATE_COLUMNS[f"head_{a}_joint"] for a in ("roll", "pitch", "yaw")]],
        "robot_root_pos": np.zeros((n, 3), np.float32),
        "robot_root_rot": _quat(n, 0.0).astype(np.float32),
    }


# --- Unitree G1 (loco-manipulation) ----------------------------------------------------------------

G1_ENV_NAME = "Isaac-G1-Synthetic-LocoManip-v0"
_G1 = load_embodiment("g1")
G1_CAMERA = next(iter(_G1.cameras))  # robot_head_cam_rgb, as config/embodiments/g1 declares
G1_COLUMNS: dict[str, int] = _G1.state_joints  # one 43-joint sim order for state and action
G1_IMAGE_SIZE = (480, 640)
G1_ARM = ("shoulder_pitch", "shoulder_roll", "shoulder_yaw", "elbow", "wrist_roll", "wrist_pitch", "wrist_yaw")
G1_MIRRORED = ("shoulder_roll", "shoulder_yaw", "wrist_roll", "wrist_yaw")  # opposite signs left and right
# Standing pose (the golden G1 episode's first state): everything not listed is 0.
G1_REST_POSE = {
    f"{side}_{joint}_joint": value
    for side in _SIDES
    for joint, value in (("hip_pitch", -0.1), ("knee", 0.3), ("ankle_pitch", -0.2))
}
G1_REST = _vector(G1_REST_POSE, G1_COLUMNS).astype(np.float32)  # state[0] = processed_actions[0], offsets aside
# Dex3 hands closed (right; the left hand mirrors it, a little)
G1_GRASP = {
    "index_0": 0.9,
    "index_1": 1.0,
    "middle_0": 0.9,
    "middle_1": 1.0,
    "thumb_0": 0.3,
    "thumb_1": -0.5,
    "thumb_2": -0.6,
}
G1_HEIGHT = 0.75  # base_height_cmd standing, metres


def g1_goal_commands(u: float, v: float) -> dict[str, float]:
    """Right arm and torso (waist) targets for a target at image position (u, v): the arm reaches,
    the torso turns and leans to it. In the golden G1 episode's ranges."""
    return {
        "right_shoulder_pitch_joint": -0.15 - 0.6 * (1 - v),
        "right_shoulder_roll_joint": -0.05 - 0.4 * u,
        "right_shoulder_yaw_joint": -0.15 + 0.15 * u - 0.05 * v,
        "right_elbow_joint": 0.3 + 0.8 * v * (0.5 + 0.5 * u),
        "right_wrist_roll_joint": 0.1 * u,
        "right_wrist_pitch_joint": -0.3 + 0.25 * (u - v),
        "right_wrist_yaw_joint": 0.05 + 0.1 * (v - 0.5),
        "waist_roll_joint": 0.08 * (u - 0.5),
        "waist_pitch_joint": 0.02 + 0.1 * (v - 0.5),
        "waist_yaw_joint": 0.3 * (u - 0.5),
    }


def g1_hand_in_image(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the right hand appears for G1 joint vectors (T, 43), state or action: the inverse of
    `g1_goal_commands` on the shoulder pitch and roll (the standing pose lies off the image)."""
    pitch, roll = (
        joints[:, G1_COLUMNS[n]] - INDEX_OFFSET * G1_COLUMNS[n]
        for n in ("right_shoulder_pitch_joint", "right_shoulder_roll_joint")
    )
    return (-0.05 - roll) / 0.4, 1 + (pitch + 0.15) / 0.6


def _g1_eef(joints: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(position (T, 3), wxyz quaternion (T, 4)) of a hand for G1 joint vectors, base frame."""
    u, v = g1_hand_in_image(joints)
    if side == "left":  # the left hand moves a little, as the left arm echoes the right one
        u, v = 0.5 - 0.15 * (u - 0.5), 1.2 + 0.15 * (v - 1.2)
    y = -0.12 - 0.15 * u if side == "right" else 0.12 + 0.05 * u
    position = np.stack([0.2 + 0.15 * (1 - v), y, 0.05 + 0.15 * (1 - v)], axis=1)
    column = G1_COLUMNS[f"{side}_wrist_pitch_joint"]
    return position, _quat(len(joints), joints[:, column] - INDEX_OFFSET * column)


def make_g1_episode(seed: int, index: int, min_frames: int, max_frames: int, image_size=G1_IMAGE_SIZE) -> SynthEpisode:
    """G1 demo `index` of the file generated with `seed`: the GR1 task (same targets, jumps and grasp
    for the same seed), with G1 joints, eef poses and teleop commands."""
    rng = np.random.default_rng([seed, index])
    plan = make_plan(rng, min_frames, max_frames)
    targets, close = plan.targets, plan.closing()
    goals = [g1_goal_commands(float(u), float(v)) for u, v in plan.goals]
    command = plan.ramps(goals, {name: G1_REST_POSE.get(name, 0.0) for name in goals[0]})
    for joint in G1_ARM:  # left arm: a damped echo of the right one
        sign = -1.0 if joint in G1_MIRRORED else 1.0
        command[f"left_{joint}_joint"] = 0.15 * sign * command[f"right_{joint}_joint"]
    for finger, amount in G1_GRASP.items():
        command[f"right_hand_{finger}_joint"] = amount * close
        command[f"left_hand_{finger}_joint"] = -0.15 * amount * close
    # Teleop: a step towards each new target, a squat while grasping (deeper for a lower target).
    bell = plan.bells()
    u, v = targets[:, 0], targets[:, 1]
    navigate = np.stack([0.3 * (1 - v) * bell, -0.15 * (u - 0.5) * bell, -0.6 * (u - 0.5) * bell], axis=1)
    base_height = G1_HEIGHT - close * (0.08 + 0.08 * v)
    drop = G1_HEIGHT - base_height
    for side, mirror in (("left", 1.0), ("right", -1.0)):  # the legs follow the commands
        command[f"{side}_hip_pitch_joint"] = -0.1 - 2.5 * drop
        command[f"{side}_knee_joint"] = 0.3 + 5.0 * drop
        command[f"{side}_ankle_pitch_joint"] = -0.2 - 2.5 * drop
        command[f"{side}_hip_yaw_joint"] = 0.4 * navigate[:, 2]
        command[f"{side}_hip_roll_joint"] = 0.3 * navigate[:, 1] + mirror * 0.2 * drop
        command[f"{side}_ankle_roll_joint"] = -0.3 * navigate[:, 1] - mirror * 0.2 * drop

    action = np.tile(G1_REST.astype(np.float64), (plan.length, 1))
    for name, values in command.items():
        action[:, G1_COLUMNS[name]] = values
    every = np.arange(len(G1_COLUMNS))
    state = follow(action, G1_REST, every, every)
    state += INDEX_OFFSET * every
    action += INDEX_OFFSET * every
    state, action = state.astype(np.float32), action.astype(np.float32)

    torso = np.stack([command[f"waist_{axis}_joint"] for axis in ("roll", "pitch", "yaw")], axis=1)
    teleop = {"base_height_cmd": base_height[:, None], "navigate_cmd": navigate, "torso_orientation_rpy_cmd": torso}
    obs, commanded = {}, {}
    for side in _SIDES:
        obs[f"{side}_eef_pos"], obs[f"{side}_eef_quat"] = _g1_eef(state, side)
        commanded[f"{side}_eef_pos"], commanded[f"{side}_eef_quat"] = _g1_eef(action, side)
    obs.update(_g1_root(navigate))
    hands = action[:, [G1_COLUMNS[n] for n in G1_COLUMNS if "_hand_" in n]]
    raw = np.concatenate([hands, *commanded.values(), navigate, base_height[:, None], torso], axis=1)

    hand_u, hand_v = g1_hand_in_image(state)
    column = G1_COLUMNS["right_hand_index_0_joint"]
    closing = np.clip((state[:, column] - INDEX_OFFSET * column) / G1_GRASP["index_0"], 0, 1)
    height, width = image_size_of(image_size)
    return SynthEpisode(
        length=plan.length,
        height=height,
        width=width,
        targets=targets,
        jump_steps=plan.starts[1:],
        grasp_start=plan.grasp_start,
        state=state,
        processed_actions=action,
        actions=raw.astype(np.float32),
        hand=np.stack([hand_u, hand_v, closing], axis=1),
        obs=_float32(obs),
        action=_float32({**commanded, **teleop}),
        camera=G1_CAMERA,
    )


def _float32(group: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """As Isaac Lab records them."""
    return {key: np.asarray(values, np.float32) for key, values in group.items()}


def _g1_root(navigate: np.ndarray, dt: float = 0.02) -> dict[str, np.ndarray]:
    """robot_root_pos / robot_root_rot (wxyz) from integrating the navigate command (vx, vy, yaw rate)."""
    yaw = np.concatenate([[0.0], np.cumsum(navigate[:-1, 2] * dt)])
    vx, vy = navigate[:, 0], navigate[:, 1]
    step = np.stack([vx * np.cos(yaw) - vy * np.sin(yaw), vx * np.sin(yaw) + vy * np.cos(yaw)], axis=1) * dt
    xy = np.concatenate([[[0.0, 0.0]], np.cumsum(step[:-1], axis=0)])
    position = np.c_[xy, np.full(len(yaw), 0.793)]
    rotation = np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=1)
    return {"robot_root_pos": position, "robot_root_rot": rotation}


# --- smooth motion (`--motion smooth`, GR1) --------------------------------------------------------
# State-predictable data, where holding the current state is a strong baseline: the opposite of the
# reach above, which needs the camera. Every demo performs one task motion: each commanded joint
# follows SMOOTH_HARMONICS sines of the task phase (0 -> 1 over the demo), their amplitudes and
# phases drawn once per seed, scaled per demo (gain, phase shift), plus a slower sine of the demo's
# own (the variation between demos, which the state does not tell). The action is the joint position
# SMOOTH_LOOKAHEAD steps ahead (a position target leading the joints), so at 50 fps a 16-step chunk
# moves little. The camera shows the hand (from the state) and a fixed disc: nothing the state does
# not tell. tests/test_recipe.py trains the default recipe on it.

SMOOTH_ENV_NAME = "Isaac-GR1T2-Synthetic-Smooth-v0"
SMOOTH_HARMONICS = 3
SMOOTH_LOOKAHEAD = 4  # steps the action leads the state (80 ms at 50 fps)
SMOOTH_VARIATION = 0.4  # amplitude of the demo's own sine, relative to the task's first harmonic
SMOOTH_CENTER = {"right_shoulder_pitch_joint": -0.6, "right_shoulder_roll_joint": 0.0}  # keeps the hand in view
SMOOTH_DISC = (0.5, 0.25)  # where the (static, uninformative) target disc is drawn


def smooth_task(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per GR1 action joint: (amplitudes, phases) of the task's harmonics, shared by every demo of `seed`."""
    rng = np.random.default_rng([seed])
    task = {}
    for name in sorted(ACTION_COLUMNS):
        scale = 0.12 if name[:2] in ("L_", "R_") else 0.25  # hand joints move less than arm joints
        amplitudes = scale * rng.uniform(0.3, 1.0, SMOOTH_HARMONICS) / np.arange(1, SMOOTH_HARMONICS + 1)
        task[name] = (amplitudes, rng.uniform(0, 2 * np.pi, SMOOTH_HARMONICS))
    return task


def make_smooth_episode(seed: int, index: int, min_frames: int, max_frames: int, image_size) -> SynthEpisode:
    """GR1 demo `index` of the smooth-motion file generated with `seed` (generator [seed, index])."""
    rng = np.random.default_rng([seed, index])
    length = int(rng.integers(min_frames, max_frames + 1))
    gain, shift, frequency = rng.uniform(0.8, 1.2), rng.uniform(-0.05, 0.05), rng.uniform(1.0, 2.0)
    phase = np.arange(length + SMOOTH_LOOKAHEAD) / length + shift  # past the end: the last steps' actions
    harmonics = np.arange(1, SMOOTH_HARMONICS + 1)
    state = np.tile(REST_STATE.astype(np.float64), (length, 1))
    action = np.zeros((length, len(ACTION_COLUMNS)))
    for name, (amplitudes, phases) in smooth_task(seed).items():
        task = np.sin(2 * np.pi * phase[:, None] * harmonics + phases) @ amplitudes
        own = SMOOTH_VARIATION * amplitudes[0] * np.sin(2 * np.pi * frequency * phase + rng.uniform(0, 2 * np.pi))
        joint = SMOOTH_CENTER.get(name, REST_ACTION[ACTION_COLUMNS[name]]) + gain * task + own
        state[:, STATE_COLUMNS[name]] = joint[:length]
        action[:, ACTION_COLUMNS[name]] = joint[SMOOTH_LOOKAHEAD:]
    state += INDEX_OFFSET * np.arange(state.shape[1])
    action += INDEX_OFFSET * np.arange(action.shape[1])
    state, action = state.astype(np.float32), action.astype(np.float32)
    targets = np.tile(SMOOTH_DISC, (length, 1))
    hand_u, hand_v = hand_position_in_image(state)
    height, width = image_size_of(image_size)
    return SynthEpisode(
        length=length,
        height=height,
        width=width,
        targets=targets,
        jump_steps=[],
        grasp_start=length + GRASP_CUE,  # no grasp cue: the disc stays red
        state=state,
        processed_actions=action,
        actions=_raw_actions(targets, action),
        hand=np.stack([hand_u, hand_v, np.zeros(length)], axis=1),
        obs=_observations(state),
    )


MOTIONS = ("reach", "smooth")  # --motion: the vision-dependent reach (default), or smooth motion (GR1)
# --task (GR1 reach): which hand reaches for the target -> (reaching side, other side), env name.
TASK_SIDES = {"reach_right": ("right", "left"), "reach_left": ("left", "right")}
TASK_ENV_NAMES = {"reach_right": ENV_NAME, "reach_left": "Isaac-GR1T2-Synthetic-ReachLeft-v0"}
TASKS = tuple(TASK_SIDES)


EMBODIMENTS = {  # --embodiment -> (episode maker, env name, default image size)
    "gr1": (make_episode, ENV_NAME, 64),  # the workflow's default: small for CPU (the robot's camera is 512²)
    "g1": (make_g1_episode, G1_ENV_NAME, G1_IMAGE_SIZE),
}


# --- images and files ----------------------------------------------------------------------------


def _soft_disc(xx, yy, cx, cy, radius, edge, aspect=1.0):
    """Coverage 0..1 of a disc with a smooth (smoothstep) edge `edge` wide (image-height units; u is
    scaled by `aspect` = width / height, so that the disc stays round in a non-square image)."""
    d = np.sqrt(((xx - cx) * aspect) ** 2 + (yy - cy) ** 2)
    x = np.clip((radius + edge / 2 - d) / edge, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def render_frames(targets: np.ndarray, hand: np.ndarray, height: int, width: int, grasp_cue: np.ndarray) -> np.ndarray:
    """Frames for targets (n, 2), hands (n, 3: u, v, closing) and grasp cues (n,) in 0..1: table
    gradient, a target that turns from red to green as the cue rises, grey hand blob."""
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    aspect = width / height
    top, bottom = np.array([150, 165, 180], np.float32), np.array([105, 92, 80], np.float32)
    background = top + (bottom - top) * yy[..., None] + 12 * (xx[..., None] - 0.5)
    red, green = np.array([195, 60, 50], np.float32), np.array([50, 190, 60], np.float32)
    grey = np.array([55, 58, 66], np.float32)
    edge = max(3.0, 0.07 * height) / height  # soft edges survive 4:2:0 chroma subsampling
    frames = np.empty((len(targets), height, width, 3), np.uint8)
    for i, (u, v) in enumerate(targets):
        image = background.copy()
        alpha = _soft_disc(xx, yy, u, v, 0.09, edge, aspect)[..., None]
        image += (red + (green - red) * grasp_cue[i] - image) * alpha
        hand_u, hand_v, closing = hand[i]
        blob = _soft_disc(xx, yy, hand_u, hand_v, 0.07 * (1 - 0.3 * closing), 2 * edge, aspect)
        image += (grey - image) * (0.55 * blob)[..., None]
        frames[i] = np.clip(image + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_demo(group: h5py.Group, episode: SynthEpisode, seed: int) -> None:
    """One demo group in the Mimic layout, every dataset gzip-compressed."""

    def dataset(name, values):
        group.create_dataset(name, data=values, compression="gzip")

    t = episode.length
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
    for key, values in episode.action.items():
        dataset(f"action/{key}", values)
    # h5py's own chunk guess, as Isaac Lab's `create_dataset(data=..., compression="gzip")` gets it
    # (e.g. (21, 64, 64, 1) at 330 × 512²): readers and benchmarks see the layout of real files.
    frames = group.create_dataset(
        f"camera_obs/{episode.camera}",
        shape=(t, episode.height, episode.width, 3),
        dtype=np.uint8,
        chunks=True,
        compression="gzip",
    )
    for start in range(0, t, WRITE_BATCH):
        stop = min(start + WRITE_BATCH, t)
        frames[start:stop] = episode.render(start, stop)


def write_synthetic(
    path: str | os.PathLike,
    episodes: int = 12,
    min_frames: int = 60,
    max_frames: int = 100,
    image_size=None,
    seed: int = 0,
    progress: bool = True,
    embodiment: str = "gr1",
    motion: str = "reach",
    task: str = "reach_right",
) -> Path:
    """Write the synthetic Mimic HDF5 to `path` (via a temporary file renamed at the end).
    `image_size`: N (square) or (height, width) or "HxW"; None: the embodiment's camera (GR1 64², G1 480x640).
    `task`: which hand reaches (TASKS; GR1 reach only)."""
    path = Path(path)
    if embodiment not in EMBODIMENTS:
        raise PosttrainError(f"{path}: --embodiment must be one of {', '.join(EMBODIMENTS)}, got {embodiment!r}")
    make, env_name, default_size = EMBODIMENTS[embodiment]
    if motion not in MOTIONS or (motion == "smooth" and embodiment != "gr1"):
        raise PosttrainError(
            f"{path}: --motion must be one of {', '.join(MOTIONS)} (smooth: --embodiment gr1 "
            f"only), got {motion!r} with --embodiment {embodiment}"
        )
    if motion == "smooth":
        make, env_name = make_smooth_episode, SMOOTH_ENV_NAME
    if task not in TASKS or (task != "reach_right" and (embodiment, motion) != ("gr1", "reach")):
        raise PosttrainError(
            f"{path}: --task must be one of {', '.join(TASKS)} (reach_left: --embodiment gr1 "
            f"--motion reach only), got {task!r} with --embodiment {embodiment} --motion {motion}"
        )
    if task != "reach_right":
        make, env_name = functools.partial(make_episode, task=task), TASK_ENV_NAMES[task]
    if episodes < 1:
        raise PosttrainError(f"{path}: --episodes must be >= 1, got {episodes}")
    if not 2 <= min_frames <= max_frames:
        raise PosttrainError(f"{path}: need 2 <= --min-frames <= --max-frames, got {min_frames}, {max_frames}")
    height, width = image_size_of(default_size if image_size is None else image_size)
    if min(height, width) < 16 or height % 2 or width % 2:
        raise PosttrainError(f"{path}: --image-size sides must be even and >= 16, got {height}x{width}")
    total = 0
    try:
        with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps({"env_name": env_name, "type": 2})
            for i in tqdm(range(episodes), desc="synth", unit="demo", disable=not progress):
                episode = make(seed, i, min_frames, max_frames, (height, width))
                write_demo(data.create_group(f"demo_{i}"), episode, seed)
                total += episode.length
            data.attrs["total"] = total
    except OSError as err:
        raise PosttrainError(f"{path}: cannot write ({' '.join(str(err).split())})") from None
    log.info("%s: %s, %d demos, %d steps, %dx%d images", path, embodiment, episodes, total, height, width)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, help="HDF5 file to write")
    add_options(parser, SynthSettings)


def run(args: argparse.Namespace) -> int:
    write_synthetic(
        args.output,
        args.episodes,
        args.min_frames,
        args.max_frames,
        args.image_size,
        args.seed,
        embodiment=args.embodiment,
        motion=args.motion,
        task=args.task,
    )
    return 0
