"""The workflow re-runs exactly the stale stages: one real run of a tiny config, then dry-run plans.

The run (module fixture) goes through every rule once; each test then asks Snakemake what it would
do after one change (`-n`, reading its job table) and checks the set of planned rules. The workflow
runs from a private copy of Snakefile, rules/, config/ and the package sources, so a test can edit
stage code, and edits made meanwhile in the checkout don't change the plan under the test's feet.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow  # real Snakemake runs and dry runs (~3-11 s each): the full lane (README)

ISOLATED = ["--profile", "none", "--workflow-profile", "none"]
CHECKOUT: Path  # set by the `checkout` fixture
CONFIGS: list[Path]


@pytest.fixture(scope="module", autouse=True)
def checkout(tmp_path_factory) -> Path:
    """The workflow and package sources in a private folder (see the module docstring)."""
    global CHECKOUT, CONFIGS
    copy = tmp_path_factory.mktemp("checkout")
    shutil.copy(REPO / "Snakefile", copy / "Snakefile")
    for folder in ("rules", "scripts", "envs", "config"):
        shutil.copytree(REPO / folder, copy / folder)
    shutil.copytree(
        REPO / "src" / "posttrain", copy / "src" / "posttrain", ignore=shutil.ignore_patterns("__pycache__")
    )
    CHECKOUT = copy
    CONFIGS = [copy / "config" / "config.yaml", copy / "config" / "test" / "tiny.yaml"]
    return copy


def smk(workdir: Path, *args, configfiles="default", profile_args=ISOLATED) -> subprocess.CompletedProcess:
    """snakemake from the repo root on workdir; --configfile goes last (it takes several values)."""
    configfiles = CONFIGS if configfiles == "default" else configfiles
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(CHECKOUT / "Snakefile"),
        "--directory",
        str(workdir),
        *profile_args,
        *map(str, args),
    ]
    if configfiles:
        cmd += ["--configfile", *map(str, configfiles)]
    # the rules call `posttrain`: find it beside this Python even when the venv is not activated
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=path)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)


def planned(result: subprocess.CompletedProcess) -> dict[str, int]:
    """The dry run's job table ({rule: count}, without `all`); {} when nothing is to be done."""
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1]
    jobs = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match or match.group(1) == "total":
            break
        jobs[match.group(1)] = int(match.group(2))
    jobs.pop("all", None)
    assert jobs, out[-3000:]
    return jobs


def overlay(path: Path, text: str) -> list[Path]:
    path.write_text(text)
    return [*CONFIGS, path]


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> Path:
    """The whole workflow, run for real once on the tiny config."""
    workdir = tmp_path_factory.mktemp("workflow")
    result = smk(workdir, "-c2")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    (workdir / "snakemake.stderr").write_text(result.stderr)
    return workdir


def test_full_run_writes_every_stage(done_run):
    ds = done_run / "results" / "tiny"
    for path in [
        "lerobot/meta/info.json",
        "lerobot/meta/stats.json",
        "verify/report.json",
        "train/tiny/DONE.json",
        "train/tiny/checkpoint-20",
        "eval/tiny/metrics.json",
        "report/dataset.html",
        "report/tiny/eval_metrics.html",
    ]:
        assert (ds / path).exists(), path
    assert not (ds / "convert_shards").exists() or not any((ds / "convert_shards").iterdir())  # temp()
    log = (done_run / "logs" / "train" / "tiny" / "tiny.log").read_text()
    assert log.startswith("=== train attempt ") and log.count("=== train attempt ") == 1
    assert (done_run / "benchmarks" / "convert_shard" / "tiny" / "1.tsv").is_file()
    # the run ends by saying whether the policy beats the baselines (20 steps: it may well not)
    verdict = json.loads((ds / "eval" / "tiny" / "metrics.json").read_text())["verdict"]
    assert (
        f"eval verdict (results/tiny/eval/tiny/metrics.json): {verdict['summary']}"
        in (done_run / "snakemake.stderr").read_text()
    )


def test_untouched_plans_nothing(done_run):
    assert planned(smk(done_run, "-n")) == {}


