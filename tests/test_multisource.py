"""Several sources, several tasks, one dataset (config `dataset.sources`, posttrain.sources).

By hand: each source's shards made with --source, then one gather without --input numbers the
episodes across sources, gives each source its task and links the videos (no re-encoding).
In the workflow: each source's jobs see only that source, so an edit of one source re-runs its own
conversion and what follows the gather, and an edit of an instruction the gather only (dry runs of
one real run, as in tests/test_workflow.py, whose helpers and private checkout this module reuses).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import test_workflow  # its CHECKOUT and CONFIGS are set by its checkout fixture
from test_workflow import checkout, make_hdf5, overlay, planned, smk  # noqa: F401 (checkout: the fixture)

from conftest import run_cli

BOTTLE, MICROWAVE = "Pick up the bottle and place it in the fridge.", "Open the microwave."


def shards(hdf5: Path, out: Path, name: str, num_shards: int, *flags) -> list[Path]:
    """`posttrain convert --shard K --source NAME` for every K."""
    dirs = [out / f"{name}-{k}" for k in range(num_shards)]
    for k, shard in enumerate(dirs):
        assert (
            run_cli(
                "convert",
                "--input",
                hdf5,
                "--output",
                shard,
                "--shard",
                k,
                "--num-shards",
                num_shards,
                "--source",
                name,
                "--workers",
                1,
                *flags,
            )
            == 0
        )
    return dirs


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> dict:
    """Two HDF5 files (3 and 2 demos) converted source by source: bottle in 2 shards with its
    instruction, microwave in 1 shard without one (the gather names it)."""
    root = tmp_path_factory.mktemp("two_sources")
    files = {}
    for name, episodes, seed in (("bottle", 3, 1), ("microwave", 2, 2)):
        files[name] = root / f"{name}.hdf5"
        assert (
            run_cli(
                "synth",
                files[name],
                "--episodes",
                episodes,
                "--min-frames",
                20,
                "--max-frames",
                26,
                "--image-size",
                32,
                "--seed",
                seed,
            )
            == 0
        )
    dirs = {
        "bottle": shards(files["bottle"], root, "bottle", 2, "--language-instruction", BOTTLE),
        "microwave": shards(files["microwave"], root, "microwave", 1),
    }
    out = root / "lerobot"
    assert (
        run_cli(
            "convert",
            "--output",
            out,
            "--gather",
            *dirs["bottle"],
            *dirs["microwave"],
            "--source-instruction",
            f"microwave={MICROWAVE}",
        )
        == 0
    )
    return {"root": root, "files": files, "shards": dirs, "dataset": out}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gather_numbers_episodes_across_sources_with_their_tasks(two_sources):
    out = two_sources["dataset"]
    assert jsonl(out / "meta" / "tasks.jsonl") == [
        {"task_index": 0, "task": BOTTLE},
        {"task_index": 1, "task": MICROWAVE},
    ]
    episodes = jsonl(out / "meta" / "episodes.jsonl")
    assert [e["episode_index"] for e in episodes] == list(range(5))
    assert [e["tasks"] for e in episodes] == [[BOTTLE]] * 3 + [[MICROWAVE]] * 2
    info = json.loads((out / "meta" / "info.json").read_text())
    assert (info["total_episodes"], info["total_tasks"], info["splits"]) == (5, 2, {"train": "0:5"})
    assert info["total_frames"] == sum(e["length"] for e in episodes)
    first = 0
    for e in episodes:  # each parquet carries its new place and its source's task
        table = pq.read_table(out / "data" / "chunk-000" / f"episode_{e['episode_index']:06d}.parquet").to_pydict()
        task = 0 if e["episode_index"] < 3 else 1
        assert set(table["episode_index"]) == {e["episode_index"]}
        assert table["index"] == list(range(first, first + e["length"]))
        assert set(table["task_index"]) == set(table["annotation.human.action.task_description"]) == {task}
        first += e["length"]


def test_source_json_maps_episodes_to_source_and_demo(two_sources):
    source = json.loads((two_sources["dataset"] / "meta" / "source.json").read_text())
    assert [(e["episode_index"], e["source"], e["demo"]) for e in source["episodes"]] == [
        (0, "bottle", "demo_0"),
        (1, "bottle", "demo_1"),
        (2, "bottle", "demo_2"),
        (3, "microwave", "demo_0"),
        (4, "microwave", "demo_1"),
    ]
    assert [
        (s["name"], s["hdf5"], s["task_index"], s["first_episode"], s["num_episodes"], s["skipped_demos"])
        for s in source["sources"]
    ] == [
        ("bottle", str(two_sources["files"]["bottle"]), 0, 0, 3, []),
        ("microwave", str(two_sources["files"]["microwave"]), 1, 3, 2, []),
    ]
    assert source["embodiment"] == "gr1" and source["drop_frame"] == "first"  # what verify reads


def test_videos_are_linked_not_encoded_again(two_sources):
    """Episode 3 is the microwave's episode 0: the same file (a hardlink), under its new number."""
    out, shard = two_sources["dataset"], two_sources["shards"]["microwave"][0]
    video = "videos/chunk-000/observation.images.ego_view/episode_{:06d}.mp4"
    assert os.stat(out / video.format(3)).st_ino == os.stat(shard / video.format(0)).st_ino


