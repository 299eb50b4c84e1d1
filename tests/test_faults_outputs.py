"""Faults around outputs and conversion (issue 10 items 1, 6, 7, 8, 9): each ends in one clear line,
and nothing the project did not write is ever replaced or deleted."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest

import posttrain.eval
from conftest import run_cli
from posttrain import convert, files, lerobot
from posttrain.lerobot import LeRobotDataset

TINY = ["--episodes", "3", "--min-frames", "8", "--max-frames", "10", "--image-size", "32", "--seed", "5"]


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "demos.hdf5"
    assert run_cli("synth", path, *TINY) == 0
    return path


@pytest.fixture(scope="module")
def slow_h5(tmp_path_factory) -> Path:
    """Long enough to encode (with --preset placebo) that a test can act while workers run."""
    path = tmp_path_factory.mktemp("slow") / "slow.hdf5"
    assert (
        run_cli(
            "synth",
            path,
            "--episodes",
            "2",
            "--min-frames",
            "120",
            "--max-frames",
            "120",
            "--image-size",
            "128",
            "--seed",
            "2",
        )
        == 0
    )
    return path


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def convert_cmd(h5: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "posttrain.cli", "convert", "--input", str(h5), "--output", str(out), *extra]


# --- item 1: outputs never replace what the project did not write -------------------------------


def test_convert_refuses_a_directory_it_did_not_write(tiny_h5, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("a week of work")
    assert run_cli("convert", "--input", tiny_h5, "--output", out) == 2
    line = one_error(capsys)
    assert "notes.txt" in line and "not written by posttrain" in line
    assert (out / "notes.txt").read_text() == "a week of work" and leftovers(tmp_path) == []


def test_output_holding_the_input_is_refused_and_the_input_kept(tiny_h5, tmp_path, capsys):
    folder = tmp_path / "raw"
    folder.mkdir()
    source = shutil.copy(tiny_h5, folder / "demos.hdf5")
    assert run_cli("convert", "--input", source, "--output", folder) == 2
    assert "contains the input" in one_error(capsys)
    assert Path(source).read_bytes() == tiny_h5.read_bytes()


def test_output_naming_a_file_is_refused_and_nothing_hidden_is_left(tiny_h5, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert run_cli("convert", "--input", tiny_h5, "--output", target) == 2
    assert "a file is there" in one_error(capsys)
    assert target.read_text() == "keep me" and leftovers(tmp_path) == []


def test_output_dot_is_one_line_without_temp_dir(tiny_h5, tmp_path, monkeypatch, capsys):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert run_cli("convert", "--input", tiny_h5, "--output", ".") == 2
    assert "current directory" in one_error(capsys)
    assert list(work.iterdir()) == [] and leftovers(tmp_path) == []


def test_rerun_replaces_its_own_output_and_an_old_unmarked_one(tiny_h5, tmp_path):
    out = tmp_path / "lerobot"
    assert run_cli("convert", "--input", tiny_h5, "--output", out) == 0
    assert json.loads((out / files.MARKER).read_text()) == {"stage": "dataset"}
    (out / files.MARKER).unlink()  # as the previous version wrote it: recognised by meta/source.json
    (out / "meta" / "stale.txt").write_text("x")
    assert run_cli("convert", "--input", tiny_h5, "--output", out) == 0
    assert not (out / "meta" / "stale.txt").exists() and leftovers(tmp_path) == []


def test_eval_refuses_an_unrelated_directory_before_any_work(converted_dataset, tmp_path, monkeypatch, capsys):
    def must_not_run(*args, **kwargs):
        raise AssertionError("eval started although its output would replace unrelated files")

    monkeypatch.setattr(posttrain.eval, "evaluate_checkpoint", must_not_run)
    checkpoint, out = tmp_path / "checkpoint-1", tmp_path / "plots"
    checkpoint.mkdir()
    out.mkdir()
    (out / "paper_figure.pdf").write_text("%PDF")
    assert run_cli("eval", checkpoint, converted_dataset, "--output", out) == 2
    assert "paper_figure.pdf" in one_error(capsys) and (out / "paper_figure.pdf").exists()


def test_verify_refuses_to_write_into_the_dataset(copy_dataset, capsys):
    ds = copy_dataset()
    assert run_cli("verify", ds, "--output", ds / "meta") == 2
    assert "inside the input" in one_error(capsys)
    assert not (ds / "meta" / "report.json").exists() and not (ds / "meta" / files.MARKER).exists()


def test_replace_swaps_in_one_step_without_a_moment_without_output(tmp_path, monkeypatch):
    final, new = tmp_path / "out", tmp_path / ".out.tmp-1"
    for path, text in ((final, "old"), (new, "new")):
        path.mkdir()
        (path / "f").write_text(text)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not files._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this system cannot swap two paths in one step (renameat2 RENAME_EXCHANGE)")

    def no_two_step(*args):
        raise AssertionError("the output was moved aside: it would be missing for a moment")

    monkeypatch.setattr(files.os, "replace", no_two_step)
    files.replace_directory(new, final)
    monkeypatch.undo()
    assert (final / "f").read_text() == "new" and leftovers(tmp_path) == [] and not new.exists()


def test_killed_between_the_two_renames_is_recovered(tmp_path, monkeypatch):
    """Where the one-step swap is missing (not Linux, old kernels): a kill between the renames
    leaves the old output aside; the next run puts it back before anything else."""
    final = tmp_path / "out"
    with files.atomic_directory(final, "dataset") as tmp:
        (tmp / "f").write_text("old")
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def killed_after_first(src, dst):
        if Path(dst) == final:  # the second rename: the old output has just been moved aside
            raise SystemExit("killed")  # stands in for SIGKILL between the renames
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_after_first)
    with pytest.raises(SystemExit), files.atomic_directory(final, "dataset") as tmp:
        (tmp / "f").write_text("new")
    monkeypatch.undo()
    assert not final.exists() and any(name.startswith(".out.old-") for name in leftovers(tmp_path))
    with files.output_lock(final):
        files.recover(final)
    assert (final / "f").read_text() == "old" and leftovers(tmp_path) == []


# --- item 6: failed demos -------------------------------------------------------------------------


def with_failed(tiny_h5: Path, folder: Path, failed: list[str]) -> Path:
    path = Path(shutil.copy(tiny_h5, folder / "demos.hdf5"))
    with h5py.File(path, "a") as f:
        for demo in failed:
            f[f"data/{demo}"].attrs["success"] = False
    return path


def test_failed_demos_are_skipped_recorded_and_verify_passes(tiny_h5, tmp_path, caplog, capsys):
    h5 = with_failed(tiny_h5, tmp_path, ["demo_1"])
    out = tmp_path / "lerobot"
    assert run_cli("convert", "--input", h5, "--output", out, "--workers", "2") == 0
    assert "skipping 1 failed demo(s)" in caplog.text and "demo_1" in caplog.text
    source = LeRobotDataset(out).source
    assert source["failed_demos"] == "skip" and source["skipped_demos"] == ["demo_1"]
    assert [e["demo"] for e in source["episodes"]] == ["demo_0", "demo_2"]
    assert [e["episode_index"] for e in source["episodes"]] == [0, 1]
    assert run_cli("stats", out) == 0
    assert run_cli("verify", out, "--source", h5, "--output", tmp_path / "verify", "--workers", "1") == 0

    shards = [tmp_path / f"shard{k}" for k in range(2)]
    for k, shard in enumerate(shards):
        assert run_cli("convert", "--input", h5, "--output", shard, "--shard", k, "--num-shards", 2) == 0
    gathered = tmp_path / "gathered"
    assert run_cli("convert", "--input", h5, "--output", gathered, "--gather", *shards) == 0
    for name in ("source.json", "info.json", "episodes.jsonl"):
        assert (gathered / "meta" / name).read_bytes() == (out / "meta" / name).read_bytes()
    # a gather under another setting than its shards is refused
    assert (
        run_cli("convert", "--input", h5, "--output", gathered, "--gather", *shards, "--failed-demos", "include") == 2
    )
    assert "settings.failed_demos" in one_error(capsys)


def test_failed_demos_include_and_error(tiny_h5, tmp_path, capsys):
    h5 = with_failed(tiny_h5, tmp_path, ["demo_1"])
    out = tmp_path / "lerobot"
    assert run_cli("convert", "--input", h5, "--output", out, "--failed-demos", "include") == 0
    assert len(LeRobotDataset(out).episodes) == 3 and LeRobotDataset(out).source["skipped_demos"] == []
    assert run_cli("convert", "--input", h5, "--output", tmp_path / "b", "--failed-demos", "error") == 2
    line = one_error(capsys)
    assert "data/demo_1: attr success=False" in line and "convert.failed_demos" in line
    assert not (tmp_path / "b").exists()


def test_all_demos_failed_is_a_clear_error(tiny_h5, tmp_path, capsys):
    h5 = with_failed(tiny_h5, tmp_path, ["demo_0", "demo_1", "demo_2"])
    assert run_cli("convert", "--input", h5, "--output", tmp_path / "out") == 2
    assert "all 3 demos have success=False" in one_error(capsys)
    assert not (tmp_path / "out").exists()


# --- item 7: the environment's faults -------------------------------------------------------------


def test_read_only_file_system_is_one_line(tiny_h5, tmp_path, monkeypatch, capsys):
    readonly = tmp_path / "ro"
    real_mkdir = os.mkdir

    def erofs(path, *args, **kwargs):
        if str(path).startswith(str(readonly)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", erofs)
    assert run_cli("convert", "--input", tiny_h5, "--output", readonly / "lerobot") == 2
    line = one_error(capsys)
    assert str(readonly) in line and "Read-only file system" in line


def test_disk_full_names_the_output_and_the_space_needed(tiny_h5, tmp_path, monkeypatch, capsys):
    real_write = lerobot.write_table

    def full_after_first(path, table):
        if "episode_000000" not in str(path):
            raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
        real_write(path, table)

    monkeypatch.setattr(lerobot, "write_table", full_after_first)
    out = tmp_path / "lerobot"
    assert run_cli("convert", "--input", tiny_h5, "--output", out, "--workers", "1") == 2
    line = one_error(capsys)
    assert str(out) in line and "no space left" in line and "was free there" in line
    assert "the output needs about" in line and "1 of 3 episodes written" in line
    assert not out.exists() and leftovers(tmp_path) == []


def test_environment_oserror_elsewhere_is_one_line(tmp_path, monkeypatch, capsys):
    def quota(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "demos.hdf5"))

    monkeypatch.setattr("posttrain.synth.write_synthetic", quota)
    assert run_cli("synth", tmp_path / "demos.hdf5") == 2
    line = one_error(capsys)
    assert "demos.hdf5: no space left on the device" in line and "MB free there" in line


def test_unknown_preset_is_refused_before_any_work(tiny_h5, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert, "validate_input", lambda *a: pytest.fail("the HDF5 was read first"))
    assert run_cli("convert", "--input", tiny_h5, "--output", tmp_path / "out", "--preset", "fastest") == 2
    line = one_error(capsys)
    assert line.startswith("error: --preset: invalid choice: 'fastest'") and "placebo" in line
    assert list(tmp_path.iterdir()) == []


REAL_CONVERT_EPISODE = convert.convert_episode


def oom_on_episode_1(job):
    if job.episode.episode_index == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does
    return REAL_CONVERT_EPISODE(job)


def test_killed_worker_names_the_episode_and_memory(tiny_h5, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert, "convert_episode", oom_on_episode_1)  # fork: workers see it too
    out = tmp_path / "lerobot"
    assert run_cli("convert", "--input", tiny_h5, "--output", out, "--workers", "2") == 2
    line = one_error(capsys)
    assert "worker died (killed by SIGKILL)" in line and "episode 1 (demo_1)" in line and "memory" in line
    assert "episode 0" not in line and "episode 2" not in line
    assert not out.exists()


def test_second_convert_into_the_same_output_is_refused(slow_h5, tmp_path, capsys):
    out = tmp_path / "lerobot"
    first = subprocess.Popen(
        convert_cmd(slow_h5, out, "--workers", "1", "--preset", "placebo"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".lerobot.tmp-*")):
            assert first.poll() is None and time.monotonic() < deadline, "first convert ended too early"
            time.sleep(0.01)
        assert run_cli("convert", "--input", slow_h5, "--output", out, "--workers", "1") == 2
        assert "another run is writing this output" in one_error(capsys)
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err  # the first run was not disturbed
    assert len(LeRobotDataset(out).episodes) == 2 and leftovers(tmp_path) == []


# --- item 8: no orphans ------------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, command name) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            table[int(entry.name)] = (int(rest[1]), rest[0], name)
    return table


def descendants(pid: int) -> dict[int, str]:
    table, found, todo = process_table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, state, name) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = name
                todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_and_encoders_die_with_the_convert_process(slow_h5, tmp_path, sig):
    proc = subprocess.Popen(
        convert_cmd(slow_h5, tmp_path / "out", "--workers", "2", "--preset", "placebo"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while sum(name.startswith("ffmpeg") for name in descendants(proc.pid).values()) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "convert ended before both encoders ran"
        time.sleep(0.01)
    children = descendants(proc.pid)
    os.kill(proc.pid, sig)  # the parent only, as a user or a scheduler's first signal would
    proc.wait()
    deadline = time.monotonic() + 20
    while True:
        alive = {
            pid: name for pid, name in children.items() if pid in (table := process_table()) and table[pid][1] != "Z"
        }
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:  # clean up after a failure, then report it
        os.kill(pid, signal.SIGKILL)
    assert alive == {}, f"orphans left after {sig.name}: {alive}"


# --- item 9: smaller ones -------------------------------------------------------------------------


def test_stats_refuses_episodes_missing_from_episodes_jsonl(copy_dataset, capsys):
    ds = copy_dataset()
    path = ds / "meta" / "episodes.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    assert run_cli("stats", ds) == 2
    line = one_error(capsys)
    assert "episodes.jsonl" in line and "more are on disk" in line and "episode_000005.parquet" in line


def test_zeroed_second_half_of_an_hdf5_says_it_is_damaged(tiny_h5, tmp_path, capsys):
    damaged = Path(shutil.copy(tiny_h5, tmp_path / "damaged.hdf5"))
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:
        f.seek(size // 2)
        f.write(bytes(size - size // 2))
    assert run_cli("convert", "--input", damaged, "--output", tmp_path / "out") == 2
    line = one_error(capsys)
    assert line.startswith("error: damaged.hdf5: data") and "truncated or corrupt" in line
    assert "group missing" not in line


def test_upload_dry_run_rejects_an_invalid_repo_id(converted_dataset, capsys):
    for bad in ("user/name/extra", "bad..name", "-leading"):
        assert (
            run_cli("hub", "upload", converted_dataset, f"--repo-id={bad}", "--repo-type", "dataset", "--dry-run") == 2
        )
        line = one_error(capsys)
        assert f"--repo-id {bad!r}: not a valid Hub repository id" in line
    assert (
        run_cli(
            "hub", "upload", converted_dataset, "--repo-id", "user/good-name.v2", "--repo-type", "dataset", "--dry-run"
        )
        == 0
    )
