"""`posttrain report`: the pages `snakemake --report` shows, built from real stage outputs."""

from __future__ import annotations

import base64
import json
import re

import pytest

from conftest import run_cli
from posttrain.lerobot import LeRobotDataset
from posttrain.report import read_scalars

PNG = b"\x89PNG\r\n\x1a\n"


def test_dataset_page_shows_summary_and_stats(converted_dataset, tmp_path):
    out = tmp_path / "dataset.html"
    assert run_cli("report", "dataset", converted_dataset, "--output", out) == 0
    text = out.read_text()
    ds = LeRobotDataset(converted_dataset)
    frames = sum(e["length"] for e in ds.episodes)
    assert f"<td class='l'>episodes</td><td class='l'>{ds.num_episodes}</td>" in text
    assert f"<td class='l'>frames</td><td class='l'>{frames}</td>" in text
    assert "observation.images.ego_view" in text and "h264" in text
    mean0 = ds.stats["action"]["mean"][0]
    assert f"<td>{mean0:.4g}</td>" in text  # stats.json values are tabulated
    assert text.count("<h4>") == len(ds.stats)  # one table per stats.json column


def test_video_page_inlines_the_episode_mp4(converted_dataset, tmp_path):
    out = tmp_path / "video.html"
    assert run_cli("report", "video", converted_dataset, "--episode", "1", "--output", out) == 0
    match = re.search(r"<video controls[^>]* src='data:video/mp4;base64,([A-Za-z0-9+/=]+)'", out.read_text())
    assert match
    mp4 = LeRobotDataset(converted_dataset).video_path(1, "observation.images.ego_view")
    assert base64.b64decode(match.group(1)) == mp4.read_bytes()


def test_video_page_of_missing_episode_fails(converted_dataset, tmp_path, capsys):
    assert run_cli("report", "video", converted_dataset, "--episode", "99", "--output", tmp_path / "v.html") == 2
    assert capsys.readouterr().err.strip() == (f"error: {converted_dataset / 'meta' / 'episodes.jsonl'}: no episode 99")
    assert not (tmp_path / "v.html").exists()


def test_training_curves_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run_dir = tmp_path / "run"
    writer = SummaryWriter(run_dir / "tensorboard")
    for step in range(1, 31):
        writer.add_scalar("train/loss", 1.0 / step, step)
        writer.add_scalar("train/learning_rate", 3e-4 * step / 30, step)
    writer.close()
    scalars = read_scalars(run_dir / "tensorboard")
    assert sorted(scalars) == ["train/learning_rate", "train/loss"]
    steps, values = scalars["train/loss"]
    assert list(steps) == list(range(1, 31)) and values[-1] == pytest.approx(1 / 30)
    out = tmp_path / "curves.png"
    assert run_cli("report", "training", run_dir, "--output", out) == 0
    assert out.read_bytes()[:8] == PNG


def test_training_curves_without_events_fail(tmp_path, capsys):
    (tmp_path / "run" / "tensorboard").mkdir(parents=True)
    assert run_cli("report", "training", tmp_path / "run", "--output", tmp_path / "c.png") == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'run' / 'tensorboard'}: no TensorBoard event files"


def test_verify_page_shows_results_and_previews(tmp_path):
    verify = tmp_path / "verify"
    (verify / "preview").mkdir(parents=True)
    (verify / "preview" / "episode_000000.png").write_bytes(PNG + b"fake")
    report = {
        "passed": False,
        "dataset": "x",
        "episodes": [
            {"episode_index": 0, "psnr_db": 41.5, "ok": True},
            {"episode_index": 1, "psnr_db": 12.0, "ok": False},
        ],
    }
    (verify / "report.json").write_text(json.dumps(report))
    out = tmp_path / "verify.html"
    assert run_cli("report", "verify", verify, "--output", out) == 0
    text = out.read_text()
    assert "<p class='fail'>FAILED</p>" in text
    assert "<td class='l'>1</td><td class='l'>12</td><td class='l'>False</td>" in text
    assert base64.b64encode(PNG + b"fake").decode() in text and "episode_000000.png" in text


def block(v):
    return {
        "mse": v,
        "mae": v / 2,
        "mse_per_step": [v] * 16,
        "mae_per_step": [v / 2] * 16,
        "groups": {"left_arm": {"mse": v * 3, "mae": v}},
    }


def write_metrics(path, hold_state=None, verdict=None):
    """A metrics.json as `posttrain eval` writes it, by hand: policy MSE 0.125, mean action 0.5."""
    metrics = {
        "checkpoint": "run/checkpoint-20",
        "step": 20,
        "heldout_episodes": [4, 5],
        "action_horizon": 16,
        "stride": 1,
        "num_chunks": 70,
        "units": "raw",
        "policy": block(0.125),
        "mean_action": block(0.5),
        "hold_state": hold_state,
        "baselines": {"mean_action": "train mean", "hold_state": "not applicable"},
        "per_episode": {"4": {"chunks": 35, "policy_mse": 0.1, "mean_action_mse": 0.4, "hold_state_mse": None}},
        "latency_ms_per_chunk": {"mean": 2.5, "p50": 2.0, "p90": 4.0, "batch_size": 8},
    }
    if verdict is not None:
        metrics["verdict"] = verdict
    path.write_text(json.dumps(metrics))
    return path


