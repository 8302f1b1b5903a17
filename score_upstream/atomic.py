"""Atomic, prunable checkpoint files.

Every file this project writes with ``torch.save`` goes through :func:`atomic_save`: the data is written
to a temporary file in the same directory, flushed to disk, then renamed over the target, so a process
killed at any moment leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

FORMAT_VERSION_KEY = "score_format_version"


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it (``durable``), give it the umask's mode, rename
    it over (then fsync the directory, ``durable``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    with _atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_save(obj: Any, path: str | os.PathLike, durable: bool = True) -> Path:
    """``torch.save(obj, path)`` that never leaves a partial file behind.

    ``durable=False`` skips the fsyncs: still never partial, but a crash of the machine (not of the
    process) may lose the file; for caches, whose entries can be recomputed.
    """
    import torch  # here, not at module level: the recipes' small helper processes write JSON without torch

    with _atomic_file(path, durable) as f:
        torch.save(obj, f)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune_checkpoints(directory: str | os.PathLike, pattern: str, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest files in ``directory`` whose names match ``pattern``.

    ``pattern`` is a regular expression with one group holding the step number, e.g.
    ``r"state-(\\d+)\\.pt"``; "newest" means the largest step. Returns the deleted paths.
    """
    if keep <= 0:
        return []
    rx = re.compile(pattern)
    found = []
    for p in Path(directory).iterdir():
        m = rx.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    found.sort()
    doomed = [p for _, p in found[:-keep]]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed
