"""`posttrain eval`: metrics checked against an independent computation, with a stand-in policy.

The stand-in predicts "hold the current state", so the policy's errors must equal the hold-state
baseline exactly, and both must equal what this file computes from the parquet files itself.
The real model is exercised end to end by the workflow test (a tiny training run).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from tasks_helpers import relabel

import posttrain.policy
from conftest import run_cli
from posttrain.eval import error_summary, verdict
from posttrain.lerobot import LeRobotDataset

H = 16
IMAGE_SIZE = 32


class HoldStatePolicy:
    """The `posttrain.policy.Policy` interface, predicting the current state for every step."""

    seen_images = []

    def __init__(self, directory: Path):
        self.config = json.loads((directory / "model_config.json").read_text())
        self.split = json.loads((directory / "split.json").read_text())
        self.stats = json.loads((directory / "stats.json").read_text())

    @classmethod
    def from_checkpoint(cls, directory, device="cpu"):
        return cls(Path(directory))

    def predict(self, images, state, texts, generator=None):
        HoldStatePolicy.seen_images.append((images.shape, images.dtype, list(texts)))
        return np.repeat(np.asarray(state)[:, None, :], self.config["action_horizon"], axis=1)


@pytest.fixture
def fake_policy(monkeypatch):
    HoldStatePolicy.seen_images = []
    monkeypatch.setattr(posttrain.policy, "Policy", HoldStatePolicy)
    return HoldStatePolicy


def make_checkpoint(run_dir: Path, dataset: Path, heldout=(4, 5), step=20) -> Path:
    ckpt = run_dir / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    episodes = [e["episode_index"] for e in LeRobotDataset(dataset).episodes]
    (ckpt / "model_config.json").write_text(json.dumps({"image_size": IMAGE_SIZE, "action_horizon": H}))
    shutil.copy(dataset / "meta" / "modality.json", ckpt / "modality.json")
    shutil.copy(dataset / "meta" / "stats.json", ckpt / "stats.json")
    split = {"train_episodes": [e for e in episodes if e not in heldout], "heldout_episodes": list(heldout)}
    (ckpt / "split.json").write_text(json.dumps(split))
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run_dir / "DONE.json").write_text(json.dumps({"final_checkpoint": ckpt.name, "step": step}))
    return ckpt


def episode(dataset: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(next(dataset.glob(f"data/*/episode_{index:06d}.parquet")))
    return (
        np.array(table.column("observation.state").to_pylist(), np.float64),
        np.array(table.column("action").to_pylist(), np.float64),
    )


def test_eval_metrics_match_independent_computation(converted_dataset, fake_policy, tmp_path, caplog):
    run_dir = tmp_path / "run"
    ckpt = make_checkpoint(run_dir, converted_dataset)
    out = tmp_path / "eval"
    # A run directory resolves to DONE.json's final checkpoint.
    assert (
        run_cli(
            "eval",
            run_dir,
            converted_dataset,
            "--output",
            out,
            "--stride",
            "4",
            "--episodes-to-plot",
            "1",
            "--batch-size",
            "5",
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == str(ckpt) and m["step"] == 20 and m["heldout_episodes"] == [4, 5]

    # Independent computation of the hold-state and mean-action errors from the parquet files.
    hold_err, mean_err = [], []
    mean_action = np.concatenate([episode(converted_dataset, e)[1] for e in range(4)]).mean(axis=0)
    for e in (4, 5):
        state, action = episode(converted_dataset, e)
        for i in range(0, len(action) - H + 1, 4):
            hold_err.append(state[i][None, :] - action[i : i + H])
            mean_err.append(mean_action[None, :] - action[i : i + H])
    hold_err, mean_err = np.stack(hold_err), np.stack(mean_err)
    assert m["num_chunks"] == len(hold_err)
    assert m["hold_state"]["mse"] == pytest.approx(np.mean(hold_err**2), rel=1e-6)
    assert m["hold_state"]["mae"] == pytest.approx(np.mean(np.abs(hold_err)), rel=1e-6)
    assert m["hold_state"]["mse_per_step"] == pytest.approx(np.mean(hold_err**2, axis=(0, 2)), rel=1e-6)
    assert m["hold_state"]["groups"]["right_hand"]["mse"] == pytest.approx(
        np.mean(hold_err[:, :, 20:26] ** 2), rel=1e-6
    )
    assert m["mean_action"]["mse"] == pytest.approx(np.mean(mean_err**2), rel=1e-5)
    assert "4 train episodes" in m["baselines"]["mean_action"]
    # The stand-in policy IS the hold-state baseline.
    assert m["policy"]["mse_per_step"] == pytest.approx(m["hold_state"]["mse_per_step"], rel=1e-9)
    assert m["policy"]["mse"] > 0 and len(m["policy"]["mse_per_step"]) == H
    assert list(m["policy"]["groups"]) == ["left_arm", "right_arm", "left_hand", "right_hand"]
    assert sum(e["chunks"] for e in m["per_episode"].values()) == m["num_chunks"]
    lat = m["latency_ms_per_chunk"]
    assert 0 <= lat["p50"] <= lat["p90"] and lat["batch_size"] == 5
    # The policy saw uint8 (B, V, S, S, 3) frames and the episode's task text.
    shape, dtype, texts = fake_policy.seen_images[0]
    assert shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE, 3) and dtype == np.uint8 and shape[0] <= 5
    assert texts[0] == LeRobotDataset(converted_dataset).episodes[4]["tasks"][0]
    for png in ("horizon_error.png", "trajectories.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The verdict agrees with the MSE numbers beside it. The stand-in ties hold state: a tie is no win.
    v = m["verdict"]
    assert set(v["baselines"]) == {"mean_action", "hold_state"}
    for name, b in v["baselines"].items():
        assert b["ratio"] == pytest.approx(m["policy"]["mse"] / m[name]["mse"], rel=1e-12)
        assert b["beats"] == (b["ratio"] < 1)
        assert b["ratio_per_step"] == pytest.approx(
            np.array(m["policy"]["mse_per_step"]) / np.array(m[name]["mse_per_step"]), rel=1e-12
        )
        assert b["beats_per_step"] == [r < 1 for r in b["ratio_per_step"]]
        assert b["steps"] == H and b["steps_won"] == sum(b["beats_per_step"])
        for group, g in b["groups"].items():
            assert g["ratio"] == pytest.approx(m["policy"]["groups"][group]["mse"] / m[name]["groups"][group]["mse"])
            assert g["beats"] == (g["ratio"] < 1)
    hold = v["baselines"]["hold_state"]
    assert hold["ratio"] == 1 and not hold["beats"] and hold["steps_won"] == 0
    assert v["beats_all_baselines"] is False
    assert v["summary"].startswith("The policy does not beat the ") and "hold-state 1x" in v["summary"]
    assert f"verdict: {v['summary']}" in caplog.text  # logged, and the exit status stayed 0

    # One task: per_task repeats the pooled numbers exactly, and there is nothing to swap.
    assert list(m["per_task"]) == ["0"] and m["instruction_swap"] is None
    task = m["per_task"]["0"]
    assert task["episodes"] == [4, 5] and task["num_chunks"] == m["num_chunks"]
    for key in ("policy", "mean_action", "hold_state", "verdict"):
        assert task[key] == m[key], key


LEFT = "Reach for the red target with the left hand."
OFFSET = 0.1  # what the stand-in adds to the left arm when told to use the left hand


class TextPolicy(HoldStatePolicy):
    """Holds the state, plus OFFSET on the left arm (dims 0-6) for a left-hand instruction, plus a little
    noise drawn from the generator (so that two noise draws differ, and the same draw does not)."""

    def predict(self, images, state, texts, generator=None):
        import torch

        held = super().predict(images, state, texts)
        left = np.array(["left hand" in t for t in texts], np.float64)[:, None, None]
        noise = torch.randn(held.shape, generator=generator, dtype=torch.float64).numpy()
        return held + OFFSET * left * (np.arange(held.shape[2]) < 7) + 0.01 * noise


def two_task_copy(copy_dataset) -> Path:
    """The converted dataset with episodes 1, 3 and 5 relabelled as task 1 (the left hand)."""
    dataset = copy_dataset()
    relabel(dataset, [1, 3, 5], 1, LEFT)
    return dataset


def test_per_task_metrics_and_instruction_swap(copy_dataset, monkeypatch, tmp_path):
    dataset = two_task_copy(copy_dataset)
    monkeypatch.setattr(posttrain.policy, "Policy", TextPolicy)
    make_checkpoint(tmp_path / "run", dataset)  # held out: 4 (task 0) and 5 (task 1)
    out = tmp_path / "eval"
    assert run_cli("eval", tmp_path / "run", dataset, "--output", out, "--stride", "3", "--batch-size", "4") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["per_task"]) == ["0", "1"]
    right_text = LeRobotDataset(dataset).tasks[0]
    for key, held, train, text in (("0", 4, [0, 2], right_text), ("1", 5, [1, 3], LEFT)):
        task = m["per_task"][key]
        assert task["task"] == text and task["task_index"] == int(key) and task["episodes"] == [held]
        state, action = episode(dataset, held)
        starts = range(0, len(action) - H + 1, 3)
        truth = np.stack([action[i : i + H] for i in starts])
        mean = np.concatenate([episode(dataset, e)[1] for e in train]).mean(axis=0)  # the task's own train mean
        hold = np.stack([np.repeat(state[i][None], H, axis=0) for i in starts])
        assert task["num_chunks"] == len(truth)
        assert task["mean_action"]["mse"] == pytest.approx(np.mean((mean - truth) ** 2), rel=1e-5)
        assert task["hold_state"]["mse"] == pytest.approx(np.mean((hold - truth) ** 2), rel=1e-6)
        assert "2 train episodes" in task["baselines"]["mean_action"]
        assert task["verdict"]["baselines"]["mean_action"]["ratio"] == pytest.approx(
            task["policy"]["mse"] / task["mean_action"]["mse"]
        )
    assert sum(t["num_chunks"] for t in m["per_task"].values()) == m["num_chunks"]

    # The swap moves the left arm by OFFSET, from the same noise: exactly OFFSET² on 7 of 26 dims.
    swap = m["instruction_swap"]
    assert swap["per_task"]["0"]["swapped_to"] == LEFT and swap["per_task"]["1"]["swapped_to"] == right_text
    assert swap["change_mse"] == pytest.approx(OFFSET**2 * 7 / 26, rel=1e-9)
    assert swap["change_mse_groups"]["left_arm"] == pytest.approx(OFFSET**2, rel=1e-9)
    assert swap["change_mse_groups"]["right_arm"] == pytest.approx(0, abs=1e-12)
    assert swap["resample_mse"] == pytest.approx(2 * 0.01**2, rel=0.1)  # two independent noise draws
    assert swap["change_vs_resample"] > 10 and swap["follows_instruction"]
    assert swap["swapped_mse"] > swap["policy_mse"] and swap["summary"].startswith("The policy follows")

    page = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", out / "metrics.json", "--output", page) == 0
    text = page.read_text()
    assert f"<td class='l'>1</td><td class='l'>{LEFT}</td><td class='l'>5</td>" in text
    assert "Instruction swap: does the policy follow the instruction?" in text
    assert f"<p class='ok'>{html.escape(swap['summary'])}</p>" in text and "How to read it" in text


def test_a_policy_that_ignores_the_instruction_does_not_follow_it(copy_dataset, fake_policy, tmp_path):
    dataset = two_task_copy(copy_dataset)
    make_checkpoint(tmp_path / "run", dataset)
    assert run_cli("eval", tmp_path / "run", dataset, "--output", tmp_path / "eval", "--stride", "4") == 0
    swap = json.loads((tmp_path / "eval" / "metrics.json").read_text())["instruction_swap"]
    assert swap["change_mse"] == 0 and not swap["follows_instruction"]
    assert swap["summary"].startswith("The policy does not follow the instruction")


def test_a_task_without_held_out_episodes_is_named(copy_dataset, monkeypatch, tmp_path):
    """The split holds out the last episodes: here both are of task 0, so task 1 is listed, unevaluated."""
    dataset = copy_dataset()
    relabel(dataset, [1, 3], 1, LEFT)
    monkeypatch.setattr(posttrain.policy, "Policy", TextPolicy)
    make_checkpoint(tmp_path / "run", dataset)
    out = tmp_path / "eval"
    assert run_cli("eval", tmp_path / "run", dataset, "--output", out, "--stride", "4") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["per_task"]["1"] == {
        "task_index": 1,
        "task": LEFT,
        "episodes": [],
        "num_chunks": 0,
        "policy": None,
        "mean_action": None,
        "hold_state": None,
        "verdict": None,
    }
    assert m["per_task"]["0"]["num_chunks"] == m["num_chunks"]
    assert list(m["instruction_swap"]["per_task"]) == ["0"]  # task 0's chunks, told task 1
    page = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", out / "metrics.json", "--output", page) == 0
    assert f"No held-out episode of task 1 ({LEFT})" in page.read_text()


def summaries(**errors) -> dict:
    """error_summary() of hand-made (chunks, H=4, D=4) error arrays: arm = dims 0-1, hand = dims 2-3."""
    return {
        name: error_summary(np.asarray(e, np.float64), [("arm", 0, 2), ("hand", 2, 4)]) for name, e in errors.items()
    }


def constant(arm: float, hand: float, steps=(1, 1, 1, 1)) -> np.ndarray:
    """Errors of 2 chunks: `arm` on dims 0-1 and `hand` on dims 2-3, scaled per horizon step."""
    per_dim = np.array([arm, arm, hand, hand])
    return np.broadcast_to(np.asarray(steps, float)[None, :, None] * per_dim, (2, 4, 4))


def test_verdict_wins_everywhere_and_loses_everywhere():
    s = summaries(policy=constant(0.1, 0.1), mean_action=constant(1.0, 1.0), hold_state=constant(0.01, 0.01))
    v = verdict(s["policy"], {"mean_action": s["mean_action"], "hold_state": s["hold_state"]})
    mean, hold = v["baselines"]["mean_action"], v["baselines"]["hold_state"]
    assert mean["ratio"] == pytest.approx(0.01) and mean["beats"] and mean["steps_won"] == 4 == mean["steps"]
    assert mean["groups"]["arm"] == {"ratio": pytest.approx(0.01), "beats": True}
    assert hold["ratio"] == pytest.approx(100) and not hold["beats"] and hold["steps_won"] == 0
    assert hold["beats_per_step"] == [False] * 4 and not hold["groups"]["hand"]["beats"]
    assert v["beats_all_baselines"] is False
    assert v["summary"] == (
        "The policy does not beat the hold-state baseline on the held-out episodes "
        "(policy/baseline MSE: mean-action 0.01x, hold-state 100x); it does not beat "
        "hold-state at any of the 4 horizon steps or in any action group."
    )
    # Without the losing baseline (hold state not applicable) the policy beats all there is.
    v = verdict(s["policy"], {"mean_action": s["mean_action"], "hold_state": None})
    assert list(v["baselines"]) == ["mean_action"] and v["beats_all_baselines"] is True
    assert v["summary"] == (
        "The policy beats the mean-action baseline on the held-out episodes (policy/baseline MSE: mean-action 0.01x)."
    )


def test_verdict_mixed_per_step_with_a_tie():
    # Baseline errors grow with the horizon (as holding the state does); the policy's are flat.
    s = summaries(policy=constant(0.2, 0.2), hold_state=constant(0.1, 0.1, steps=(1, 2, 3, 4)))
    hold = verdict(s["policy"], {"hold_state": s["hold_state"]})
    b = hold["baselines"]["hold_state"]
    assert b["ratio_per_step"] == pytest.approx([4, 1, 4 / 9, 1 / 4])
    assert b["ratio_per_step"][1] == 1 and b["beats_per_step"] == [False, False, True, True]  # tie: no win
    assert b["steps_won"] == 2 and b["ratio"] == pytest.approx(0.04 / 0.075) and b["beats"]
    assert hold["beats_all_baselines"] is True
    assert hold["summary"].endswith("; it does not beat hold-state at horizon steps 0-1 of 4.")


def test_verdict_mixed_per_group():
    # Wins on the arm, loses on the hand: overall a win against mean action, a loss against hold state.
    s = summaries(policy=constant(0.1, 0.3), mean_action=constant(0.5, 0.2), hold_state=constant(0.3, 0.05))
    v = verdict(s["policy"], {"mean_action": s["mean_action"], "hold_state": s["hold_state"]})
    mean, hold = v["baselines"]["mean_action"], v["baselines"]["hold_state"]
    assert mean["ratio"] == pytest.approx(0.05 / 0.145) and mean["beats"]
    assert hold["ratio"] == pytest.approx(0.05 / 0.04625) and not hold["beats"]
    for b, hand_ratio in ((mean, 0.09 / 0.04), (hold, 0.09 / 0.0025)):
        assert b["groups"]["arm"]["beats"] and not b["groups"]["hand"]["beats"]
        assert b["groups"]["hand"]["ratio"] == pytest.approx(hand_ratio)
    assert v["beats_all_baselines"] is False
    assert "it does not beat mean-action in hand; hold-state at any of the 4 horizon steps or in hand." in v["summary"]


def test_verdict_against_a_perfect_baseline_is_no_win():
    s = summaries(policy=constant(0.0, 0.1), hold_state=constant(0.0, 0.0))
    b = verdict(s["policy"], {"hold_state": s["hold_state"]})["baselines"]["hold_state"]
    assert b["ratio"] is None and not b["beats"] and b["groups"]["arm"] == {"ratio": None, "beats": False}


def test_all_checkpoints_are_evaluated(converted_dataset, fake_policy, tmp_path):
    run_dir = tmp_path / "run"
    make_checkpoint(run_dir, converted_dataset, step=10)
    make_checkpoint(run_dir, converted_dataset, step=20)  # DONE.json now names checkpoint-20
    (run_dir / "checkpoint-30").mkdir()  # incomplete (no trainer_state.json): not evaluated
    out = tmp_path / "eval"
    assert run_cli("eval", run_dir, converted_dataset, "--output", out, "--stride", "8", "--all-checkpoints") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["step"] == 20 and list(m["checkpoints"]) == ["checkpoint-20", "checkpoint-10"]
    assert m["checkpoints"]["checkpoint-10"]["beats_all_baselines"] is False  # the stand-in ties hold state
    assert (out / "checkpoints" / "checkpoint-10" / "metrics.json").is_file()


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_action_group_mismatch_names_both_files(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", converted_dataset)
    modality = json.loads((ckpt / "modality.json").read_text())
    modality["action"]["right_hand"]["end"] = 24  # a 24-D action embodiment
    (ckpt / "modality.json").write_text(json.dumps(modality))
    out = tmp_path / "eval"
    assert run_cli("eval", ckpt, converted_dataset, "--output", out) == 2
    err = last_error(capsys)
    assert err.startswith(f"error: {ckpt / 'modality.json'}: action groups")
    assert str(converted_dataset / "meta" / "modality.json") in err and "right_hand:20-24" in err
    assert not out.exists()


def test_action_dim_mismatch_names_both_files(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", converted_dataset)
    stats = json.loads((ckpt / "stats.json").read_text())
    stats["action"] = {k: v[:20] for k, v in stats["action"].items()}
    (ckpt / "stats.json").write_text(json.dumps(stats))
    assert run_cli("eval", ckpt, converted_dataset, "--output", tmp_path / "eval") == 2
    assert last_error(capsys) == (
        f"error: {ckpt / 'stats.json'}: action has 20 dims but {converted_dataset / 'meta' / 'info.json'} says 26"
    )


def test_missing_heldout_episodes(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", converted_dataset, heldout=(5, 99))
    assert run_cli("eval", ckpt, converted_dataset, "--output", tmp_path / "eval") == 2
    err = last_error(capsys)
    assert err.startswith(
        f"error: {ckpt / 'split.json'}: heldout_episodes [99] not in {converted_dataset / 'meta' / 'episodes.jsonl'}"
    )
    assert not (tmp_path / "eval").exists()


def test_gr00t_checkpoint_prints_the_isaac_gr00t_command(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = tmp_path / "gr00t_run" / "checkpoint-30000"
    (ckpt / "experiment_cfg").mkdir(parents=True)
    (ckpt / "processor_config.json").write_text("{}")
    (ckpt / "embodiment_id.json").write_text(json.dumps({"gr1": 20}))
    assert run_cli("eval", ckpt, converted_dataset, "--output", tmp_path / "eval") == 2
    err = last_error(capsys)
    assert "Isaac-GR00T checkpoint" in err
    assert (
        f"python gr00t/eval/open_loop_eval.py --model-path {ckpt.resolve()} --dataset-path "
        f"{converted_dataset.resolve()} --embodiment-tag GR1 --traj-ids 0 1 2 3 4 5 --action-horizon 16"
    ) in err
    assert not (tmp_path / "eval").exists()


def test_real_tiny_training_run_end_to_end(converted_dataset, tmp_path):
    """The real trainer and policy: train 20 steps, evaluate the final checkpoint twice (seeded:
    identical metrics), and render the run's report pages from the real outputs."""
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "train",
            "--dataset",
            converted_dataset,
            "--output",
            run_dir,
            "--preset",
            "tiny",
            "--max-steps",
            "20",
            "--save-steps",
            "10",
            "--global-batch-size",
            "8",
            "--holdout-episodes",
            "2",
            "--dataloader-num-workers",
            "0",
        )
        == 0
    )
    split = json.loads((run_dir / "checkpoint-20" / "split.json").read_text())
    first, second = tmp_path / "eval1", tmp_path / "eval2"
    for out in (first, second):
        assert run_cli("eval", run_dir, converted_dataset, "--output", out, "--stride", "4", "--device", "cpu") == 0
    m = json.loads((first / "metrics.json").read_text())
    assert m["step"] == 20 and m["heldout_episodes"] == split["heldout_episodes"]
    lengths = {e["episode_index"]: e["length"] for e in LeRobotDataset(converted_dataset).episodes}
    assert m["num_chunks"] == sum(len(range(0, lengths[e] - H + 1, 4)) for e in split["heldout_episodes"])
    assert np.isfinite(m["policy"]["mse"]) and m["policy"]["mse"] > 0
    assert m["latency_ms_per_chunk"]["device"] == "cpu"
    assert json.loads((second / "metrics.json").read_text())["policy"] == m["policy"]  # seeded noise

    curves, page = tmp_path / "curves.png", tmp_path / "metrics.html"
    assert run_cli("report", "training", run_dir, "--output", curves) == 0
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert run_cli("report", "metrics", first / "metrics.json", "--output", page) == 0
    assert f"<td>{m['policy']['mse']:.4g}</td>" in page.read_text()