def test_learning_rate_reruns_training_onward(done_run, tmp_path):
    files = overlay(tmp_path / "lr.yaml", "train: {learning_rate: 1.0e-4}\n")
    assert set(planned(smk(done_run, "-n", configfiles=files))) == {
        "train",
        "eval",
        "report_training",
        "report_metrics",
    }


def test_gr00t_backend_plans_training_but_not_our_eval(tmp_path):
    """A GR00T checkpoint is evaluated with Isaac-GR00T's own script, so `all` stops at training."""
    files = overlay(tmp_path / "gr00t.yaml", f"train: {{backend: gr00t, gr00t: {{repo: {tmp_path}}}}}\n")
    plan = planned(smk(tmp_path / "work", "-n", configfiles=files))
    assert "train" in plan and "verify" in plan
    assert not {"eval", "report_training", "report_metrics"} & set(plan)


def test_language_instruction_reruns_conversion_onward(done_run, tmp_path):
    files = overlay(tmp_path / "text.yaml", "convert: {language_instruction: Pick up the bottle.}\n")
    plan = planned(smk(done_run, "-n", configfiles=files))
    assert "synth" not in plan
    assert plan["convert_shard"] == 2
    assert {"convert_gather", "stats", "verify", "train", "eval"} <= set(plan)


def test_reordering_config_keys_plans_nothing(done_run, tmp_path):
    """params are canonical JSON: the same values written in another order change nothing."""
    tiny = yaml.safe_load(CONFIGS[1].read_text())
    tiny["train"] = dict(reversed(list(tiny["train"].items())))
    files = overlay(tmp_path / "reordered.yaml", yaml.safe_dump(tiny, sort_keys=False))
    assert planned(smk(done_run, "-n", configfiles=[CONFIGS[0], files[-1]])) == {}


def write_profile(folder: Path, gpus: int, launcher: str) -> Path:
    folder.mkdir()
    (folder / "profile.yaml").write_text(
        yaml.safe_dump(
            {
                "configfile": [str(p) for p in CONFIGS],  # the same training preset for both
                "config": {"hardware": "cpu"},  # GPUs for train, but the tiny preset (else: refused)
                "cores": 2,
                "resources": {"gpu": gpus},
                "set-resources": {"train": {"gpu": gpus, "launcher": launcher}},
                "printshellcmds": True,
            }
        )
    )
    return folder


def test_switching_profiles_with_the_same_preset_plans_nothing(done_run, tmp_path):
    cpu = write_profile(tmp_path / "cpu", 0, "posttrain")
    quad = write_profile(tmp_path / "quad", 4, "accelerate launch --multi_gpu --num_processes 4 -m posttrain.cli")
    for profile in (cpu, quad):
        result = smk(
            done_run, "-n", configfiles=None, profile_args=["--profile", profile, "--workflow-profile", "none"]
        )
        assert planned(result) == {}, profile.name
    # ...while the launcher really differs: force the train job into the plan to see its command
    result = smk(
        done_run, "-n", "-R", "train", configfiles=None, profile_args=["--profile", quad, "--workflow-profile", "none"]
    )
    assert "accelerate launch --multi_gpu --num_processes 4 -m posttrain.cli train" in result.stdout


def plan_after_edit(run_dir: Path, source: Path, edit: str = "\nEDITED_BY_TEST = 1\n") -> dict[str, int]:
    """The dry-run plan while `source` carries an edit (restored afterwards)."""
    original = source.read_text()
    source.write_text(original + edit)
    try:
        return planned(smk(run_dir, "-n"))
    finally:
        source.write_text(original)


def test_code_change_reruns_that_stage_onward(done_run, checkout):
    package = checkout / "src" / "posttrain"
    plan = plan_after_edit(done_run, package / "convert.py")
    assert "synth" not in plan
    assert {"convert_shard", "convert_gather", "stats", "verify", "train", "eval"} <= set(plan)
    assert set(plan_after_edit(done_run, package / "train.py")) == {
        "train",
        "eval",
        "report_training",
        "report_metrics",
    }
    assert planned(smk(done_run, "-n")) == {}  # restored: the hash is of the content, not the mtime
    assert plan_after_edit(done_run, package / "files.py", "\n# a comment\n") == {}  # syntax trees only


