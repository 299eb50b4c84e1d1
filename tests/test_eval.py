"""`posttrain eval`: metrics checked against an independent computation, with a stand-in policy.

The stand-in predicts "hold the current state", so the policy's errors must equal the hold-state
baseline exactly, and both must equal what this file computes from the parquet files itself.
The real model is exercised end to end by the workflow test (a tiny training run).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import posttrain.policy
from conftest import run_cli
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
    return (np.array(table.column("observation.state").to_pylist(), np.float64),
            np.array(table.column("action").to_pylist(), np.float64))


def test_eval_metrics_match_independent_computation(converted_dataset, fake_policy, tmp_path):
    run_dir = tmp_path / "run"
    ckpt = make_checkpoint(run_dir, converted_dataset)
    out = tmp_path / "eval"
    # A run directory resolves to DONE.json's final checkpoint.
    assert run_cli("eval", run_dir, converted_dataset, "--output", out, "--stride", "4", "--episodes-to-plot", "1",
                   "--batch-size", "5") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == str(ckpt) and m["step"] == 20 and m["heldout_episodes"] == [4, 5]

    # Independent computation of the hold-state and mean-action errors from the parquet files.
    hold_err, mean_err = [], []
    mean_action = np.concatenate([episode(converted_dataset, e)[1] for e in range(4)]).mean(axis=0)
    for e in (4, 5):
        state, action = episode(converted_dataset, e)
        for i in range(0, len(action) - H + 1, 4):
            hold_err.append(state[i][None, :] - action[i:i + H])
            mean_err.append(mean_action[None, :] - action[i:i + H])
    hold_err, mean_err = np.stack(hold_err), np.stack(mean_err)
    assert m["num_chunks"] == len(hold_err)
    assert m["hold_state"]["mse"] == pytest.approx(np.mean(hold_err ** 2), rel=1e-6)
    assert m["hold_state"]["mae"] == pytest.approx(np.mean(np.abs(hold_err)), rel=1e-6)
    assert m["hold_state"]["mse_per_step"] == pytest.approx(np.mean(hold_err ** 2, axis=(0, 2)), rel=1e-6)
    assert m["hold_state"]["groups"]["right_hand"]["mse"] == pytest.approx(np.mean(hold_err[:, :, 20:26] ** 2),
                                                                           rel=1e-6)
    assert m["mean_action"]["mse"] == pytest.approx(np.mean(mean_err ** 2), rel=1e-5)
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


def test_all_checkpoints_are_evaluated(converted_dataset, fake_policy, tmp_path):
    run_dir = tmp_path / "run"
    make_checkpoint(run_dir, converted_dataset, step=10)
    make_checkpoint(run_dir, converted_dataset, step=20)  # DONE.json now names checkpoint-20
    (run_dir / "checkpoint-30").mkdir()  # incomplete (no trainer_state.json): not evaluated
    out = tmp_path / "eval"
    assert run_cli("eval", run_dir, converted_dataset, "--output", out, "--stride", "8", "--all-checkpoints") == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["step"] == 20 and list(m["checkpoints"]) == ["checkpoint-20", "checkpoint-10"]
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
    assert last_error(capsys) == (f"error: {ckpt / 'stats.json'}: action has 20 dims but "
                                  f"{converted_dataset / 'meta' / 'info.json'} says 26")


def test_missing_heldout_episodes(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "run", converted_dataset, heldout=(5, 99))
    assert run_cli("eval", ckpt, converted_dataset, "--output", tmp_path / "eval") == 2
    err = last_error(capsys)
    assert err.startswith(f"error: {ckpt / 'split.json'}: heldout_episodes [99] not in "
                          f"{converted_dataset / 'meta' / 'episodes.jsonl'}")
    assert not (tmp_path / "eval").exists()


def test_gr00t_checkpoint_prints_the_isaac_gr00t_command(converted_dataset, fake_policy, tmp_path, capsys):
    ckpt = tmp_path / "gr00t_run" / "checkpoint-30000"
    (ckpt / "experiment_cfg").mkdir(parents=True)
    (ckpt / "processor_config.json").write_text("{}")
    (ckpt / "embodiment_id.json").write_text(json.dumps({"gr1": 20}))
    assert run_cli("eval", ckpt, converted_dataset, "--output", tmp_path / "eval") == 2
    err = last_error(capsys)
    assert "Isaac-GR00T checkpoint" in err
    assert (f"python gr00t/eval/open_loop_eval.py --model-path {ckpt.resolve()} --dataset-path "
            f"{converted_dataset.resolve()} --embodiment-tag GR1 --traj-ids 0 1 2 3 4 5 --action-horizon 16") in err
    assert not (tmp_path / "eval").exists()


def test_real_tiny_training_run_end_to_end(converted_dataset, tmp_path):
    """The real trainer and policy: train 20 steps, evaluate the final checkpoint twice (seeded:
    identical metrics), and render the run's report pages from the real outputs."""
    run_dir = tmp_path / "run"
    assert run_cli("train", "--dataset", converted_dataset, "--output", run_dir, "--preset", "tiny",
                   "--max-steps", "20", "--save-steps", "10", "--global-batch-size", "8",
                   "--holdout-episodes", "2", "--dataloader-num-workers", "0") == 0
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
