"""`posttrain <stage> ...`: one subcommand per stage of the workflow, and nothing else.

Each stage module defines `add_arguments(parser)` and `run(args)`. Only the module of the chosen
stage is imported, so `posttrain synth` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from posttrain.errors import PosttrainError

STAGES = {
    "synth": ("posttrain.synth", "write a synthetic dataset in the Isaac Lab Mimic HDF5 schema"),
    "convert": ("posttrain.convert", "convert Mimic HDF5 to a LeRobot v2.1 dataset"),
    "stats": ("posttrain.stats", "write GR00T-compatible meta/stats.json (+ episodes_stats.jsonl)"),
    "verify": ("posttrain.verify", "check a converted dataset against its source HDF5"),
    "train": ("posttrain.train", "post-train a policy (native flow-matching policy or Isaac-GR00T)"),
    "eval": ("posttrain.eval", "open-loop evaluation of a checkpoint on held-out episodes"),
    "report": ("posttrain.report", "render report pages (training curves, episode video)"),
    "hub": ("posttrain.hub", "download from / upload to the Hugging Face Hub"),
}


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(prog="posttrain", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    modules = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in STAGES.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sub)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        result = modules[args.stage].run(args)
    except PosttrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
