"""A training run's identity and the run directory's bookkeeping, shared by both training backends.

Identity: the run-defining options in canonical form, the content fingerprint of the dataset the
run learns from (posttrain.lerobot.content_fingerprint) and the trainer's code version. Only a
checkpoint of the same identity is ever resumed; anything else in the run directory that would
mix with a new run is moved to RUN_DIR/superseded/<time>-<label>/, never deleted.

Checkpoint seal: before a checkpoint's completion marker (trainer_state.json) is written, its
manifest.json records every file's size and sha256, the marker's included. A checkpoint is
resumed only when its files still match: a truncated or damaged one is found before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from posttrain.files import write_json_atomic, write_text_atomic

IDENTITY = "identity.json"
MANIFEST = "manifest.json"
SUPERSEDED = "superseded"


# --- identity ----------------------------------------------------------------------------------
def canonical(value):
    """Plain JSON values compared by meaning: 800 and 800.0 are one number, paths are strings."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)  # Path and the like


def make_identity(options: dict, dataset: dict, code: str) -> dict:
    """{"id": 16 hex digits, "options", "dataset", "code"}: the id is a hash of the other three."""
    body = {"options": canonical(options), "dataset": dict(sorted(dataset.items())), "code": code}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"id": digest[:16], **body}


def read_identity(directory: Path) -> dict | None:
    """The identity recorded in a directory, or None when it has none (or an unreadable one)."""
    try:
        identity = json.loads((directory / IDENTITY).read_text())
    except (OSError, ValueError):
        return None
    return identity if isinstance(identity, dict) and "id" in identity else None


def differences(old: dict | None, new: dict) -> str:
    """What makes `old` another run than `new`, e.g. 'learning_rate: 0.001 -> 0.0005; dataset content
    changed (meta/tasks.jsonl, data)'."""
    if old is None:
        return f"it records no {IDENTITY} (made by an older posttrain, or not by posttrain train)"
    found = []
    before, after = old.get("options", {}), new["options"]
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            found.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    before, after = old.get("dataset", {}), new["dataset"]
    parts = [key for key in sorted(set(before) | set(after)) if before.get(key) != after.get(key)]
    if parts:
        found.append(f"dataset content changed ({', '.join(parts)})")
    if old.get("code") != new["code"]:
        found.append(f"trainer code changed ({old.get('code')} -> {new['code']})")
    return "; ".join(found) or "identity id differs"


# --- keeping old runs ----------------------------------------------------------------------------
def set_aside(run_dir: Path, paths: list[Path], label: str) -> Path:
    """Move `paths` (inside run_dir) to run_dir/superseded/<time>-<label>/ and return that folder."""
    base = run_dir / SUPERSEDED / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    target, n = base, 1
    while target.exists():
        n += 1
        target = base.with_name(f"{base.name}-{n}")
    target.mkdir(parents=True)
    for path in paths:
        os.replace(path, target / path.name)
    return target


# --- checkpoint seal -----------------------------------------------------------------------------
def file_record(data_or_path: bytes | Path) -> dict:
    if isinstance(data_or_path, bytes):
        return {"size": len(data_or_path), "sha256": hashlib.sha256(data_or_path).hexdigest()}
    with open(data_or_path, "rb") as f:
        return {"size": data_or_path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def seal(directory: Path, marker: str, text: str) -> None:
    """Write manifest.json (every file's size and checksum, `marker` included), then `marker` last."""
    files = {p.relative_to(directory).as_posix(): file_record(p) for p in sorted(directory.rglob("*")) if p.is_file()}
    files[marker] = file_record(text.encode())
    write_json_atomic(directory / MANIFEST, {"files": files})
    write_text_atomic(directory / marker, text)


def damage(directory: Path) -> str | None:
    """None when the checkpoint's files match its manifest, else what is wrong, e.g.
    'optimizer.bin: 1000 bytes, manifest.json says 2345'."""
    try:
        files = json.loads((directory / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} missing or unreadable"
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name}: {size} bytes, {MANIFEST} says {expected['size']}"
        if file_record(path)["sha256"] != expected["sha256"]:
            return f"{name}: checksum differs from {MANIFEST}"
    return None