def test_gpu_profile_without_gpus_fails_before_training(done_run, tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has 2 GPUs")
    workdir = tmp_path / "copy"
    shutil.copytree(done_run, workdir, symlinks=True)
    profile = write_profile(tmp_path / "two_gpus", 2, "posttrain")
    env_skip = os.environ.pop("POSTTRAIN_SKIP_GPU_CHECK", None)
    try:
        result = smk(
            workdir,
            "-R",
            "train",
            "--until",
            "train",
            configfiles=None,
            profile_args=["--profile", profile, "--workflow-profile", "none"],
        )
    finally:
        if env_skip is not None:
            os.environ["POSTTRAIN_SKIP_GPU_CHECK"] = env_skip
    assert result.returncode != 0
    assert "error: train asks for 2 GPU(s) (resources.gpu from the profile) but this node has 0" in (
        result.stdout + result.stderr
    ), result.stdout + result.stderr
    run_dir = workdir / "results" / "tiny" / "train" / "tiny"
    log = (workdir / "logs" / "train" / "tiny" / "tiny.log").read_text()
    first, failed = log.split("=== train attempt ")[1:]  # appended: one dated section per attempt
    assert "posttrain.train" in first  # the first run's history is kept
    assert "posttrain.train" not in failed and "error: train asks for 2 GPU(s)" in failed  # never started
    assert (run_dir / "checkpoint-20").is_dir()  # undeclared checkpoints survive a failed job


def test_misspelled_key_is_an_error_naming_it(tmp_path):
    files = overlay(tmp_path / "typo.yaml", "train: {lerning_rate: 1.0e-4}\n")
    result = smk(tmp_path, "-n", configfiles=files)
    assert result.returncode != 0
    assert "unknown key train.lerning_rate" in result.stdout + result.stderr


def test_float_written_as_string_is_an_error_naming_the_key(tmp_path):
    files = overlay(tmp_path / "lr.yaml", "train:\n  learning_rate: 1e-4\n")  # YAML reads a string
    result = smk(tmp_path, "-n", configfiles=files)
    assert result.returncode != 0
    assert (
        "train.learning_rate: '1e-4' is not of type 'number' (write floats with a dot, 1.0e-4: "
        "YAML reads 1e-4 as a string)"
    ) in result.stdout + result.stderr


def test_another_source_merges_cleanly_over_the_default(tmp_path):
    """An overlay naming an HDF5 source replaces the synthetic one: conversion reads that file,
    nothing is synthesized, and a misspelled source key is still an error naming it."""
    demos = tmp_path / "demos.hdf5"
    demos.write_bytes(b"")
    files = overlay(tmp_path / "src.yaml", f"dataset: {{source: {{kind: hdf5, path: {demos}}}}}\n")
    plan = planned(smk(tmp_path / "work", "-n", configfiles=files))
    assert "synth" not in plan and plan["convert_shard"] == 2
    files = overlay(tmp_path / "typo.yaml", f"dataset: {{source: {{kind: hdf5, pth: {demos}}}}}\n")
    result = smk(tmp_path / "work", "-n", configfiles=files)
    assert result.returncode != 0
    assert "unknown key dataset.source.pth (allowed here: kind, path)" in result.stdout + result.stderr


def test_nested_command_line_value_is_accepted(tmp_path):
    """Snakemake reads `--config train='{max_steps: 100}'` as the string '100': typed by the schema."""
    result = smk(tmp_path, "-n", "-p", "--config", "train={max_steps: 100, learning_rate: 1.0e-4}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    command = next(line for line in result.stdout.splitlines() if " train --dataset " in line)
    assert "--max-steps 100 " in command and "--learning-rate 0.0001 " in command
    assert "--global-batch-size 4 " in command  # the rest of train: still the tiny overlay's (merged)


def test_invalid_yaml_is_one_line_naming_file_and_line(tmp_path):
    copy = tmp_path / "checkout"
    copy.mkdir()
    shutil.copy(CHECKOUT / "Snakefile", copy / "Snakefile")
    for folder in ("rules", "scripts", "config"):
        shutil.copytree(CHECKOUT / folder, copy / folder)
    default = copy / "config" / "config.yaml"
    lines = default.read_text().splitlines()
    default.write_text("\n".join(lines) + "\ntrain:\n  max_steps: 100\n   lr: [1\n")
    (tmp_path / "work").mkdir()  # (else Snakemake says that it creates it)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-s",
            str(copy / "Snakefile"),
            *ISOLATED,
            "--directory",
            str(tmp_path / "work"),
            "-n",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode != 0
    out = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(out) == 1, out
    assert out[0].startswith(f"error: {default}: line {len(lines) + 3}, column ") and "not valid YAML" in out[0]


def test_another_dataset_name_is_not_built(tmp_path):
    """The {ds} and {run} wildcards match only the configured names."""
    for target in ("results/other/lerobot/meta/stats.json", "results/tiny/train/other/DONE.json"):
        result = smk(tmp_path, "-n", target)
        assert result.returncode != 0, target
        assert "MissingRuleException" in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
    assert "stats" in planned(smk(tmp_path, "-n", "results/tiny/lerobot/meta/stats.json"))


def test_embodiment_outside_the_checkout(tmp_path):
    robot = tmp_path / "robots" / "my_robot"
    shutil.copytree(CHECKOUT / "config" / "embodiments" / "gr1", robot)
    files = overlay(tmp_path / "robot.yaml", f"convert: {{embodiment: {robot}}}\n")
    assert planned(smk(tmp_path / "work", "-n", configfiles=files))["convert_shard"] == 2


# --- a user's HDF5 source: its content counts, not its mtime -------------------------------------
VERIFIED = "results/tiny/verify/report.json"
CONVERSION_ONWARD = {"convert_shard": 2, "convert_gather": 1, "stats": 1, "verify": 1}


def make_hdf5(path: Path, seed: int) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "posttrain.cli",
            "synth",
            str(path),
            "--episodes",
            "4",
            "--min-frames",
            "24",
            "--max-frames",
            "32",
            "--image-size",
            "32",
            "--seed",
            str(seed),
        ],
        check=True,
        capture_output=True,
    )
    return path


