"""Build-system logic the Snakemake rules call, kept here so that it is unit-tested.

Code versions: Snakemake's `code` trigger only sees a rule's shell text, not the posttrain package
it calls. So each rule gets a `code` param: a hash of its stage module and every posttrain module it
imports (found statically, transitively). The hash is of the parsed syntax tree, so comments and
formatting never re-run anything; any change to what the code does re-runs that stage onward.
The dispatcher cli.py and this module are left out (they change no stage's output).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent  # src/posttrain
NOT_HASHED = ("posttrain", "posttrain.cli", "posttrain.workflow")


def module_file(name: str) -> Path | None:
    """posttrain.a.b -> src/posttrain/a/b.py (or a/b/__init__.py); None for a name that is not a module."""
    base = PACKAGE.joinpath(*name.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, dotted: str) -> set[str]:
    """The posttrain names a module imports (absolute and relative imports, and `from x import module`)."""
    package = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{node.module}" if node.module else parent
            else:
                base = node.module or ""
            found.add(base)
            # `from posttrain import lerobot` names a module, not an attribute
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "posttrain" or name.startswith("posttrain.")}


@functools.cache
def stage_sources(stage: str) -> tuple[Path, ...]:
    """posttrain/<stage>.py and the posttrain modules it imports, transitively, sorted."""
    seen, todo, files = set(), [f"posttrain.{stage}"], set()
    while todo:
        name = todo.pop()
        if name in seen or name in NOT_HASHED:
            continue
        seen.add(name)
        path = module_file(name)
        if path is not None:
            files.add(path)
            todo.extend(imported_modules(path, name))
    return tuple(sorted(files))


def source_digest(path: Path) -> bytes:
    """What a Python file does, without its comments and layout: the dump of its syntax tree."""
    return ast.dump(ast.parse(path.read_text(), filename=str(path))).encode()


def code_version(stage: str, extra: list[Path] = ()) -> str:
    """16 hex digits over the stage's sources (syntax trees) and `extra` data files (bytes)."""
    digest = hashlib.sha256()
    for path in stage_sources(stage):
        digest.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + source_digest(path) + b"\0")
    for path in sorted(Path(p) for p in extra):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
