"""Import score_upstream modules from another checkout beside this one: the benchmarks' ``--baseline-src``.

Times an older commit against the working tree in one run, on the same inputs::

    git worktree add /tmp/base 70c7b3d
    python benchmarks/bench_qbe.py --baseline-src /tmp/base

The other checkout's package is imported under its own module objects (``sys.modules`` is swapped for the
import and restored after), so both versions, their compiled kernels included, live side by side. Its
modules must import what they use at load time; an import deferred into a function body would resolve
to this checkout's modules.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def _ours(name: str) -> bool:
    return name == "score_upstream" or name.startswith("score_upstream.")


def import_baseline(src: str | Path, *names: str) -> list[ModuleType]:
    """The modules ``names`` (e.g. ``"score_upstream.qbe.search"``) as the checkout at ``src`` holds them.

    Raises:
        SystemExit: ``src`` holds no ``score_upstream`` package (the message says how to make one).
    """
    src = Path(src).resolve()
    if not (src / "score_upstream" / "__init__.py").is_file():
        raise SystemExit(f"error: --baseline-src {src}: expected a checkout holding score_upstream/__init__.py; "
                         "make one with: git worktree add /tmp/base <commit>")
    saved = {k: sys.modules.pop(k) for k in [k for k in sys.modules if _ours(k)]}
    sys.path.insert(0, str(src))
    try:
        modules = [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(src))
        for k in [k for k in sys.modules if _ours(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
    for mod in modules:
        if not Path(mod.__file__).resolve().is_relative_to(src):
            raise SystemExit(f"error: --baseline-src {src}: {mod.__name__} came from {mod.__file__}, not from that checkout")
    return modules


def commit_of(src: str | Path) -> str:
    """Short commit of the checkout at ``src`` (``"?"`` when git cannot tell)."""
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
