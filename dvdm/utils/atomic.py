"""Atomic outputs: write to a temporary sibling, then rename, so a crash never leaves a half-written file.

`os.replace` is atomic on POSIX when source and target are on the same filesystem, which a sibling
temporary path guarantees.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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
