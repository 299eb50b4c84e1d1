"""Computed peak GPU memory of the single-GPU training presets, both backends; prints ONE JSON line.

    python bench/memory_budget.py            # JSON: config/hw/gpu1.yaml and gpu1-48gb.yaml
    python bench/memory_budget.py --table    # the README's markdown table instead

The numbers come from posttrain.policy.budget (parameter counts, saved activations, AdamW state;
its docstring lists the assumptions). No GPU is used. Where a GPU is available, `bench/train.py
--trainer --presets large --batch 16 --mixed-precision bf16` measures the native trainer's peak
(torch.cuda.max_memory_allocated) to put beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from posttrain.policy.budget import CARD_24GB, FIT_FRACTION, GIB, train_budgets
from posttrain.workflow import hardware_preset, merge, read_config_file

CONFIG = Path(__file__).resolve().parents[1] / "config"
HARDWARE = ("gpu1", "gpu1-48gb")


def budgets() -> dict:
    out = {}
    for name in HARDWARE:
        train = merge(read_config_file(CONFIG / "config.yaml"), hardware_preset(name, CONFIG / "hw"))["train"]
        out[name] = {backend: budget.to_dict() for backend, budget in train_budgets(train).items()}
    return out


def table(results: dict) -> str:
    head = (
        "| preset | backend | trains | micro-batch | params trainable / frozen | weights | gradients | "
        "AdamW | saved for backward | peak | of 24 GiB |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, by_backend in results.items():
        for backend, b in by_backend.items():
            rows.append(
                f"| `{name}` | {backend} | {b['setting']} | {b['micro_batch']} | "
                f"{b['trainable_params'] / 1e9:.2f}B / {b['frozen_params'] / 1e9:.2f}B | "
                f"{b['weights_gib']:.1f} | {b['gradients_gib']:.1f} | {b['optimizer_gib']:.1f} | "
                f"{b['saved_for_backward_gib']:.1f} | **{b['peak_gib']:.1f}** | {b['of_24gb']:.0%} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", action="store_true", help="print the README's markdown table")
    args = parser.parse_args()
    results = budgets()
    if args.table:
        print(table(results))
    else:
        print(json.dumps({"card_gib": CARD_24GB / GIB, "fit_fraction": FIT_FRACTION, "presets": results}))


if __name__ == "__main__":
    main()
