"""Decoded audio kept in memory across epochs for s3prl's ``ctc`` downstream (SUPERB PR).

How to use (:func:`score_upstream.s3prl.compat.apply` does this)::

    from score_upstream.s3prl.superb.pr.audio_cache import install
    install()       # s3prl's ctc batches now decode each file once per process

s3prl's ``ctc/data.py`` (``collect_audio_batch``) decodes every file of every training batch again in
every epoch, and the first file of a batch twice. With the upstream's features cached
(``$SCORE_UPSTREAM_CACHE_MB``), that decoding was the largest cost of a PR update on the CPU after the
downstream's own forward and backward (the demo's 160-utterance training set: ~8 ms of ~45 ms per update).
:func:`install` gives ``ctc/data.py`` a ``torchaudio`` whose ``load`` keeps what it decoded in a
least-recently-used map bounded in bytes, and returns a copy of the same tensor: the batches, and so the
results, are bit for bit those of the uncached reader (a copy, because s3prl's runner wraps the batch's
arrays in tensors without copying them). An entry is keyed on the file's device, inode, size and
modification time (nanoseconds): the file, whatever path names it, and a rewritten file is decoded again.

The budget is ``$SCORE_UPSTREAM_CACHE_MB`` (the same size as the feature cache, counted separately):
audio is worth keeping exactly when the features computed from it are. Unset or 0: nothing is kept.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections import OrderedDict
from typing import Callable

import torch

logger = logging.getLogger(__name__)

Key = tuple[int, int, int, int]


class WaveformCache:
    """Least-recently-used map from an audio file to what ``load`` returned for it, bounded in bytes.

    Args:
        load: the reader, ``load(path) -> (Tensor[C, T], sample_rate)`` (``torchaudio.load``'s contract).
        max_bytes: total size of the stored tensors; a file larger than this is never stored.
    """

    def __init__(self, load: Callable, max_bytes: int):
        self.read = load
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = 0
        self._entries: OrderedDict[Key, tuple[torch.Tensor, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, filepath, *args, **kwargs) -> tuple[torch.Tensor, int]:
        """``load(filepath)`` from memory when this file, unchanged, was read before; a copy each time.

        Calls with more arguments than the path (offsets, formats) and file-like objects go to the reader.
        """
        if args or kwargs or self.max_bytes <= 0 or not isinstance(filepath, (str, os.PathLike)):
            return self.read(filepath, *args, **kwargs)
        try:
            st = os.stat(filepath)
        except OSError:
            return self.read(filepath)  # the reader says what is wrong with the path
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        entry = self._entries.get(key)
        if entry is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[0].clone(), entry[1]
        self.misses += 1
        wav, sr = self.read(filepath)
        size = wav.numel() * wav.element_size()
        if size <= self.max_bytes:
            while self.bytes + size > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
            self._entries[key] = (wav.clone(), sr)
            self.bytes += size
        return wav, sr


class _TorchaudioProxy(types.ModuleType):
    """``torchaudio`` as one module sees it: ``load`` through a :class:`WaveformCache`, the rest unchanged."""

    def __init__(self, real: types.ModuleType, cache: WaveformCache):
        super().__init__(real.__name__, "torchaudio with a cached load (score_upstream.s3prl.superb.pr.audio_cache)")
        self._score_real, self._score_cache = real, cache
        self.load = cache.load

    def __getattr__(self, name: str):
        return getattr(self._score_real, name)


def budget_bytes() -> int:
    """``$SCORE_UPSTREAM_CACHE_MB`` in bytes (0 when unset, empty or 0; a bad value is the feature cache's error)."""
    from score_upstream.s3prl.upstream.cache import cache_megabytes_from_env

    return int(cache_megabytes_from_env() * 2**20)


def install(max_bytes: int | None = None) -> WaveformCache | None:
    """Give s3prl's ``ctc/data.py`` a ``torchaudio`` whose ``load`` keeps decoded files in memory.

    Call after the torchaudio I/O shims (the cache wraps whatever ``torchaudio.load`` is then).

    Args:
        max_bytes: budget; None = :func:`budget_bytes`.

    Returns:
        The cache, or None when the budget is 0 or the module already has one (it is kept).
    """
    import s3prl.downstream.ctc.data as ctc_data

    if isinstance(ctc_data.torchaudio, _TorchaudioProxy):
        return None
    try:
        max_bytes = budget_bytes() if max_bytes is None else int(max_bytes)
    except ValueError:  # a bad $SCORE_UPSTREAM_CACHE_MB: the upstream expert reports it when it is built
        return None
    if max_bytes <= 0:
        return None
    cache = WaveformCache(ctc_data.torchaudio.load, max_bytes)
    ctc_data.torchaudio = _TorchaudioProxy(sys.modules.get("torchaudio", ctc_data.torchaudio), cache)
    logger.debug("s3prl ctc: decoded audio kept in memory, up to %.0f MB", max_bytes / 2**20)
    return cache


def installed() -> WaveformCache | None:
    """The cache :func:`install` gave ``ctc/data.py``, or None."""
    import s3prl.downstream.ctc.data as ctc_data

    proxy = ctc_data.torchaudio
    return proxy._score_cache if isinstance(proxy, _TorchaudioProxy) else None