def test_one_source_gathered_equals_its_whole_conversion(two_sources, tmp_path):
    """The rewritten parquet files are byte for byte what a direct conversion writes."""
    whole = tmp_path / "whole"
    assert (
        run_cli(
            "convert",
            "--input",
            two_sources["files"]["bottle"],
            "--output",
            whole,
            "--language-instruction",
            BOTTLE,
            "--workers",
            1,
        )
        == 0
    )
    gathered = tmp_path / "gathered"
    assert run_cli("convert", "--output", gathered, "--gather", *two_sources["shards"]["bottle"]) == 0
    files = sorted(p.relative_to(whole) for p in whole.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert len(files) == 3 + 3 + 5
    for relpath in files:
        if relpath.name != "source.json":  # one source or several: mapped differently
            assert (gathered / relpath).read_bytes() == (whole / relpath).read_bytes(), relpath


def test_stats_and_verify_read_every_source(two_sources, tmp_path, capsys):
    out, files = two_sources["dataset"], two_sources["files"]
    copy = tmp_path / "lerobot"
    assert (
        run_cli(
            "convert",
            "--output",
            copy,
            "--gather",
            *two_sources["shards"]["bottle"],
            *two_sources["shards"]["microwave"],
            "--source-instruction",
            f"microwave={MICROWAVE}",
        )
        == 0
    )
    assert run_cli("stats", copy) == 0
    stats = json.loads((copy / "meta" / "stats.json").read_text())
    assert stats["task_index"]["min"] == [0] and stats["task_index"]["max"] == [1]
    assert (
        run_cli(
            "verify",
            copy,
            "--output",
            tmp_path / "v",
            "--sampled-frames",
            2,
            "--source",
            f"bottle={files['bottle']}",
            "--source",
            f"microwave={files['microwave']}",
        )
        == 0
    )
    capsys.readouterr()
    # the files swapped: the check against the source HDF5 fails, naming the episode
    assert (
        run_cli(
            "verify",
            copy,
            "--output",
            tmp_path / "v",
            "--sampled-frames",
            2,
            "--source",
            f"bottle={files['microwave']}",
            "--source",
            f"microwave={files['bottle']}",
        )
        == 2
    )
    assert "FAILED: episode 0: source_" in capsys.readouterr().err
    assert run_cli("verify", out, "--output", tmp_path / "v", "--source", files["bottle"]) == 2
    assert "gathered from sources bottle, microwave: give --source NAME=HDF5 for each" in capsys.readouterr().err


def test_task_indices_shared_by_instruction_or_given(two_sources, tmp_path):
    bottle, microwave = two_sources["shards"]["bottle"], two_sources["shards"]["microwave"]

    def tasks(*flags) -> list[dict]:
        out = tmp_path / "out"
        assert run_cli("convert", "--output", out, "--gather", *microwave, *bottle, *flags) == 0
        return jsonl(out / "meta" / "tasks.jsonl")

    # the order given is the episode order; the same instruction is one task
    assert tasks("--source-instruction", f"microwave={BOTTLE}") == [{"task_index": 0, "task": BOTTLE}]
    assert tasks(
        "--source-instruction",
        f"microwave={MICROWAVE}",
        "--source-task-index",
        "bottle=0",
        "--source-task-index",
        "microwave=4",
    ) == [{"task_index": 0, "task": BOTTLE}, {"task_index": 4, "task": MICROWAVE}]
    assert tasks("--source-instruction", f"microwave={MICROWAVE}", "--source-task-index", "bottle=0") == [
        {"task_index": 0, "task": BOTTLE},
        {"task_index": 1, "task": MICROWAVE},
    ]
    # a source without an index shares the given index of the same instruction
    assert tasks("--source-instruction", f"microwave={BOTTLE}", "--source-task-index", "microwave=2") == [
        {"task_index": 2, "task": BOTTLE}
    ]


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--source-task-index", "bottle=0", "--source-task-index", "microwave=0"],
            "task_index 0 is given to two instructions: source bottle",
        ),
        (
            [
                "--source-instruction",
                f"microwave={BOTTLE}",
                "--source-task-index",
                "microwave=1",
                "--source-task-index",
                "bottle=0",
            ],
            "sources bottle and microwave have the same instruction",
        ),
        (["--source-instruction", "oven=Open the oven."], "--source-instruction oven: no shard of source oven"),
        (["--fps", "25"], "convert --gather without --input: --fps not used here"),
        ([], "source microwave has no language instruction: give --source-instruction microwave=TEXT"),
    ],
)
def test_gather_faults_are_one_line(two_sources, tmp_path, capsys, flags, message):
    dirs = [*two_sources["shards"]["bottle"], *two_sources["shards"]["microwave"]]
    if "--source-instruction" not in flags and message.startswith(("task_index", "convert --gather without")):
        flags = [*flags, "--source-instruction", f"microwave={MICROWAVE}"]
    assert run_cli("convert", "--output", tmp_path / "out", "--gather", *dirs, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


def test_gather_refuses_missing_shards_and_unlike_sources(two_sources, tmp_path, capsys):
    bottle, microwave = two_sources["shards"]["bottle"], two_sources["shards"]["microwave"]
    assert run_cli("convert", "--output", tmp_path / "out", "--gather", bottle[0], *microwave) == 2
    assert (
        "the shards of source bottle miss 1 episode(s) of 3: 1 (demo_1) (give all 2 of its shards)"
        in capsys.readouterr().err
    )
    other = shards(
        two_sources["files"]["microwave"],
        tmp_path,
        "oven",
        1,
        "--fps",
        "25",
        "--language-instruction",
        "Open the oven.",
    )
    capsys.readouterr()
    assert run_cli("convert", "--output", tmp_path / "out", "--gather", *bottle, *other) == 2
    err = capsys.readouterr().err
    assert "source oven: settings.fps is 25, source bottle has another" in err
    assert not (tmp_path / "out").exists()


# --- the workflow ---------------------------------------------------------------------------------
MIX_VERIFIED = "results/mix/verify/report.json"
CONVERSION = {"convert_gather": 1, "stats": 1, "verify": 1}  # what follows the gather, up to verify


def mix_config(hdf5: Path, **edits: str) -> str:
    """Two sources: a user's HDF5 and synthetic demos with their own seed (`edits` replace a source's YAML)."""
    sources = {
        "bottle": f"{{kind: hdf5, path: {hdf5}, language_instruction: '{BOTTLE}'}}",
        "microwave": f"{{kind: synth, synth: {{seed: 3}}, language_instruction: '{MICROWAVE}'}}",
        **edits,
    }
    return (
        "dataset:\n  name: mix\n  sources:\n"
        + "".join(f"    {n}: {s}\n" for n, s in sources.items())
        + "synth: {episodes: 2}\n"
    )


@pytest.fixture(scope="module")
def mix_run(tmp_path_factory) -> tuple[Path, Path]:
    """The two-source config converted and verified for real once."""
    workdir = tmp_path_factory.mktemp("mix")
    bottle = make_hdf5(workdir / "bottle.hdf5", seed=1)
    files = overlay(workdir / "mix.yaml", mix_config(bottle))
    plan = planned(smk(workdir, "-n", MIX_VERIFIED, configfiles=files))
    assert plan == {"synth": 1, "convert_shard": 4, **CONVERSION}  # the HDF5 source needs no synth
    result = smk(workdir, "-c2", MIX_VERIFIED, configfiles=files)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert planned(smk(workdir, "-n", MIX_VERIFIED, configfiles=files)) == {}
    return workdir, bottle


def plan_after(mix_run, tmp_path, text: str) -> dict[str, int]:
    workdir, _ = mix_run
    return planned(smk(workdir, "-n", MIX_VERIFIED, configfiles=overlay(tmp_path / "edit.yaml", text)))


@pytest.mark.slow
def test_workflow_writes_one_dataset_of_both_sources(mix_run):
    workdir, bottle = mix_run
    ds = workdir / "results" / "mix"
    source = json.loads((ds / "lerobot" / "meta" / "source.json").read_text())
    assert [(s["name"], s["num_episodes"]) for s in source["sources"]] == [("bottle", 4), ("microwave", 2)]
    assert source["sources"][0]["hdf5"] == str(bottle)
    assert [t["task"] for t in jsonl(ds / "lerobot" / "meta" / "tasks.jsonl")] == [BOTTLE, MICROWAVE]
    assert (ds / "sources" / "microwave" / "raw.hdf5").is_file() and not (ds / "sources" / "bottle").joinpath(
        "raw.hdf5"
    ).exists()
    assert (workdir / "logs" / "convert_shard" / "mix" / "microwave" / "1.log").is_file()
    report = json.loads((ds / "verify" / "report.json").read_text())
    assert report["source"] == {"bottle": str(bottle), "microwave": "results/mix/sources/microwave/raw.hdf5"}


@pytest.mark.slow
def test_instruction_edit_reruns_the_gather_only(mix_run, tmp_path):
    edit = {"microwave": "{kind: synth, synth: {seed: 3}, language_instruction: 'Close the microwave.'}"}
    assert plan_after(mix_run, tmp_path, mix_config(mix_run[1], **edit)) == CONVERSION
    edit = {"bottle": f"{{kind: hdf5, path: {mix_run[1]}, language_instruction: '{BOTTLE}', task_index: 3}}"}
    assert plan_after(mix_run, tmp_path, mix_config(mix_run[1], **edit)) == CONVERSION


@pytest.mark.slow
def test_synth_seed_edit_reruns_that_source_only(mix_run, tmp_path):
    edit = {"microwave": f"{{kind: synth, synth: {{seed: 4}}, language_instruction: '{MICROWAVE}'}}"}
    assert plan_after(mix_run, tmp_path, mix_config(mix_run[1], **edit)) == {
        "synth": 1,
        "convert_shard": 2,
        **CONVERSION,
    }


@pytest.mark.slow
def test_source_hdf5_counts_by_content_per_source(mix_run):
    workdir, bottle = mix_run
    files = [*test_workflow.CONFIGS, workdir / "mix.yaml"]
    later = bottle.stat().st_mtime_ns + 60 * 10**9
    os.utime(bottle, ns=(later, later))  # touch: nothing
    assert planned(smk(workdir, "-n", MIX_VERIFIED, configfiles=files)) == {}
    original = bottle.read_bytes()
    make_hdf5(bottle, seed=2)
    try:  # the bottle's shards, not the microwave's
        assert planned(smk(workdir, "-n", MIX_VERIFIED, configfiles=files)) == {"convert_shard": 2, **CONVERSION}
    finally:
        bottle.write_bytes(original)


@pytest.mark.slow
def test_shared_settings_rerun_every_source_and_unused_ones_nothing(mix_run, tmp_path):
    config = mix_config(mix_run[1])
    assert plan_after(mix_run, tmp_path, config + "convert: {video: {crf: 20}}\n") == {"convert_shard": 4, **CONVERSION}
    # the top-level synth: block counts for synth sources only, under their own overrides (microwave's seed)
    assert plan_after(mix_run, tmp_path, config + "synth: {episodes: 2, seed: 5}\n") == {}
    assert plan_after(mix_run, tmp_path, config + "synth: {episodes: 3}\n") == {
        "synth": 1,
        "convert_shard": 2,
        **CONVERSION,
    }
    # with sources, convert.language_instruction is not used (each source has its own)
    assert plan_after(mix_run, tmp_path, config + "convert: {language_instruction: Other.}\n") == {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "text, message",
    [
        (
            "dataset: {sources: {a: {kind: synth}}}\n",
            "dataset.sources.a: 'language_instruction' is a required property",
        ),
        (
            "dataset: {sources: {a: {kind: synth, language_instruction: x, path: /a.hdf5}}}\n",
            "unknown key dataset.sources.a.path",
        ),
        (
            "dataset: {sources: {a: {kind: synth, language_instruction: x, synth: {sed: 3}}}}\n",
            "unknown key dataset.sources.a.synth.sed",
        ),
        (
            "dataset: {sources: {a: {kind: synth, language_instruction: x, synth: {seed: x}}}}\n",
            "dataset.sources.a.synth.seed: 'x' is not of type 'integer'",
        ),
        (
            "dataset: {source: {kind: hdf5, path: /a.hdf5}, sources: {a: {kind: synth, language_instruction: x}}}\n",
            "dataset.source and dataset.sources are both set",
        ),
        (
            "dataset: {sources: {a: {kind: hub, repo_id: r/x, path: a.hdf5, format: lerobot, "
            "language_instruction: x}}}\n",
            "dataset.sources.a.format",
        ),
        ("dataset: {sources: {1: {kind: synth, language_instruction: x}}}\n", "source name 1 is not a string"),
    ],
)
def test_source_config_faults_are_one_line(tmp_path, text, message):
    result = smk(tmp_path, "-n", configfiles=overlay(tmp_path / "bad.yaml", text))
    assert result.returncode != 0
    assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]


