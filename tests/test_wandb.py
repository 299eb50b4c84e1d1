"""`train.use_wandb: true` logs the same scalars as TensorBoard, tested with W&B offline: the run
files appear under RUN_DIR/wandb/ and nothing goes to the network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

wandb = pytest.importorskip("wandb")


def wandb_history(run_file) -> list[dict]:
    """The `wandb.log` rows of an offline run file. Its format: a 7-byte header (":W&B", magic,
    version), then LevelDB-log records in 32 KiB blocks (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last), each holding a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending, rows = run_file.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                )
    return rows


def test_wandb_offline_logs_the_tensorboard_scalars(converted_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "posttrain.cli",
            "train",
            "--dataset",
            str(converted_dataset),
            "--output",
            str(run_dir),
            "--max-steps",
            "4",
            "--save-steps",
            "4",
            "--global-batch-size",
            "4",
            "--dataloader-num-workers",
            "0",
            "--logging-steps",
            "2",
            "--use-wandb",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((run_dir / "wandb").iterdir())
    identity = json.loads((run_dir / "checkpoint-4" / "identity.json").read_text())["id"]
    assert runs[0].name.endswith(identity)  # one W&B run per run identity: a resume continues it
    history = wandb_history(next(runs[0].glob("run-*.wandb")))

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tensorboard = set(events.Tags()["scalars"])
    assert tensorboard >= {"train/loss", "train/learning_rate", "train/samples_per_s"}
    assert [row["_step"] for row in history] == [2, 4]  # --logging-steps 2
    for tag in tensorboard:  # every TensorBoard scalar, at the same steps, with the same values
        logged = [(row["_step"], row[tag]) for row in history if tag in row]
        assert logged == [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)], tag
    assert not (tmp_path / "wandb").exists()  # nothing written into the working directory
