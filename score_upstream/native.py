"""Build a C++ source string into a cached shared library and load it through :mod:`ctypes`.

Used by the CPU kernels (:mod:`score_upstream.sdtw.cpu`, :mod:`score_upstream.qbe.cpu`)::

    lib = load_library("qbe_cpu", SOURCE, declare=_declare, no_build_env="SCORE_QBE_NO_BUILD")
    if lib is None:
        ...  # fall back to torch

The source is compiled on first use with the system C++ compiler (``$CXX``, else ``c++``/``g++``; no
torch headers, so a build takes about a second) into ``$SCORE_KERNEL_CACHE`` (default
``~/.cache/score_upstream/kernels``), named by a hash of the source, the flags, the compiler and the CPU
model, so an edit or another machine never loads a stale library. The build writes into a temporary
folder and renames the result into place, so concurrent builders never load a half-written file. Any
failure (no compiler, compile error, unloadable library) is logged once and gives ``None``.

:func:`resolve_backend` is the one chooser between such a kernel and its torch (or Triton) alternative,
shared by the soft-DTW loss and the QbE search.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

FLAGS = ("-O3", "-ffast-math", "-fopenmp", "-fPIC", "-shared", "-std=c++17")
_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def cpu_tag() -> str:
    """A short hash of this CPU's feature flags (the library is built with ``-march=native``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:12]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    """Folder of the built libraries: ``$SCORE_KERNEL_CACHE`` or ``~/.cache/score_upstream/kernels``."""
    return Path(os.environ.get("SCORE_KERNEL_CACHE", Path.home() / ".cache" / "score_upstream" / "kernels"))


def _compile(compiler: str, source: str, name: str, target: Path, flags: list[str]) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / f"{name}.cpp"
        src.write_text(source)
        out = Path(tmp) / target.name
        subprocess.run([compiler, *flags, str(src), "-o", str(out)], check=True, capture_output=True, text=True)
        os.replace(out, target)


def load_library(
    name: str,
    source: str,
    declare: Callable[[ctypes.CDLL], None] | None = None,
    no_build_env: str | None = None,
) -> ctypes.CDLL | None:
    """Build (once per source, cached on disk) and load ``source``; ``None`` when that is impossible.

    Args:
        name: library stem, e.g. ``"qbe_cpu"`` (the file is ``<name>_<hash>.so``); one load per process.
        source: C++ source with ``extern "C"`` entry points.
        declare: sets ``argtypes``/``restype`` of the entry points on the loaded library.
        no_build_env: environment variable that, set to ``1``, disables the library (``None`` returned).
    """
    with _lock:
        if name in _loaded:
            return _loaded[name]
        _loaded[name] = None
        if no_build_env and os.environ.get(no_build_env) == "1":
            return None
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if compiler is None:
            logger.warning("no C++ compiler found (set CXX); %s falls back to its slower torch path", name)
            return None
        flags = list(FLAGS)
        if platform.machine() in ("x86_64", "AMD64"):
            flags.append("-march=native")
        key = hashlib.sha256((source + " ".join(flags) + compiler + cpu_tag()).encode()).hexdigest()[:16]
        target = cache_dir() / f"{name}_{key}.so"
        try:
            if not target.exists():
                logger.info("building the %s kernel into %s", name, target)
                _compile(compiler, source, name, target, flags)
            lib = ctypes.CDLL(str(target))
            if declare is not None:
                declare(lib)
        except (OSError, AttributeError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", "") or str(e)
            logger.warning("%s kernel build failed (%s); using the torch path", name, detail.strip()[:500])
            return None
        _loaded[name] = lib
        return lib


def resolve_backend(
    requested: str,
    device,
    checks: dict[str, Callable[..., str | None]],
    env_var: str,
    what: str,
    error: type[Exception] = ValueError,
) -> str:
    """Pick the backend of a kernel family on ``device``: the one chooser of soft-DTW and QbE search.

    Args:
        requested: ``"auto"`` or one of ``checks``; ``"auto"`` first reads ``env_var`` (unset or empty =
            ``"auto"``), an explicit argument wins over the variable.
        device: a ``torch.device``.
        checks: backend name -> ``check(device, auto)``, returning ``None`` when that backend runs on
            ``device`` and otherwise why not (a phrase that follows the backend's name, e.g. ``"runs
            on the CPU only, got device cuda"``); ``auto`` is True when choosing automatically, so a
            check may refuse there what an explicit request allows. ``"auto"`` takes the first usable
            backend in the dict's order, so the last one should always be usable.
        env_var: environment variable that overrides ``"auto"``, e.g. ``SCORE_QBE_BACKEND``.
        what: the family's name in messages, e.g. ``"QbE"``.
        error: exception raised for an unknown or unusable request.
    """
    if requested == "auto":
        requested = os.environ.get(env_var, "auto") or "auto"
    choices = ("auto", *checks)
    if requested not in choices:
        raise error(f"{what} backend {requested!r} is unknown (argument or {env_var}); expected one of {choices}")
    if requested == "auto":
        for name, check in checks.items():
            if check(device, True) is None:
                return name
        raise error(f"no {what} backend runs on device {device}; expected one of {tuple(checks)} to be usable")
    why = checks[requested](device, False)
    if why is not None:
        raise error(f"{what} backend {requested!r} {why}; use 'auto'")
    return requested


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MALLOC_ENV = "SCORE_MALLOC"  # "default" leaves glibc's allocator as it is
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's allocator reuse freed memory instead of handing it back to the kernel.

    By default glibc serves an allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap``
    and unmaps it when freed, so a CPU training step whose activations exceed it (the first CNN layer's
    output of 8 x 3 s crops is 39 MB) pays a page fault per 4 KiB page of every such tensor, every step:
    ~440,000 faults a second and ~40 % of the pre-training's CPU time in the kernel on this project's
    machine. Raising the mmap and trim thresholds to 1 GB and keeping 256 MB of top padding makes the
    freed pages reusable (``benchmarks/bench_malloc.py``); the process keeps its peak heap instead.

    Called first by the training and evaluation entry points; a no-op without glibc, when
    ``$SCORE_MALLOC=default``, and after the first call. Returns whether the allocator is tuned.
    """
    global _malloc_tuned
    if _malloc_tuned is not None:
        return _malloc_tuned
    _malloc_tuned = False
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in
                 ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 256 << 20)))
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok
