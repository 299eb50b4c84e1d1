"""Write outputs so that a crash never leaves a half-written file or directory behind, and so that
a stage never replaces or deletes a directory the project did not write.

Every directory a stage writes holds a marker, `.posttrain.json` = {"stage": NAME}. A later run of
the same stage may replace a directory with its marker (or one the previous version of the stage
wrote, recognised by its layout); anything else at `--output` is refused with one line.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from posttrain.errors import PosttrainError

MARKER = ".posttrain.json"
PART = "part"  # the stage of a directory inside another stage's output (e.g. verify's preview/)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside `path` to write; on success it is renamed over `path`,
    on any exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a sibling temporary file, then rename it over `path`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj, indent: int | None = 2) -> None:
    """JSON with a trailing newline, written atomically. Keys keep insertion order (stable bytes)."""
    write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


# --- ownership of output directories -----------------------------------------------------------


def _entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != MARKER)


def _legacy_layout(path: Path, stage: str) -> bool:
    """An output of this stage written before markers existed, recognised by what it holds only."""
    names = set(_entries(path))
    if stage == "dataset":  # a converted dataset: meta/source.json is ours (Snakemake deletes info.json first)
        meta = path / "meta"
        return (
            names <= {"meta", "data", "videos"}
            and meta.is_dir()
            and ((meta / "source.json").is_file() or not (meta / "info.json").exists())
        )
    if stage == "convert-shard":
        return names <= {"data", "videos", "shard.json"}
    if stage == "eval":  # (Snakemake deletes the declared metrics.json and plots first)
        return names <= {"metrics.json", "horizon_error.png", "trajectories.png", "checkpoints"}
    if stage == "verify":
        return names <= {"report.json", "report.failed.json", "preview"}
    return False


def _marker_stage(path: Path) -> str | None:
    try:
        return json.loads((path / MARKER).read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def _describe(path: Path) -> str:
    names = _entries(path)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    stage = _marker_stage(path)
    owner = f"an output of `posttrain {stage}`" if stage else "not written by posttrain"
    return f"holds {shown} ({owner})"


def is_own_output(path: Path, stage: str) -> bool:
    """May `stage` replace the directory `path`? Missing, empty, its marker, or its old layout."""
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if not _entries(path) or _marker_stage(path) == stage or _legacy_layout(path, stage):
        return True
    # a part of an output (verify's preview/): the stage that owns the parent directory replaces it
    return stage == PART and (path.parent / MARKER).is_file()


def _related(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_output(final: str | os.PathLike, stage: str, inputs: Iterable = ()) -> Path:
    """Refuse an output path that would replace an input, the working directory, a file, or a
    directory this stage did not write. Returns it as an absolute path."""
    given = Path(final)
    final = Path(os.path.abspath(given))
    real = final.resolve()
    if final.parent == final:
        raise PosttrainError(f"--output {given}: cannot replace the root directory")
    cwd = Path.cwd().resolve()
    if _related(real, cwd) in ("is", "contains"):
        raise PosttrainError(
            f"--output {given}: {_related(real, cwd)} the current directory; give a new directory for the output"
        )
    for item in inputs:
        if item is None:
            continue
        relation = _related(real, Path(item).resolve())
        if relation:
            raise PosttrainError(f"--output {given} {relation} the input {item}; choose another output directory")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        kind = "a symbolic link" if final.is_symlink() else "a file"
        raise PosttrainError(
            f"--output {given}: {kind} is there, not a directory; remove it or choose another output directory"
        )
    if not is_own_output(final, stage):
        raise PosttrainError(
            f"--output {given}: the directory exists and {_describe(final)}; this stage only "
            "replaces its own outputs: remove it or choose another output directory"
        )
    return final


def claim_directory(final: str | os.PathLike, stage: str, inputs: Iterable = ()) -> Path:
    """For a stage that writes files into its output directory in place (verify): check it, create
    it and mark it as this stage's."""
    final = check_output(final, stage, inputs)
    final.mkdir(parents=True, exist_ok=True)
    if _marker_stage(final) != stage:
        write_json_atomic(final / MARKER, {"stage": stage})
    return final


@contextlib.contextmanager
def output_lock(final: Path):
    """An exclusive lock beside `final` for the whole write, so that two runs never write (and
    never clean up each other's temporary directories) at once. Removed on release."""
    lock = final.parent / f".{final.name}.lock"
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise PosttrainError(f"{final}: cannot write there ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PosttrainError(
                f"{final}: another run is writing this output (pid {holder}, lock {lock}); wait for it to finish"
            ) from None
        except OSError:  # a file system without locks (some network mounts): write unlocked
            break
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)


def recover(final: Path) -> None:
    """Finish what a killed run left beside `final`: restore an output moved aside by the
    two-rename fallback, remove temporary directories. Call with the output lock held."""
    for old in sorted(final.parent.glob(f".{final.name}.old-*")):
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, final)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike, stage: str = PART, inputs: Iterable = ()):
    """Yield a fresh temporary directory beside `final`; on success it replaces `final` whole.

    `final` must be missing, empty, or this stage's own earlier output (see `check_output`).
    On any exception the temporary directory is removed and `final` is left as it was, so a
    failed or killed run never leaves a partial output (a rerun starts from a clean slate).
    """
    final = check_output(final, stage, inputs)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PosttrainError(f"{final}: cannot write there ({err.strerror})") from None
    with output_lock(final):
        recover(final)
        check_output(final, stage, inputs)  # again: a recovered output is checked as well
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            write_json_atomic(tmp / MARKER, {"stage": stage})
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_directory(tmp, final)


RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # an old kernel, or a file system that cannot swap
    raise OSError(code, os.strerror(code), str(b))


def replace_directory(src: Path, final: Path) -> None:
    """Move `src` to `final`, replacing an existing `final` without a moment where it is missing.

    Linux swaps the two in one step, then deletes the old copy (now at `src`, a temporary name
    the next run removes if this one is killed). Elsewhere the old one is moved aside first;
    `recover` restores it if the run is killed between the two renames.
    """
    if not final.exists():
        os.replace(src, final)
    elif _exchange(src, final):
        shutil.rmtree(src, ignore_errors=True)
    else:
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
