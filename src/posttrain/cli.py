"""`posttrain <stage> ...`: one subcommand per stage of the workflow, and nothing else.

Each stage module defines `add_arguments(parser)` and `run(args)`. Only the module of the chosen
stage is imported, so `posttrain synth` does not pay for importing torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import shutil
import sys
from pathlib import Path

from posttrain.errors import PosttrainError

STAGES = {
    "synth": ("posttrain.synth", "write a synthetic dataset in the Isaac Lab Mimic HDF5 schema"),
    "convert": ("posttrain.convert", "convert Mimic HDF5 to a LeRobot v2.1 dataset"),
    "stats": ("posttrain.stats", "write GR00T-compatible meta/stats.json (+ episodes_stats.jsonl)"),
    "verify": ("posttrain.verify", "check a converted dataset against its source HDF5"),
    "frames": ("posttrain.frames", "decode every video frame once at the policy's image size, for training"),
    "train": ("posttrain.train", "post-train a policy (native flow-matching policy or Isaac-GR00T)"),
    "eval": ("posttrain.eval", "open-loop evaluation of a checkpoint on held-out episodes"),
    "report": ("posttrain.report", "render report pages (training curves, episode video)"),
    "hub": ("posttrain.hub", "download from / upload to the Hugging Face Hub"),
    "export": ("posttrain.export", "write a LeRobot v3.0 copy of a dataset (lerobot >= 0.4), GR00T meta kept"),
}


class Parser(argparse.ArgumentParser):
    """A usage mistake is one line like every other error (`error: --epochs: must be > 0, got 0.0`)."""

    def error(self, message: str):
        raise PosttrainError(message.removeprefix("argument "))


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, dict]:
    parser = Parser(prog="posttrain", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    modules = {}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in STAGES.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sub)
    return parser, modules


# Faults of the machine, not of the code or the input: reported in one line, without a traceback.
ENVIRONMENT_ERRORS = {
    errno.EROFS: "read-only file system: write the output to a writable disk",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk or network mount?)",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.ENFILE: "too many open files on this machine",
    errno.ENOMEM: "out of memory",
}


def environment_error(err: OSError) -> str | None:
    """The one line for an OSError the machine caused, or None for any other error (a bug: traceback)."""
    if err.errno not in ENVIRONMENT_ERRORS:
        return None
    where = f"{err.filename}: " if err.filename else ""
    line = f"{where}{ENVIRONMENT_ERRORS[err.errno]}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and err.filename:
        existing = Path(os.path.abspath(err.filename))
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        line += f" ({shutil.disk_usage(existing).free / 2**20:.0f} MB free there)"
    return line


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # One log format for every stage, on stderr (rules send it to logs/<stage>/...).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        parser, modules = build_parser(argv)
        args = parser.parse_args(argv)
        result = modules[args.stage].run(args)
    except PosttrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        line = environment_error(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
