"""Atomic outputs: write to a temporary sibling, then rename, so a crash never leaves a half-written file.

`os.replace` is atomic on POSIX when source and target are on the same filesystem, which a sibling
temporary path guarantees.

A full disk or a permission problem while writing an output is the user's to fix, not a bug: the helpers raise
it as one `OutputWriteError` naming the output and the problem (the CLI prints it as one `error:` line, exit 2);
`output_write_error` does the same for such an error raised anywhere else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dvdm.errors import DvdmError

# the errors of writing an output that the user can fix: what each one means
OUTPUT_PROBLEMS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
}


class OutputWriteError(DvdmError):
    """An output could not be written: the disk is full, or the user may not write there."""


def output_write_error(exc: BaseException, target: str | os.PathLike[str] | None = None) -> OutputWriteError | None:
    """`exc` (or an error it was raised from or while handling) as an `OutputWriteError` naming the path (the
    output `target` when the error is about its temporary sibling or names no file, else the error's own file)
    and the problem when it is a disk-full or permission OSError; None for anything else."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        if isinstance(err, OutputWriteError):
            return err
        if isinstance(err, OSError) and err.errno in OUTPUT_PROBLEMS:
            problem = f"{OUTPUT_PROBLEMS[err.errno]} ({errno.errorcode[err.errno]})"
            name = os.fsdecode(err.filename) if err.filename is not None else None
            if target is not None and (name is None or _temporary_of(Path(name), Path(target))):
                return OutputWriteError(f"cannot write {os.fsdecode(target)}: {problem}")
            return OutputWriteError(f"{name}: {problem}" if name else problem)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _temporary_of(path: Path, target: Path) -> bool:
    """Is `path` the temporary sibling of `target` (or inside it)? Then the error is about `target`; a file
    elsewhere (an input that cannot be read, a parent folder) is named as it is."""
    try:
        first = path.absolute().relative_to(target.absolute().parent).parts[0]
    except (ValueError, IndexError):
        return False
    return first.startswith(f".{target.name}.")


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    """Raise a disk-full / permission error of writing `target` as one `OutputWriteError`."""
    try:
        yield
    except OSError as exc:
        converted = output_write_error(exc, target)
        if converted is None:
            raise
        raise converted from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs should get the usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success rename it onto `target`, on error delete it.

    `suffix` defaults to the target's own suffix, because some writers (PyAV, numpy) pick the format
    from the extension.
    """
    target = Path(target)
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix if suffix is None else suffix,
                                   dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        _normal_mode(tmp_path, directory=False)
        try:
            yield tmp_path
            os.replace(tmp_path, target)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success it replaces `target` as a whole.

    An existing `target` is moved aside first and removed only after the new one is in place, so readers
    never see a directory that mixes old and new files.
    """
    target = Path(target)
    with _writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        _normal_mode(tmp, directory=True)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if target.exists() or target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_json(target: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write `obj` as JSON, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)
