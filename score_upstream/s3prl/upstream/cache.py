"""Frozen-feature caches of the upstream expert, and the fingerprint of the weights they are keyed on.

How to use (what :class:`~score_upstream.s3prl.upstream.expert.UpstreamExpert` does)::

    weights = WeightsFingerprint(model, context=["hubert", "normalize=False", ...], files=[...])
    memory = FeatureCache(512 * 2**20)
    disk = DiskFeatureCache(Path(cache_dir) / weights.current())
    key = batch_key(wavs, context=weights.current())   # current(): the weights as they are now
    hidden = memory.get(key, check) or disk.get_or_compute(key, compute, check)

An entry is only ever looked up under the fingerprint of the weights in use at that moment: a cache can
return features of other weights only if two different sets of weights had the same 128-bit hash.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Callable, ClassVar, Iterable

import torch

logger = logging.getLogger(__name__)

CACHE_ENV = "SCORE_UPSTREAM_CACHE_MB"
CACHE_DIR_ENV = "SCORE_UPSTREAM_CACHE_DIR"
ENTRY_FORMAT = 1
# atomic_save writes ``.<name>.<random>.tmp`` beside ``<name>`` (tempfile.mkstemp in score_upstream.atomic).
_TMP_NAME = re.compile(r"\.([0-9a-f]+)\.pt\..+\.tmp")

Check = Callable[[list], "str | None"]  # what is wrong with an entry, or None


def cache_megabytes_from_env() -> float:
    """``$SCORE_UPSTREAM_CACHE_MB`` as a number of MB; unset, empty or 0 = cache off."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    try:
        mb = float(raw) if raw else 0.0
    except ValueError:
        mb = -1.0
    if not mb >= 0 or mb == float("inf"):
        raise ValueError(f"{CACHE_ENV}={raw!r}: expected a size in MB >= 0 (e.g. 512; 0 or unset = no cache)")
    return mb