def baseline_verdict(ratio: float, steps_won: int) -> dict:
    """One baseline's verdict: overall `ratio`; the policy wins the first `steps_won` horizon steps (ratio 0.5)."""
    return {
        "ratio": ratio,
        "beats": ratio < 1,
        "steps_won": steps_won,
        "steps": 16,
        "ratio_per_step": [0.5 if i < steps_won else 2.0 for i in range(16)],
        "beats_per_step": [i < steps_won for i in range(16)],
        "groups": {"left_arm": {"ratio": ratio, "beats": ratio < 1}},
    }


def test_metrics_page_tabulates_policy_and_baselines(tmp_path):
    src = write_metrics(tmp_path / "metrics.json")  # written before the verdict existed
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0
    text = out.read_text()
    assert "<td class='l'>policy</td><td>0.125</td><td>0.0625</td>" in text
    assert "<td class='l'>mean action</td><td>0.5</td>" in text
    assert "hold current state</td>" not in text  # not applicable -> no row, explained under Baselines
    assert "<td class='l'>left_arm</td><td>0.375</td>" in text
    assert "<td>2.5</td><td>2</td><td>4</td><td>8</td>" in text
    assert "No verdict in metrics.json" in text


def test_metrics_page_leads_with_a_warning_when_the_policy_loses(tmp_path):
    summary = (
        "The policy does not beat the hold-state baseline (policy/baseline MSE: mean-action 0.25x, hold-state 2.5x)."
    )
    verdict = {
        "rule": "ratio < 1",
        "beats_all_baselines": False,
        "summary": summary,
        "baselines": {"mean_action": baseline_verdict(0.25, 16), "hold_state": baseline_verdict(2.5, 3)},
    }
    src = write_metrics(tmp_path / "metrics.json", hold_state=block(0.05), verdict=verdict)
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0  # losing is information, not a failure
    text = out.read_text()
    body = text[text.index("<body>") :]
    warning = "<div class='banner fail'><p>Warning: the policy does not beat every baseline.</p>"
    assert body.index(warning) < body.index("<table")  # the page leads with it
    assert f"<p>{summary}</p>" in text and "train.state_dropout_prob" in text
    assert "<td class='l'>hold current state</td><td>2.5</td><td>no</td><td>3 of 16</td><td>0 of 1</td>" in text
    assert "<td class='l'>mean action</td><td>0.25</td><td>yes</td><td>16 of 16</td><td>1 of 1</td>" in text
    # Per horizon step: step, policy MSE, then ratio and beats per baseline.
    assert "<td class='l'>2</td><td>0.125</td><td>0.5</td><td>yes</td><td>0.5</td><td>yes</td>" in text
    assert "<td class='l'>3</td><td>0.125</td><td>0.5</td><td>yes</td><td>2</td><td>no</td>" in text


@pytest.mark.parametrize("steps_won, banner", [(16, "ok"), (12, "warn")])
def test_metrics_page_without_an_overall_loss_has_no_warning(tmp_path, steps_won, banner):
    """Beating every baseline overall: no warning; a note (not green) when some horizon steps are lost."""
    summary = "The policy beats the mean-action baseline (policy/baseline MSE: mean-action 0.25x)."
    verdict = {
        "rule": "ratio < 1",
        "beats_all_baselines": True,
        "summary": summary,
        "baselines": {"mean_action": baseline_verdict(0.25, steps_won)},
    }
    src = write_metrics(tmp_path / "metrics.json", verdict=verdict)
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0
    text = out.read_text()
    assert f"<p class='banner {banner}'>{summary}</p>" in text
    assert "Warning" not in text and "banner fail" not in text


def test_metrics_page_names_a_task_the_policy_loses(tmp_path):
    """Two tasks: one row per task; a task that loses gets a note even when the pooled verdict wins."""
    src = write_metrics(tmp_path / "metrics.json")
    m = json.loads(src.read_text())

    def task(index, text, ratio):
        verdict = {
            "beats_all_baselines": ratio < 1,
            "summary": "",
            "baselines": {"mean_action": baseline_verdict(ratio, 16)},
        }
        return {
            "task_index": index,
            "task": text,
            "episodes": [4 + index],
            "num_chunks": 35,
            "policy": block(0.125),
            "mean_action": block(0.125 / ratio),
            "hold_state": None,
            "verdict": verdict,
        }

    m["per_task"] = {"0": task(0, "right hand", 0.5), "1": task(1, "left hand", 1.25)}
    src.write_text(json.dumps(m))
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0
    text = out.read_text()
    row = "<td class='l'>{}</td><td class='l'>{}</td><td class='l'>{}</td><td>35</td><td>0.125</td>{}"
    assert row.format(0, "right hand", 4, "<td>0.25</td><td>0.5</td><td>yes</td>") in text
    assert row.format(1, "left hand", 5, "<td>0.1</td><td>1.25</td><td>no</td>") in text
    assert "does not beat every baseline on task 1 (left hand)" in text
    assert "Instruction swap" not in text  # no swap check in this metrics.json


def test_metrics_page_of_one_task_has_no_task_table(tmp_path):
    src = write_metrics(tmp_path / "metrics.json")
    m = json.loads(src.read_text())
    m["per_task"] = {
        "0": {
            "task_index": 0,
            "task": "reach",
            "episodes": [4],
            "num_chunks": 70,
            "policy": block(0.125),
            "mean_action": block(0.5),
            "hold_state": None,
            "verdict": None,
        }
    }
    m["instruction_swap"] = None
    src.write_text(json.dumps(m))
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0
    assert "Per task" not in out.read_text()  # its numbers are the pooled ones
