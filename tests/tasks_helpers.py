"""A two-task copy of a LeRobot dataset for the task tests: `relabel` gives some episodes another task."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from posttrain.lerobot import LeRobotDataset

TASK_COLUMNS = ("task_index", "annotation.human.action.task_description")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def replace_column(table: pa.Table, name: str, values: list) -> pa.Table:
    if name not in table.column_names:
        return table
    position = table.column_names.index(name)
    return table.set_column(position, table.schema.field(name), pa.array(values, table.schema.field(name).type))


def relabel(dataset: Path, episodes: list[int], task_index: int, text: str) -> None:
    """Give `episodes` of a (copied) dataset a new task: parquet task columns, episodes.jsonl, tasks.jsonl."""
    ds = LeRobotDataset(dataset)
    for episode in episodes:
        table = ds.read_table(episode)
        for column in TASK_COLUMNS:
            table = replace_column(table, column, [task_index] * table.num_rows)
        pq.write_table(table, ds.parquet_path(episode))
    rows = [{**row, "tasks": [text]} if row["episode_index"] in episodes else row for row in ds.episodes]
    write_jsonl(dataset / "meta" / "episodes.jsonl", rows)
    tasks = {**ds.tasks, task_index: text}
    write_jsonl(dataset / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in sorted(tasks.items())])
    info = json.loads((dataset / "meta" / "info.json").read_text())
    (dataset / "meta" / "info.json").write_text(json.dumps(dict(info, total_tasks=len(tasks)), indent=4))