@pytest.fixture(scope="module")
def hdf5_run(tmp_path_factory) -> tuple[Path, list[Path], Path]:
    """Conversion, stats and verify run for real on a user's HDF5, with an embodiment directory
    given relative to the working directory (the converter resolves it there)."""
    workdir = tmp_path_factory.mktemp("hdf5_source")
    source = make_hdf5(workdir / "demos.hdf5", seed=1)
    shutil.copytree(CHECKOUT / "config" / "embodiments" / "gr1", workdir / "robots" / "gr1")
    files = overlay(
        workdir / "source.yaml",
        f"dataset: {{source: {{kind: hdf5, path: {source}}}}}\nconvert: {{embodiment: robots/gr1}}\n",
    )
    result = smk(workdir, "-c2", VERIFIED, configfiles=files)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == {}
    return workdir, files, source


def test_touched_or_copied_source_hdf5_plans_nothing(hdf5_run):
    workdir, files, source = hdf5_run
    later = source.stat().st_mtime_ns + 60 * 10**9
    os.utime(source, ns=(later, later))  # touch
    assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == {}
    copy = workdir / "copy.hdf5"
    shutil.copyfile(source, copy)
    shutil.copyfile(copy, source)  # a copy back (rsync, cp): same content, new mtime
    assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == {}


def test_changed_source_hdf5_reruns_conversion_onward(hdf5_run):
    workdir, files, source = hdf5_run
    original = source.read_bytes()
    make_hdf5(source, seed=2)
    try:
        assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == CONVERSION_ONWARD
    finally:
        source.write_bytes(original)
    assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == {}  # the content is back


def test_edit_in_a_relative_embodiment_reruns_conversion_onward(hdf5_run):
    workdir, files, _ = hdf5_run
    licence = workdir / "robots" / "gr1" / "LICENSE-IsaacLab-Arena.md"
    original = licence.read_text()
    licence.write_text(original + "\nedited\n")
    try:
        assert planned(smk(workdir, "-n", VERIFIED, configfiles=files)) == CONVERSION_ONWARD
    finally:
        licence.write_text(original)