@pytest.mark.slow
def test_two_tasks_end_to_end(tmp_path):
    """config/test/two_tasks.yaml: two synthetic sources x 3 demos, two tasks, through eval."""
    checkout_configs = [*test_workflow.CONFIGS, test_workflow.CHECKOUT / "config" / "test" / "two_tasks.yaml"]
    start = time.monotonic()
    result = smk(tmp_path, "-c2", configfiles=checkout_configs)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    print(f"two_tasks workflow: {time.monotonic() - start:.0f} s")
    ds = tmp_path / "results" / "two_tasks"
    meta = ds / "lerobot" / "meta"
    assert len(jsonl(meta / "tasks.jsonl")) == 2
    episodes = jsonl(meta / "episodes.jsonl")
    assert [e["episode_index"] for e in episodes] == list(range(6))
    source = json.loads((meta / "source.json").read_text())
    assert [(e["episode_index"], e["source"], e["demo"]) for e in source["episodes"]] == [
        (i, "right" if i < 3 else "left", f"demo_{i % 3}") for i in range(6)
    ]
    assert [e["tasks"] for e in episodes[:3]] != [e["tasks"] for e in episodes[3:]]
    assert (meta / "stats.json").is_file()
    metrics = json.loads((ds / "eval" / "tiny" / "metrics.json").read_text())
    assert np.isfinite(metrics["verdict"]["baselines"]["mean_action"]["ratio"] or 0.0)
