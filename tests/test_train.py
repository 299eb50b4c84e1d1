"""`posttrain train` (native backend): samples, deterministic order, 2-process equivalence, resume
after SIGKILL, checkpoint rotation, bad inputs, and that the tiny policy learns to use vision.

Training runs go through the real CLI in subprocesses (accelerate's state is per process); the
dataset is the workflow's default synthetic set (16 episodes × 70-100 frames, 64²).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_recipe import default_recipe

from conftest import ENV, run_cli, train_command
from posttrain.data import StepSampler, TrainingSamples, color_jitter, split_episodes
from posttrain.errors import PosttrainError
from posttrain.lerobot import ACTION, STATE, LeRobotDataset
from posttrain.policy import Normalizer, Policy, PolicyConfig

JITTER = ["--color-jitter-params", "brightness", "0.3", "contrast", "0.4", "saturation", "0.5", "hue", "0.08"]
# Small runs: 8 samples per step, a checkpoint every 6 steps, every step logged.
SMALL_RUN = [
    "--global-batch-size",
    "8",
    "--max-steps",
    "24",
    "--save-steps",
    "6",
    "--save-total-limit",
    "2",
    "--logging-steps",
    "1",
    "--learning-rate",
    "1e-3",
    *JITTER,
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """The workflow's default synthetic dataset: 16 episodes × 70-100 frames, 64² images, with stats."""
    root = tmp_path_factory.mktemp("train_data")
    assert (
        run_cli(
            "synth",
            root / "raw.hdf5",
            "--episodes",
            "16",
            "--min-frames",
            "70",
            "--max-frames",
            "100",
            "--image-size",
            "64",
            "--seed",
            "0",
        )
        == 0
    )
    assert run_cli("convert", "--input", root / "raw.hdf5", "--output", root / "lerobot", "--workers", "2") == 0
    assert run_cli("stats", root / "lerobot") == 0
    return root / "lerobot"


def train(dataset: Path, output: Path, *extra: str, processes: int = 1) -> subprocess.CompletedProcess:
    result = subprocess.run(
        train_command(dataset, output, *extra, processes=processes),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def trainer_state(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "trainer_state.json").read_text())


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(wa) == set(wb)
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= atol, f"weights differ by {worst}"


