"""Pages for `snakemake --report`: small self-contained HTML files and PNGs, one per subcommand.

    posttrain report dataset  DATASET_DIR --output HTML       episodes, frames, fps, cameras + stats.json table
    posttrain report verify   VERIFY_DIR  --output HTML       verify's report.json + preview PNGs (inlined)
    posttrain report training RUN_DIR     --output PNG        TensorBoard scalar curves (every tag found)
    posttrain report video    DATASET_DIR --episode 0 --output HTML   playable episode video (MP4 inlined)
    posttrain report metrics  METRICS_JSON --output HTML      open-loop evaluation tables

Snakemake's report shows MP4 only as a download, so the video page inlines the MP4 as a data URL;
images are inlined the same way so every page is one file.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from pathlib import Path

import numpy as np

from posttrain.errors import PosttrainError
from posttrain.files import write_text_atomic
from posttrain.lerobot import LeRobotDataset, read_json

log = logging.getLogger("posttrain.report")

STYLE = """<style>
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
.fail { color: #b00; font-weight: bold; } .ok { color: #070; } .warn { color: #a50; font-weight: bold; }
.banner { border: 2px solid; padding: 0.5em 0.8em; max-width: 60em; }
</style>"""


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="page", required=True, metavar="PAGE")
    p = sub.add_parser("dataset", help="dataset summary and stats.json table (HTML)")
    p.add_argument("dataset", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p = sub.add_parser("verify", help="verification results and previews (HTML)")
    p.add_argument("verify_dir", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p = sub.add_parser("training", help="training curves from the TensorBoard logs (PNG)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--output", type=Path, required=True)
    p = sub.add_parser("video", help="playable episode video (HTML)")
    p.add_argument("dataset", type=Path)
    p.add_argument("--episode", type=int, default=0)
    p.add_argument("--camera", default=None, help="video key (default: the first camera)")
    p.add_argument("--output", type=Path, required=True)
    p = sub.add_parser("metrics", help="open-loop evaluation metrics (HTML)")
    p.add_argument("metrics", type=Path)
    p.add_argument("--output", type=Path, required=True)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.page == "training":
        training_curves(args.run_dir, args.output)
        return 0
    pages = {
        "dataset": lambda: dataset_page(LeRobotDataset(args.dataset)),
        "verify": lambda: verify_page(args.verify_dir),
        "video": lambda: video_page(LeRobotDataset(args.dataset), args.episode, args.camera),
        "metrics": lambda: metrics_page(args.metrics),
    }
    write_text_atomic(args.output, pages[args.page]())
    log.info("wrote %s", args.output)
    return 0


# --- HTML helpers -----------------------------------------------------------------------------
def page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
        f"</head><body><h2>{html.escape(title)}</h2>\n{body}\n</body></html>\n"
    )


def table(header: list[str], rows: list[list], left_cols: int = 1) -> str:
    def cell(tag, i, v):
        cls = " class='l'" if i < left_cols else ""
        return f"<{tag}{cls}>{html.escape(fmt(v))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def data_url(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# --- dataset ----------------------------------------------------------------------------------
def dataset_page(ds: LeRobotDataset) -> str:
    lengths = np.array([e["length"] for e in ds.episodes])
    if not len(lengths):
        raise PosttrainError(f"{ds.root / 'meta' / 'episodes.jsonl'}: no episodes")
    info = ds.info
    summary = [
        ["episodes", ds.num_episodes],
        ["frames", int(lengths.sum())],
        ["fps", ds.fps],
        ["episode length (frames)", f"min {lengths.min()}, mean {lengths.mean():.1f}, max {lengths.max()}"],
        ["duration", f"{lengths.sum() / ds.fps:.1f} s"],
        ["tasks", "; ".join(ds.tasks.values())],
        ["robot type", info.get("robot_type")],
        ["format", info.get("codebase_version")],
    ]
    cameras = []
    for key in ds.video_keys:
        feature = info["features"][key]
        vi = feature.get("video_info", feature.get("info", {}))
        cameras.append(
            [
                key,
                f"{vi.get('video.width', feature['shape'][1])}x{vi.get('video.height', feature['shape'][0])}",
                vi.get("video.fps"),
                vi.get("video.codec"),
                vi.get("video.pix_fmt"),
            ]
        )
    groups = [[kind, g.name, g.column, f"{g.start}:{g.end}"] for kind in ("state", "action") for g in ds.groups(kind)]
    body = (
        table(["", "value"], summary, left_cols=2)
        + "<h3>Cameras</h3>"
        + table(["video key", "size", "fps", "codec", "pix_fmt"], cameras, 5)
        + "<h3>Modality groups (meta/modality.json)</h3>"
        + table(["kind", "group", "column", "slice"], groups, 4)
        + "<h3>meta/stats.json</h3>"
        + stats_tables(ds)
    )
    return page(f"Dataset {ds.root.parent.name}/{ds.root.name}", body)


def stats_tables(ds: LeRobotDataset) -> str:
    """One table per column of stats.json: a row per dimension, named from info.json where it names them."""
    out = []
    for column, stats in ds.stats.items():
        keys = [k for k in ("mean", "std", "min", "max", "q01", "q99") if k in stats]
        dims = len(np.atleast_1d(stats[keys[0]])) if keys else 0
        names = ds.info["features"].get(column, {}).get("names")
        names = names if isinstance(names, list) and len(names) == dims else [str(i) for i in range(dims)]
        rows = [[names[d]] + [float(np.atleast_1d(stats[k])[d]) for k in keys] for d in range(dims)]
        out.append(f"<h4>{html.escape(column)}</h4>" + table(["dim"] + keys, rows))
    return "".join(out)


# --- verify -----------------------------------------------------------------------------------
def verify_page(verify_dir: Path) -> str:
    report_file = verify_dir / "report.json"
    report = read_json(report_file)
    status = report.get("passed", report.get("ok"))
    body = ""
    if status is not None:
        body += f"<p class='{'ok' if status else 'fail'}'>{'PASSED' if status else 'FAILED'}</p>"
    body += json_tables(report)
    previews = sorted((verify_dir / "preview").glob("*.png")) if (verify_dir / "preview").is_dir() else []
    previews += sorted(p for p in verify_dir.glob("*.png"))
    if previews:
        body += "<h3>Previews</h3>"
        for png in previews:
            body += (
                f"<figure><img src='{data_url(png, 'image/png')}' style='max-width:100%'>"
                f"<figcaption>{html.escape(png.name)}</figcaption></figure>"
            )
    return page(f"Verification: {verify_dir}", body)


def json_tables(obj: dict) -> str:
    """A JSON report as HTML without knowing its schema: scalars in one table, lists of dicts as tables."""
    scalars, out = [], []
    for key, value in obj.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for row in value for k in row))
            rows = [[row.get(c) for c in cols] for row in value]
            out.append(f"<h3>{html.escape(key)}</h3>" + table(cols, rows, left_cols=len(cols)))
        elif isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            cols = list(dict.fromkeys(k for row in value.values() for k in row))
            rows = [[name] + [row.get(c) for c in cols] for name, row in value.items()]
            out.append(f"<h3>{html.escape(key)}</h3>" + table([""] + cols, rows, left_cols=len(cols) + 1))
        else:
            scalars.append([key, value])
    return (table(["", "value"], scalars, left_cols=2) if scalars else "") + "".join(out)


# --- training curves --------------------------------------------------------------------------
def read_scalars(log_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar tag in the TensorBoard event files under `log_dir` -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")})
    if not runs:
        raise PosttrainError(f"{log_dir}: no TensorBoard event files")
    scalars = {}
    for run_dir in runs:
        acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        acc.Reload()
        prefix = "" if len(runs) == 1 else f"{run_dir.relative_to(log_dir)}/"
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            scalars[prefix + tag] = (np.array([e.step for e in events]), np.array([e.value for e in events]))
    if not scalars:
        raise PosttrainError(f"{log_dir}: event files hold no scalars")
    return scalars


def training_curves(run_dir: Path, output: Path) -> None:
    log_dir = run_dir / "tensorboard"
    scalars = read_scalars(log_dir if log_dir.is_dir() else run_dir)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = sorted(scalars)
    cols = min(3, len(tags))
    rows = -(-len(tags) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, tag in zip(axes.flat, tags):
        steps, values = scalars[tag]
        ax.plot(steps, values, "-o" if len(values) <= 30 else "-", linewidth=1, markersize=3)
        if "loss" in tag.lower() and np.all(values > 0) and values.max() > 10 * values.min():
            ax.set_yscale("log")
        ax.set_title(f"{tag} (last {values[-1]:.4g})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags) :]:
        ax.axis("off")
    fig.suptitle(f"Training curves: {run_dir.name}", fontsize=11)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(output)
    log.info("wrote %s (%d tags)", output, len(tags))


# --- episode video ----------------------------------------------------------------------------
def video_page(ds: LeRobotDataset, episode_index: int, camera: str | None) -> str:
    meta = next((e for e in ds.episodes if e["episode_index"] == episode_index), None)
    if meta is None:
        raise PosttrainError(f"{ds.root / 'meta' / 'episodes.jsonl'}: no episode {episode_index}")
    if not ds.video_keys:
        raise PosttrainError(f"{ds.root / 'meta' / 'info.json'}: dataset has no video features")
    camera = camera or ds.video_keys[0]
    if camera not in ds.video_keys:
        raise PosttrainError(f"{ds.root / 'meta' / 'info.json'}: no camera {camera} (have {ds.video_keys})")
    path = ds.video_path(episode_index, camera)
    if not path.is_file():
        raise PosttrainError(f"{path}: video file not found (episode {episode_index}, {camera})")
    body = (
        f"<p>Episode {episode_index}, camera <code>{html.escape(camera)}</code>, {meta['length']} frames at "
        f"{ds.fps} fps. Task: {html.escape('; '.join(meta.get('tasks', [])))}</p>"
        f"<video controls loop muted width='512' src='{data_url(path, 'video/mp4')}'></video>"
        f"<p><small>{html.escape(str(path.relative_to(ds.root)))}</small></p>"
    )
    return page(f"Episode {episode_index}", body)


# --- evaluation metrics -----------------------------------------------------------------------
BASELINE_LABELS = {"mean_action": "mean action", "hold_state": "hold current state"}
WHAT_TO_TRY = (
    "This is information, not a failure: the workflow succeeded, but this checkpoint is not worth "
    "deploying as it is. Try a longer training budget (train.max_steps or train.epochs), a lower "
    "train.state_dropout_prob, or a larger train.preset; see the README on reading the verdict."
)


def metrics_page(metrics_file: Path) -> str:
    m = read_json(metrics_file)
    methods = [("policy", m["policy"]), ("mean action", m["mean_action"]), ("hold current state", m["hold_state"])]
    methods = [(name, v) for name, v in methods if v is not None]
    overall = [[name, v["mse"], v["mae"], v["mse_per_step"][0], v["mse_per_step"][-1]] for name, v in methods]
    groups = list(m["policy"]["groups"])
    per_group = [[g] + [v["groups"][g][k] for _, v in methods for k in ("mse", "mae")] for g in groups]
    group_header = ["group"] + [f"{name} {k.upper()}" for name, _ in methods for k in ("mse", "mae")]
    per_episode = [
        [ep, e["chunks"], e["policy_mse"], e["mean_action_mse"], e["hold_state_mse"]]
        for ep, e in m["per_episode"].items()
    ]
    lat = m["latency_ms_per_chunk"]
    body = (
        verdict_banner(m.get("verdict"))
        + f"<p>Checkpoint <code>{html.escape(m['checkpoint'])}</code> (step {fmt(m['step'])}), "
        f"{m['num_chunks']} chunks of {m['action_horizon']} steps from held-out episodes "
        f"{m['heldout_episodes']} (stride {m['stride']}). Errors in {html.escape(m['units'])}.</p>"
        + table(["method", "MSE", "MAE", "MSE step 0", f"MSE step {m['action_horizon'] - 1}"], overall)
        + verdict_tables(m)
        + task_tables(m)
        + swap_tables(m.get("instruction_swap"))
        + "<h3>Per action group</h3>"
        + table(group_header, per_group)
        + "<h3>Per held-out episode (MSE)</h3>"
        + table(["episode", "chunks", "policy", "mean action", "hold state"], per_episode)
        + "<h3>Inference latency per chunk (ms)</h3>"
        + table(["mean", "p50", "p90", "batch size"], [[lat["mean"], lat["p50"], lat["p90"], lat["batch_size"]]], 0)
        + "<h3>Baselines</h3>"
        + table(["baseline", "definition"], [[k, v] for k, v in m["baselines"].items()], 2)
    )
    if m.get("checkpoints"):
        rows = [
            [name, s["step"], s["mse"], s["mae"], yes_no(s.get("beats_all_baselines"))]
            for name, s in m["checkpoints"].items()
        ]
        body += "<h3>All checkpoints</h3>" + table(["checkpoint", "step", "MSE", "MAE", "beats all baselines"], rows)
    return page("Open-loop evaluation", body)


def verdict_banner(verdict: dict | None) -> str:
    """The page's first line: does the policy beat the baselines? Red when it loses to one overall."""
    if verdict is None:
        return (
            "<p class='banner warn'>No verdict in metrics.json (written by an older posttrain eval): "
            "re-run the evaluation.</p>"
        )
    summary = html.escape(verdict["summary"])
    if not verdict["beats_all_baselines"]:
        return (
            f"<div class='banner fail'><p>Warning: the policy does not beat every baseline.</p>"
            f"<p>{summary}</p><p>{html.escape(WHAT_TO_TRY)}</p></div>"
        )
    mixed = any(
        b["steps_won"] < b["steps"] or not all(g["beats"] for g in b["groups"].values())
        for b in verdict["baselines"].values()
    )
    return f"<p class='banner {'warn' if mixed else 'ok'}'>{summary}</p>"


def verdict_tables(m: dict) -> str:
    """policy/baseline MSE ratios overall, per horizon step and per action group (< 1: the policy wins)."""
    verdict = m.get("verdict")
    if verdict is None:
        return ""
    bases = verdict["baselines"]
    labels = [BASELINE_LABELS.get(n, n) for n in bases]
    overall = [
        [
            BASELINE_LABELS.get(n, n),
            b["ratio"],
            yes_no(b["beats"]),
            f"{b['steps_won']} of {b['steps']}",
            f"{sum(g['beats'] for g in b['groups'].values())} of {len(b['groups'])}",
        ]
        for n, b in bases.items()
    ]

    def pairs(cells):  # (ratio, beats) per baseline -> ratio, yes/no, ratio, yes/no, ...
        return [x for ratio, beats in cells for x in (ratio, yes_no(beats))]

    steps = [
        [i, m["policy"]["mse_per_step"][i]]
        + pairs((b["ratio_per_step"][i], b["beats_per_step"][i]) for b in bases.values())
        for i in range(m["action_horizon"])
    ]
    groups = [
        [g] + pairs((b["groups"][g]["ratio"], b["groups"][g]["beats"]) for b in bases.values())
        for g in m["policy"]["groups"]
    ]
    pair_header = [h for label in labels for h in (f"policy / {label}", "beats")]
    return (
        "<h3>Verdict: policy MSE / baseline MSE (below 1: the policy beats the baseline)</h3>"
        f"<p><small>{html.escape(verdict['rule'])}</small></p>"
        + table(["baseline", "policy / baseline MSE", "beats", "horizon steps won", "groups won"], overall)
        + "<h3>Verdict per horizon step</h3>"
        + table(["step", "policy MSE"] + pair_header, steps)
        + "<h3>Verdict per action group</h3>"
        + table(["group"] + pair_header, groups)
    )


def task_tables(m: dict) -> str:
    """Per task (datasets with two or more tasks): the pooled table's numbers and the verdict, task by task."""
    tasks = m.get("per_task") or {}
    if len(tasks) < 2:
        return ""  # one task: its numbers are the pooled ones above
    bases = [
        n
        for n in ("mean_action", "hold_state")
        if any(t["verdict"] and t["verdict"]["baselines"].get(n) for t in tasks.values())
    ]
    rows, lost, unseen = [], [], []
    for key, t in tasks.items():
        if t["verdict"] is None:  # no held-out episode of this task
            rows.append([key, t["task"], "none", 0] + [None] * (1 + 2 * len(bases)) + [None])
            unseen.append(f"{key} ({t['task']})")
            continue
        ratios = [(t["verdict"]["baselines"].get(n) or {}).get("ratio") for n in bases]
        rows.append(
            [key, t["task"], ", ".join(map(str, t["episodes"])), t["num_chunks"], t["policy"]["mse"]]
            + [(t[n] or {}).get("mse") for n in bases]
            + ratios
            + [yes_no(t["verdict"]["beats_all_baselines"])]
        )
        if not t["verdict"]["beats_all_baselines"]:
            lost.append(f"{key} ({t['task']})")
    labels = [BASELINE_LABELS[n] for n in bases]
    header = (
        ["task", "instruction", "held-out episodes", "chunks", "policy MSE"]
        + [f"{x} MSE" for x in labels]
        + [f"policy / {x}" for x in labels]
        + ["beats all baselines"]
    )
    note = (
        f"<p class='warn'>The policy does not beat every baseline on task {'; '.join(map(html.escape, lost))}: "
        f"the pooled verdict above can hide a task it has not learned.</p>"
        if lost
        else ""
    )
    if unseen:
        note += (
            f"<p class='warn'>No held-out episode of task {'; '.join(map(html.escape, unseen))}: the split holds "
            f"out the last episodes of the dataset, so this task is not evaluated.</p>"
        )
    return (
        "<h3>Per task (the task of each chunk's first frame; mean action: the task's own train episodes)</h3>"
        + note
        + table(header, rows, left_cols=3)
    )


SWAP_READING = (
    "How to read it: the same held-out chunks are predicted again with another task's instruction, from "
    "the same noise. A policy that follows the instruction moves its prediction by clearly more than "
    "drawing other noise does (change / resample well above 1) and errs more with the wrong instruction "
    "(swapped / true error above 1). Near 1 and 1: the policy ignores the instruction (it predicts from "
    "the image and state alone), which is fine for one task but not for several that start alike."
)


def swap_tables(swap: dict | None) -> str:
    """The instruction swap check (datasets with two or more tasks), overall and per task."""
    if not swap:
        return ""

    def row(name, s):
        return [
            name,
            s.get("task", "all tasks"),
            s.get("swapped_to", "the next task"),
            s["num_chunks"],
            s["change_mse"],
            s["resample_mse"],
            s["policy_mse"],
            s["swapped_mse"],
            s["change_vs_resample"],
            s["change_vs_error"],
            s["swapped_vs_true_error"],
            yes_no(s["follows_instruction"]),
        ]

    rows = [row(key, s) for key, s in swap["per_task"].items()] + [row("all", swap)]
    header = [
        "task",
        "instruction",
        "swapped to",
        "chunks",
        "change MSE",
        "resample MSE",
        "policy MSE",
        "swapped MSE",
        "change / resample",
        "change / policy error",
        "swapped / true error",
        "follows",
    ]
    groups = table(["action group", "change MSE"], [[g, v] for g, v in swap["change_mse_groups"].items()])
    return (
        "<h3>Instruction swap: does the policy follow the instruction?</h3>"
        f"<p class='{'ok' if swap['follows_instruction'] else 'warn'}'>{html.escape(swap['summary'])}</p>"
        f"<p><small>{html.escape(SWAP_READING)}</small></p>"
        + table(header, rows, left_cols=3)
        + "<h4>Change per action group (which joints the instruction moves)</h4>"
        + groups
    )


def yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")