def batch_key(wavs: list[torch.Tensor], context: str = "") -> bytes:
    """Digest of ``context`` (the weights' fingerprint...) and a batch: each waveform's dtype, device, length and
    exact bytes, in order (20 bytes of a SHA-256: it runs on every cached batch, and on CPUs with SHA
    instructions it hashes audio about twice as fast as BLAKE2b; the bytes are hashed in place, not copied)."""
    h = hashlib.sha256()
    h.update(f"{context};".encode())
    for w in wavs:
        w = w.detach()
        h.update(f"{w.dtype}|{w.device}|{tuple(w.shape)};".encode())
        h.update(w.contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return h.digest()[:20]


def model_fingerprint(model: torch.nn.Module, *context: str) -> str:
    """Hex digest of every parameter and buffer of ``model`` (names, dtypes, shapes, bytes) and ``context``."""
    h = hashlib.blake2b(digest_size=16)
    for part in context:
        h.update(f"{part};".encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _file_digest(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def source_digest(files: Iterable[str | os.PathLike]) -> str:
    """Digest of the bytes of ``files`` (each read once per process), in sorted order."""
    h = hashlib.blake2b(digest_size=16)
    for path in sorted({os.path.realpath(f) for f in files}):
        h.update(f"{os.path.basename(path)}:{_file_digest(path)};".encode())
    return h.hexdigest()


def module_files(model: torch.nn.Module) -> set[str]:
    """Source files of the classes of ``model``'s modules, torch's own left out (its version stands for them)."""
    files = set()
    for module in model.modules():
        name = type(module).__module__
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and not name.startswith("torch.") and path.endswith(".py"):
            files.add(path)
    return files


class WeightsFingerprint:
    """The fingerprint of a network's weights as they are now, hashed again only when they may have changed.

    Hashing every weight takes about a second for HuBERT Base on a CPU, too long for every batch, so
    :meth:`current` first compares cheap evidence with what it saw at the last hash, and hashes again if

    - a parameter or buffer is another tensor, storage, dtype, device or shape (``load_state_dict(assign=True)``,
      ``.to()``, ``p.data = ...``), or its autograd version counter moved: every in-place update through the
      tensor itself counts (torch optimizers' steps, ``load_state_dict``'s ``copy_``);
    - the float32 norm of a floating parameter or buffer changed (milliseconds): updates through ``.data``
      (s3prl's AdamW: ``p.data.addcdiv_``) leave the version counter alone;
    - the network trained since (:meth:`mark_training`: a forward in train mode or with grad) or a parameter
      holds a gradient: a small step through ``.data`` may not move a float32 norm, so while the weights may
      be stepped the fingerprint is taken again at every call, until no gradient is pending.

    Args:
        model: the network.
        context: strings hashed with the weights (family, config, versions...).
        files: source files hashed with the weights (the code that turns weights into features).
        name: how log lines name the network.
    """

    def __init__(self, model: torch.nn.Module, context: Iterable[str] = (), files: Iterable[str] = (), name: str = ""):
        self.model = model
        self.context = [*context, f"source {source_digest(files)}"]
        self.name = name
        self.hashes = 0  # full hashes taken
        self._trained = False
        self._told_grads = False
        self._fingerprint = self._evidence = None
        self.current()

    def mark_training(self) -> None:
        """The network ran in train mode or with grad: its weights may be stepped before the next frozen forward."""
        self._trained = True

    def current(self) -> str:
        """Hex fingerprint of the weights as they are now (and of the context)."""
        tensors, pending = _tensors(self.model)
        evidence = [(id(t), t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors]
        norms = _norms(tensors)
        if self._fingerprint is None or self._trained or pending or (evidence, norms) != self._evidence:
            before = self._fingerprint
            self._fingerprint = model_fingerprint(self.model, *self.context)
            self._evidence, self._trained = (evidence, norms), pending
            self.hashes += 1
            if before is not None and before != self._fingerprint:
                logger.info("%s: weights changed; features now cached under %s", self.name, self._fingerprint)
            if pending and not self._told_grads:
                self._told_grads = True
                logger.info("%s: parameters hold gradients, so the weights are hashed again for every cached "
                            "batch; set them to None (optimizer.zero_grad()) when training pauses", self.name)
        return self._fingerprint


def _tensors(model: torch.nn.Module) -> tuple[list[torch.Tensor], bool]:
    """Every parameter then every buffer of ``model`` (each once), and whether a parameter holds a gradient.

    One walk over the modules instead of ``parameters()``, ``buffers()`` and ``parameters()`` again (it runs
    before every cached batch: ~0.2 ms saved of ~1.1 ms on the demo's HuBERT, where the norms take the rest).
    """
    params, buffers, seen, pending = [], [], set(), False
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
                pending = pending or p.grad is not None
        for b in module._buffers.values():
            if b is not None and id(b) not in seen:
                seen.add(id(b))
                buffers.append(b)
    return params + buffers, pending


def _norms(tensors: list[torch.Tensor]) -> tuple[float, ...]:
    """Float32 norm of each floating tensor (NaN as a string, so that equal NaNs compare equal)."""
    floats = [t.detach() for t in tensors if t.is_floating_point()]
    if not floats:
        return ()
    norms = [n.float() for n in torch._foreach_norm(floats)]
    try:
        values = torch.stack(norms).cpu().tolist()
    except RuntimeError:  # tensors on several devices
        values = [n.item() for n in norms]
    return tuple("nan" if v != v else v for v in values)


def _complain(where: str, key: bytes, problem: str) -> None:
    logger.warning("%s: cached features of batch %s are unusable (%s); computing them again",
                   where, key.hex()[:12], problem)


class FeatureCache:
    """Least-recently-used map from :func:`batch_key` to the hidden states of that batch, bounded in bytes.

    Args:
        max_bytes: total size of the stored tensors; an entry larger than this is never stored.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = self.evictions = self.rejected = 0
        self._entries: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, check: Check | None = None) -> list[torch.Tensor] | None:
        """Copies of the stored tensors (callers may modify them), or None; an entry ``check`` finds wrong is
        dropped (one warning)."""
        hidden = self._entries.get(key)
        problem = check(hidden) if hidden is not None and check is not None else None
        if problem is not None:
            _complain("memory", key, problem)
            self._drop(key)
            self.rejected += 1
            hidden = None
        if hidden is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return [h.clone() for h in hidden]

    def put(self, key: bytes, hidden: list[torch.Tensor]) -> None:
        """Store copies of ``hidden``, evicting the least recently used entries to stay within budget."""
        size = _size(hidden)
        if size > self.max_bytes or key in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
            if self.evictions == 1:
                logger.info("upstream feature cache full (%.0f MB): evicting least recently used batches; "
                            "raise %s to keep every batch", self.max_bytes / 2**20, CACHE_ENV)
        self._entries[key] = [h.detach().clone() for h in hidden]
        self.bytes += size

    def _drop(self, key: bytes) -> None:
        self.bytes -= _size(self._entries.pop(key))


def _size(hidden: list[torch.Tensor]) -> int:
    return sum(h.numel() * h.element_size() for h in hidden)


class DiskFeatureCache:
    """Hidden states of batches as files ``ROOT/<key>.pt``, computed once by whichever process asks first.

    A process that misses takes the entry's lock (``<key>.lock``), so two processes never compute the same
    batch at once, and writes the entry atomically. Opening the cache, and writing an entry, removes the
    temporary files of writers that died (a ``.tmp`` whose entry's lock nobody holds). An entry that does not
    load, belongs to another key or fails ``check`` is computed again and replaced (one warning each).
    The first write that fails (disk full, quota, read-only folder: the OS's error, or torch.save's) logs
    one warning and ends writing for the rest of the process, in every folder; reading goes on.

    Args:
        root: folder of one model's entries (created).
    """

    write_error: ClassVar[BaseException | None] = None  # the failed write that ended writing in this process

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.hits = self.misses = self.rejected = self.removed_tmp = 0
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._write_failed(e)
        else:
            self._remove_stale_tmp()

    def get_or_compute(self, key: bytes, compute: Callable[[], list[torch.Tensor]],
                       check: Check | None = None) -> list[torch.Tensor]:
        """The stored tensors of ``key`` (on the CPU), or ``compute()``'s, stored first (under a lock)."""
        path = self.root / f"{key.hex()}.pt"
        hidden, complained = self._load(path, key, check, complain=True)
        if hidden is None and DiskFeatureCache.write_error is None:
            try:
                lock = open(path.with_suffix(".lock"), "a")
            except OSError as e:
                self._write_failed(e)
            else:
                with lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
                    hidden, _ = self._load(path, key, check, complain=not complained)  # another process's?
                    if hidden is None:
                        self._remove_stale_tmp(key)  # this process holds the lock: any .tmp is a dead writer's
                        hidden = compute()
                        self.misses += 1
                        self._write(path, key, hidden)
                        return hidden
        if hidden is None:
            self.misses += 1
            return compute()
        self.hits += 1
        return hidden

    def _load(self, path: Path, key: bytes, check: Check | None, complain: bool) -> tuple[list | None, bool]:
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None, False
        except Exception as e:  # truncated, not a torch file, unreadable
            problem = f"{type(e).__name__}: {e}"
        else:
            problem = _entry_problem(entry, key)
            if problem is None and check is not None:
                problem = check(entry["hidden_states"])
            if problem is None:
                return entry["hidden_states"], False
        if complain:
            self.rejected += 1
            _complain(str(path), key, problem)
        return None, True

    def _write(self, path: Path, key: bytes, hidden: list[torch.Tensor]) -> None:
        from score_upstream.atomic import atomic_save

        entry = {"format": ENTRY_FORMAT, "key": key.hex(), "hidden_states": [h.detach().cpu() for h in hidden]}
        try:
            # no fsync: an entry lost to a crash is recomputed, so durability would only cost time
            atomic_save(entry, path, durable=False)
        except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
            self._write_failed(e)

    def _write_failed(self, error: BaseException) -> None:
        if DiskFeatureCache.write_error is not None:
            return
        DiskFeatureCache.write_error = error
        logger.warning("%s: cannot write cached features (%s: %s); this process writes no more of them and "
                       "computes what is not there yet; free space or point %s to a writable folder",
                       self.root, type(error).__name__, error, CACHE_DIR_ENV)

    def _remove_stale_tmp(self, key: bytes | None = None) -> None:
        prefix = f".{key.hex()}.pt." if key is not None else "."
        try:
            names = [e.name for e in os.scandir(self.root) if e.name.startswith(prefix) and e.name.endswith(".tmp")]
        except OSError:
            return
        for name in names:
            match = _TMP_NAME.fullmatch(name)
            if match is None or (key is None and not self._lock_free(match.group(1))):
                continue
            with contextlib.suppress(OSError):
                (self.root / name).unlink()
                self.removed_tmp += 1

    def _lock_free(self, key_hex: str) -> bool:
        try:
            with open(self.root / f"{key_hex}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live writer of this entry holds it
                return True
        except OSError:
            return False


def _entry_problem(entry, key: bytes) -> str | None:
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        return f"not a format-{ENTRY_FORMAT} entry"
    if entry.get("key") != key.hex():
        return f"it holds batch {str(entry.get('key'))[:12]}"
    hidden = entry.get("hidden_states")
    if not isinstance(hidden, list) or not all(isinstance(h, torch.Tensor) for h in hidden):
        return "no list of tensors"
    return None
