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
    assert capsys.readouterr().err.strip() == (
        f"error: {converted_dataset / 'meta' / 'episodes.jsonl'}: no episode 99")
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
    report = {"passed": False, "dataset": "x", "episodes": [{"episode_index": 0, "psnr_db": 41.5, "ok": True},
                                                             {"episode_index": 1, "psnr_db": 12.0, "ok": False}]}
    (verify / "report.json").write_text(json.dumps(report))
    out = tmp_path / "verify.html"
    assert run_cli("report", "verify", verify, "--output", out) == 0
    text = out.read_text()
    assert "<p class='fail'>FAILED</p>" in text
    assert "<td class='l'>1</td><td class='l'>12</td><td class='l'>False</td>" in text
    assert base64.b64encode(PNG + b"fake").decode() in text and "episode_000000.png" in text


def test_metrics_page_tabulates_policy_and_baselines(tmp_path):
    def block(v):
        return {"mse": v, "mae": v / 2, "mse_per_step": [v] * 16, "mae_per_step": [v / 2] * 16,
                "groups": {"left_arm": {"mse": v * 3, "mae": v}}}
    metrics = {"checkpoint": "run/checkpoint-20", "step": 20, "heldout_episodes": [4, 5], "action_horizon": 16,
               "stride": 1, "num_chunks": 70, "units": "raw", "policy": block(0.125), "mean_action": block(0.5),
               "hold_state": None, "baselines": {"mean_action": "train mean", "hold_state": "not applicable"},
               "per_episode": {"4": {"chunks": 35, "policy_mse": 0.1, "mean_action_mse": 0.4, "hold_state_mse": None}},
               "latency_ms_per_chunk": {"mean": 2.5, "p50": 2.0, "p90": 4.0, "batch_size": 8}}
    src = tmp_path / "metrics.json"
    src.write_text(json.dumps(metrics))
    out = tmp_path / "metrics.html"
    assert run_cli("report", "metrics", src, "--output", out) == 0
    text = out.read_text()
    assert "<td class='l'>policy</td><td>0.125</td><td>0.0625</td>" in text
    assert "<td class='l'>mean action</td><td>0.5</td>" in text
    assert "hold current state</td>" not in text  # not applicable -> no row, explained under Baselines
    assert "<td class='l'>left_arm</td><td>0.375</td>" in text
    assert "<td>2.5</td><td>2</td><td>4</td><td>8</td>" in text