def losses(checkpoint: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer_state(checkpoint)["log_history"]}


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory) -> Path:
    """An uninterrupted 1-process run of SMALL_RUN (with one DataLoader worker)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(dataset, out, *SMALL_RUN, "--dataloader-num-workers", "1")
    return out


# --- samples and order -------------------------------------------------------------------------
def test_sampler_splits_the_same_global_batch_over_processes_and_accumulation():
    one = StepSampler(100, 8, 1, 0, 1, seed=5, start_step=0, max_steps=40)
    for step in (0, 7, 13, 39):
        expected = one.micro_batches(step)[0]
        shards = [
            StepSampler(100, 2, 2, rank, 2, seed=5, start_step=0, max_steps=40).micro_batches(step) for rank in (0, 1)
        ]
        # micro-batch k of rank r holds global slice (k * 2 + r)
        assert [x for k in range(2) for r in range(2) for x in shards[r][k]] == expected
    # Every epoch visits each sample once (positions 0..99, 100..199, ...), in a seed-dependent order.
    visited = [index for step in range(25) for index, _ in one.micro_batches(step)[0]]
    assert sorted(visited[:100]) == list(range(100)) and sorted(visited[100:200]) == list(range(100))
    assert visited[:100] != visited[100:200]
    assert [i for i, _ in StepSampler(100, 8, 1, 0, 1, 6, 0, 1).micro_batches(0)[0]] != [
        i for i, _ in one.micro_batches(0)[0]
    ]
    # Resuming at step s yields exactly the batches of steps s.. of a run from 0.
    assert list(StepSampler(100, 8, 1, 0, 1, 5, 10, 40)) == list(one)[10:]


def test_training_sample_matches_the_dataset(dataset):
    ds = LeRobotDataset(dataset)
    split = split_episodes(ds, 2)
    assert split == {"train_episodes": list(range(14)), "heldout_episodes": [14, 15]}
    config = PolicyConfig.from_preset("tiny")
    normalizer = Normalizer(ds.stats, ds.modality, config)
    samples = TrainingSamples(ds, split["train_episodes"], normalizer, seed=0)
    lengths = [row["length"] for row in ds.episodes[:14]]
    assert len(samples) == sum(n - 15 for n in lengths)  # start steps 0..len-16, no padding

    index = lengths[0] - 15 + 7  # episode 1, start step 7
    sample = samples[(index, 123)]
    columns = ds.read_episode(1, [STATE, ACTION])
    frames = ds.read_video(1, "observation.images.ego_view", size=(64, 64))
    np.testing.assert_allclose(sample["action"].numpy(), normalizer.normalize_action(columns[ACTION][7:23]))
    np.testing.assert_allclose(sample["state"].numpy(), normalizer.encode_state(columns[STATE][7]), atol=1e-6)
    np.testing.assert_allclose(sample["images"][0].permute(1, 2, 0).numpy(), frames[7] / 255, atol=1e-6)
    assert sample["tokens"][0] == 1 and sample["tokens"].dtype == torch.long
    assert sample["noise"].shape == (16, 26) and 0 <= float(sample["time"]) <= 0.999
    # Everything random about a sample follows its seed: same seed, same sample; other seed, other draws.
    again, other = samples[(index, 123)], samples[(index, 124)]
    assert all(torch.equal(sample[k], again[k]) for k in sample)
    assert not torch.equal(sample["noise"], other["noise"])

    jittered = TrainingSamples(
        ds,
        split["train_episodes"],
        normalizer,
        seed=0,
        color_jitter_params={"brightness": 0.3, "contrast": 0.4, "saturation": 0.5, "hue": 0.08},
    )
    assert not torch.allclose(jittered[(index, 123)]["images"], sample["images"])
    assert torch.equal(jittered[(index, 123)]["action"], sample["action"])


def test_state_dropout_hides_the_state_of_a_seeded_share_of_samples(dataset):
    ds = LeRobotDataset(dataset)
    config = PolicyConfig.from_preset("tiny")
    samples = TrainingSamples(ds, [0], Normalizer(ds.stats, ds.modality, config), state_dropout_prob=0.5, seed=0)
    dropped = [not samples[(7, seed)]["state"].any() for seed in range(200)]
    assert 70 < sum(dropped) < 130
    assert dropped == [not samples[(7, seed)]["state"].any() for seed in range(200)]  # a function of the seed
    minmax = PolicyConfig.from_preset("tiny", state_encoding="minmax")
    with pytest.raises(PosttrainError, match="--state-dropout-prob needs the sincos state encoding"):
        TrainingSamples(ds, [0], Normalizer(ds.stats, ds.modality, minmax), state_dropout_prob=0.5)


def test_color_jitter_is_identity_at_zero_and_stays_in_range():
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    zero = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    torch.testing.assert_close(color_jitter(images, zero, rng), images)
    strong = {"brightness": 0.9, "contrast": 0.9, "saturation": 0.9, "hue": 0.5}
    out = color_jitter(images, strong, np.random.default_rng(1))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, images)
    torch.testing.assert_close(out, color_jitter(images, strong, np.random.default_rng(1)))
    # A pure hue turn keeps grey pixels grey (the rotation is about the luma axis).
    grey = torch.full((1, 3, 2, 2), 0.5)
    torch.testing.assert_close(color_jitter(grey, {"hue": 0.25}, np.random.default_rng(2)), grey, atol=1e-5, rtol=0)


# --- bad inputs --------------------------------------------------------------------------------
def error_of(capsys, *args) -> str:
    assert run_cli("train", *args) == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_bad_inputs_fail_with_one_clear_line(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    no_stats = tmp_path / "no_stats"
    shutil.copytree(dataset, no_stats)
    (no_stats / "meta" / "stats.json").unlink()
    assert (
        error_of(capsys, "--dataset", no_stats, "--output", out)
        == f"error: {no_stats / 'meta' / 'stats.json'}: missing; run `posttrain stats {no_stats}` first"
    )

    bad_stats = tmp_path / "bad_stats"
    shutil.copytree(dataset, bad_stats)
    stats = json.loads((bad_stats / "meta" / "stats.json").read_text())
    stats["action"]["q99"] = stats["action"]["q99"][:25]
    (bad_stats / "meta" / "stats.json").write_text(json.dumps(stats))
    assert (
        error_of(capsys, "--dataset", bad_stats, "--output", out)
        == f"error: {bad_stats / 'meta' / 'stats.json'}: action.q99: shape (25,), expected (26,)"
    )

    bad_modality = tmp_path / "bad_modality"
    shutil.copytree(dataset, bad_modality)
    modality = json.loads((bad_modality / "meta" / "modality.json").read_text())
    modality["video"]["ego_view"]["original_key"] = "observation.images.nope"
    (bad_modality / "meta" / "modality.json").write_text(json.dumps(modality))
    assert error_of(capsys, "--dataset", bad_modality, "--output", out) == (
        f"error: {bad_modality / 'meta' / 'modality.json'}: video.ego_view: 'observation.images.nope' is not a "
        "video feature of meta/info.json ['observation.images.ego_view']"
    )

    assert (
        error_of(capsys, "--dataset", dataset, "--output", out, "--holdout-episodes", "16")
        == f"error: {dataset / 'meta' / 'episodes.jsonl'}: 16 episodes; holding out 16 needs at least 17"
    )
    assert (
        error_of(
            capsys,
            "--dataset",
            dataset,
            "--output",
            out,
            "--global-batch-size",
            "9",
            "--gradient-accumulation-steps",
            "2",
        )
        == "error: --global-batch-size 9 is not divisible by 1 process(es) × 2 gradient-accumulation step(s)"
    )
    assert (
        error_of(capsys, "--dataset", dataset, "--output", out, "--color-jitter-params", "brightness")
        == "error: --color-jitter-params: expected KEY VALUE pairs, got brightness"
    )
    assert (
        error_of(capsys, "--dataset", dataset, "--output", out, "--color-jitter-params", "gamma", "0.1")
        == "error: --color-jitter-params: unknown key 'gamma', expected one of brightness, contrast, saturation, hue"
    )
    assert (
        error_of(
            capsys,
            "--dataset",
            dataset,
            "--output",
            out,
            "--no-tune-llm",
            "--no-tune-visual",
            "--no-tune-projector",
            "--no-tune-diffusion-model",
        )
        == "error: nothing to train: every --tune-* flag is off"
    )
    if importlib.util.find_spec("wandb") is None:  # not a dependency: the flag must say so, not crash
        assert (
            error_of(capsys, "--dataset", dataset, "--output", out, "--use-wandb")
            == "error: --use-wandb: the wandb package is not installed (pip install wandb, or --no-use-wandb)"
        )
    assert not (out / "DONE.json").exists() and not list(out.glob("checkpoint-*"))


def test_episode_files_that_disagree_with_the_metadata_fail_clearly(dataset, tmp_path, capsys):
    from posttrain.video import encode_video

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    ds = LeRobotDataset(broken)
    rows = ds.episodes[0]["length"]
    video = ds.video_path(0, "observation.images.ego_view")
    encode_video(video, ds.read_video(0, "observation.images.ego_view")[: rows - 5], fps=ds.fps)
    only_episode_0 = ["--holdout-episodes", "15", "--max-steps", "1", "--global-batch-size", "4"]
    for workers in ("0", "1"):  # the message is the same when a DataLoader worker raises it
        assert (
            error_of(
                capsys,
                "--dataset",
                broken,
                "--output",
                tmp_path / "run",
                *only_episode_0,
                "--dataloader-num-workers",
                workers,
            )
            == f"error: {video}: episode 0: {rows - 5} video frames, expected {rows} (parquet rows)"
        )
    episodes = (
        (broken / "meta" / "episodes.jsonl").read_text().replace(f'"length": {rows}}}', f'"length": {rows + 1}}}', 1)
    )
    (broken / "meta" / "episodes.jsonl").write_text(episodes)
    assert (
        error_of(capsys, "--dataset", broken, "--output", tmp_path / "run", *only_episode_0)
        == f"error: {ds.parquet_path(0)}: episode 0: {rows} rows, meta/episodes.jsonl says length {rows + 1}"
    )


def test_episodes_shorter_than_the_horizon_give_no_samples(tmp_path, capsys):
    assert (
        run_cli(
            "synth",
            tmp_path / "short.hdf5",
            "--episodes",
            "3",
            "--min-frames",
            "10",
            "--max-frames",
            "14",
            "--image-size",
            "32",
            "--seed",
            "1",
        )
        == 0
    )
    assert run_cli("convert", "--input", tmp_path / "short.hdf5", "--output", tmp_path / "short") == 0
    assert run_cli("stats", tmp_path / "short") == 0
    capsys.readouterr()
    message = error_of(capsys, "--dataset", tmp_path / "short", "--output", tmp_path / "run", "--holdout-episodes", "1")
    assert message == (
        f"error: {tmp_path / 'short'}: no training samples: every one of episodes [0, 1] is shorter "
        "than the action horizon 16 (GR00T does not pad)"
    )


# --- multi-process, resume, rotation -----------------------------------------------------------
@pytest.mark.slow
def test_two_processes_match_one_process(dataset, reference_run, tmp_path):
    """2 processes (gloo) × 2 per device × 2 accumulation steps = the reference's 8 samples per step."""
    out = tmp_path / "run"
    train(dataset, out, *SMALL_RUN, "--gradient-accumulation-steps", "2", "--dataloader-num-workers", "0", processes=2)
    final, reference = out / "checkpoint-24", reference_run / "checkpoint-24"
    state = trainer_state(final)
    assert (
        state["num_processes"] == 2
        and json.loads((final / "train_config.json").read_text())["per_device_batch_size"] == 2
    )
    checksums = state["weight_checksum_per_process"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # ranks hold identical weights
    ref_losses, got = losses(reference), losses(final)
    assert list(got) == list(range(1, 25))
    np.testing.assert_allclose([got[s] for s in got], [ref_losses[s] for s in got], rtol=1e-4)
    assert_same_weights(final, reference, atol=1e-4)
    assert Policy.from_checkpoint(final).config.action_horizon == 16  # eval can load it


@pytest.mark.slow
def test_resume_after_kill_continues_the_same_run(dataset, reference_run, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        train_command(dataset, out, *SMALL_RUN, "--dataloader-num-workers", "1"),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint-6" / "trainer_state.json").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no checkpoint-6 before exit/timeout"
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and its DataLoader worker
    finally:
        process.wait()
    assert not (out / "DONE.json").exists(), "the run finished before it could be killed"
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept and kept[-1] < 24
    # A checkpoint directory without trainer_state.json (not ours: we write through a temporary
    # folder) is not resumed: it is set aside, not deleted.
    (out / "checkpoint-23").mkdir()
    (out / "checkpoint-23" / "model.safetensors").write_bytes(b"partial")

    resumed = train(dataset, out, *SMALL_RUN, "--dataloader-num-workers", "1")
    assert f"resumed from {out / f'checkpoint-{kept[-1]}'} (step {kept[-1]})" in resumed.stderr
    final, reference = out / "checkpoint-24", reference_run / "checkpoint-24"
    assert json.loads((out / "DONE.json").read_text())["final_checkpoint"] == "checkpoint-24"
    # The loss curve has every step once, and equals the uninterrupted run's.
    got, expected = losses(final), losses(reference)
    assert list(got) == list(range(1, 25))
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=1e-5)
    assert_same_weights(final, reference, atol=1e-5)
    # --save-total-limit 2: only the two newest complete checkpoints remain.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-24"]
    assert (next(out.glob("superseded/*-unknown")) / "checkpoint-23" / "model.safetensors").read_bytes() == b"partial"
    assert not list(out.glob(".checkpoint-*"))
    assert sorted(p.name for p in reference_run.glob("checkpoint-*")) == ["checkpoint-18", "checkpoint-24"]
    files = {p.name for p in final.iterdir()}
    assert {
        "model.safetensors",
        "model_config.json",
        "stats.json",
        "modality.json",
        "split.json",
        "train_config.json",
        "identity.json",
        "manifest.json",
        "trainer_state.json",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
    } <= files
    assert list((out / "tensorboard").iterdir())


@pytest.mark.slow
def test_rerun_of_a_finished_run_only_rewrites_done(dataset, reference_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    before = (out / "checkpoint-24" / "model.safetensors").read_bytes()
    (out / "DONE.json").unlink()
    result = train(dataset, out, *SMALL_RUN, "--dataloader-num-workers", "0")
    assert "resumed from" in result.stderr and "(step 24)" in result.stderr
    assert json.loads((out / "DONE.json").read_text())["step"] == 24
    assert (out / "checkpoint-24" / "model.safetensors").read_bytes() == before

    # Other run-defining options (here the learning rate and steps): the old checkpoints are not
    # resumed; they are set aside, with the reason.
    changed = [a for a in SMALL_RUN]
    changed[changed.index("--learning-rate") + 1] = "5e-4"
    changed[changed.index("--max-steps") + 1] = "6"
    result = train(dataset, out, *changed, "--dataloader-num-workers", "0")
    assert (
        "set aside checkpoint-18, checkpoint-24, tensorboard, DONE.json (another run: learning_rate: 0.001 -> "
        "0.0005; max_steps: 24 -> 6)"
        in result.stderr
        and "resumed from" not in result.stderr
    )
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]
    assert [e["step"] for e in trainer_state(out / "checkpoint-6")["log_history"]] == list(range(1, 7))
    assert (next(out.glob("superseded/*")) / "checkpoint-24" / "model.safetensors").read_bytes() == before


# --- it learns, and it looks ---------------------------------------------------------------------
def open_loop_errors(checkpoint: Path, dataset: Path, stride: int = 4) -> dict[str, float]:
    """Held-out open-loop action-chunk MSE in NORMALIZED action space ([-1, 1] per joint), of the
    policy, the policy with blank (zero) images, the mean train action and holding the current state."""
    policy = Policy.from_checkpoint(checkpoint)
    ds = LeRobotDataset(dataset)
    horizon, normalizer = policy.config.action_horizon, policy.normalizer
    mean_action = np.concatenate([ds.read_episode(e, [ACTION])[ACTION] for e in policy.split["train_episodes"]]).mean(0)
    errors = {"policy": [], "blank_images": [], "mean_action": [], "hold_state": []}
    for episode in policy.split["heldout_episodes"]:
        columns = ds.read_episode(episode, [STATE, ACTION])
        frames = ds.read_video(episode, "observation.images.ego_view")
        starts = list(range(0, len(columns[STATE]) - horizon + 1, stride))
        target = normalizer.normalize_action(np.stack([columns[ACTION][i : i + horizon] for i in starts]))
        images, state = frames[starts][:, None], columns[STATE][starts]
        texts = [ds.task_text(0)] * len(starts)
        guesses = {
            "policy": policy.predict(images, state, texts, generator=torch.Generator().manual_seed(0)),
            "blank_images": policy.predict(
                np.zeros_like(images), state, texts, generator=torch.Generator().manual_seed(0)
            ),
            "mean_action": np.broadcast_to(mean_action, target.shape),
            "hold_state": np.repeat(state[:, None], horizon, axis=1),  # GR1 actions are joint position targets
        }
        for name, guess in guesses.items():
            errors[name].append(((normalizer.normalize_action(guess) - target) ** 2).reshape(-1))
    return {name: float(np.concatenate(values).mean()) for name, values in errors.items()}


@pytest.mark.slow
def test_tiny_policy_learns_and_uses_vision(dataset, tmp_path):
    """The default workflow training (config/config.yaml train: values, its length included: the
    min_steps floor, 800 steps = 26 epochs here) on the default synthetic set: the policy beats both
    baselines by 2x on held-out episodes, and blank images make it clearly worse."""
    out = tmp_path / "run"
    result = subprocess.run(
        train_command(dataset, out, *default_recipe(), "--save-steps", "400"),
        env={**ENV, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = open_loop_errors(out / json.loads((out / "DONE.json").read_text())["final_checkpoint"], dataset)
    print(json.dumps(errors))
    assert errors["policy"] <= 0.5 * errors["mean_action"], errors
    assert errors["policy"] <= 0.5 * errors["hold_state"], errors
    assert errors["blank_images"] >= 1.5 * errors["policy"], errors
