"""The default workflow with the Unitree G1 embodiment, end to end: synth (48 x 64 head camera) ->
convert -> stats -> verify -> frames -> train -> eval -> report, on the tiny test config.

The native policy reads every modality.json group from its own column (posttrain.layout): for G1
the eef poses and teleop commands beside observation.state and action. Snakemake runs from the
private checkout of tests/test_workflow.py (its `checkout` fixture and `smk` helper).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import test_workflow as workflow
from test_workflow import checkout  # noqa: F401  (module fixture: the private checkout `smk` runs)

from posttrain.policy import Policy

G1_OVERLAY = """\
dataset: {name: g1}
synth: {embodiment: g1, image_size: "48x64"}
convert: {embodiment: g1}
"""
STATE_COLUMNS = ["observation.state", "observation.eef_pose"]
ACTION_COLUMNS = [
    "action",
    "action.eef_pose",
    "teleop.base_height_command",
    "teleop.navigate_command",
    "teleop.torso_orientation_rpy_command",
]


def finite(block: dict) -> bool:
    return all(math.isfinite(x) for x in [block["mse"], block["mae"], *block["mse_per_step"]])


@pytest.mark.slow
def test_g1_workflow_trains_and_evaluates_on_every_g1_column(tmp_path):
    overlay = tmp_path / "g1.yaml"
    overlay.write_text(G1_OVERLAY)
    result = workflow.smk(tmp_path / "work", "-c2", configfiles=[*workflow.CONFIGS, overlay])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ds = tmp_path / "work" / "results" / "g1"
    for path in (
        "verify/report.json",
        "frames/index.json",
        "train/tiny/DONE.json",
        "eval/tiny/metrics.json",
        "report/dataset.html",
        "report/tiny/eval_metrics.html",
    ):
        assert (ds / path).exists(), path

    index = json.loads((ds / "frames" / "index.json").read_text())
    assert index["image_size"] == 64 and index["fit"] == "centre-square"  # 48 x 64 camera: its centre square

    done = json.loads((ds / "train" / "tiny" / "DONE.json").read_text())
    policy = Policy.from_checkpoint(ds / "train" / "tiny" / done["final_checkpoint"])
    assert (policy.config.state_dim, policy.config.action_dim) == (57, 64)
    assert policy.normalizer.state_layout.column_names == STATE_COLUMNS
    assert policy.normalizer.action_layout.column_names == ACTION_COLUMNS
    assert np.isfinite(policy.normalizer.action.lo).all() and np.isfinite(policy.normalizer.action.span).all()

    metrics = json.loads((ds / "eval" / "tiny" / "metrics.json").read_text())
    assert finite(metrics["policy"]) and finite(metrics["mean_action"])
    assert list(metrics["policy"]["groups"]) == list(policy.modality["action"])  # every G1 action group
    assert {"base_height_command", "navigate_command", "left_wrist_pose"} <= set(metrics["policy"]["groups"])
    # hold-state needs the same state and action groups; G1's teleop commands have no state to hold
    assert metrics["hold_state"] is None or finite(metrics["hold_state"])
    assert metrics["verdict"]["summary"]
