"""Decoded audio kept in memory for s3prl's ctc downstream: the same batches as decoding every time.

Marked ``compat_env``: it patches s3prl's ``ctc/data.py`` at run time.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

pytestmark = pytest.mark.compat_env


def _write(path, seed, seconds=0.5):
    wav = np.random.default_rng(seed).uniform(-0.5, 0.5, int(16000 * seconds)).astype(np.float32)
    sf.write(path, wav, 16000, subtype="PCM_16")
    return path


def test_cached_load_returns_the_readers_bytes_and_a_copy_each_time(tmp_path):
    import score_upstream.s3prl.compat as compat
    from score_upstream.s3prl.superb.pr.audio_cache import WaveformCache

    path = str(_write(tmp_path / "a.flac", 0))
    cache = WaveformCache(compat.load, 2**20)
    first, sr = cache.load(path)
    again, sr2 = cache.load(path)
    expected, _ = compat.load(path)
    assert sr == sr2 == 16000 and torch.equal(first, expected) and torch.equal(again, expected)
    assert (cache.hits, cache.misses) == (1, 1)
    again.zero_()  # a caller writing into what it got changes nothing stored
    assert torch.equal(cache.load(path)[0], expected)


def test_a_rewritten_file_is_decoded_again_and_the_budget_holds(tmp_path):
    import score_upstream.s3prl.compat as compat
    from score_upstream.s3prl.superb.pr.audio_cache import WaveformCache

    a, b = str(_write(tmp_path / "a.flac", 0)), str(_write(tmp_path / "b.flac", 1))
    one_file = 8000 * 4
    cache = WaveformCache(compat.load, one_file)  # room for one file
    cache.load(a)
    _write(a, 2)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # a new modification time, whatever the clock's grain
    assert torch.equal(cache.load(a)[0], compat.load(a)[0]) and cache.misses == 2
    cache.load(b)
    assert len(cache) == 1 and cache.bytes == one_file
    assert cache.load(b, frame_offset=10)[0].shape[-1] == 8000 - 10  # other arguments go to the reader


def test_ctc_batches_are_the_same_with_the_cache(tiny_corpus, monkeypatch):
    import score_upstream.s3prl.compat as compat

    compat.apply()
    import s3prl.downstream.ctc.data as ctc_data

    from score_upstream.s3prl.superb.pr import audio_cache

    files = sorted(str(p) for p in (tiny_corpus / "LibriSpeech" / "train-clean-100").rglob("*.flac"))[:4]
    batch = [[(f, [i + 4, 5]) for i, f in enumerate(files)]]
    monkeypatch.setattr(ctc_data, "torchaudio", sys.modules["torchaudio"])  # no cache; undone after the test
    plain = ctc_data.collect_audio_batch(batch, "train")
    cache = audio_cache.install(64 * 2**20)
    assert cache is not None and audio_cache.installed() is cache
    cached = [ctc_data.collect_audio_batch(batch, "train") for _ in range(2)]
    assert cache.hits >= len(files)
    for wavs, texts, names in cached:
        assert names == plain[2] and all(np.array_equal(x, y) for x, y in zip(texts, plain[1]))
        assert all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(wavs, plain[0]))
    assert audio_cache.install(64 * 2**20) is None  # installed once


def test_audio_frames_read_once_per_file_version(tmp_path):
    from score_upstream.s3prl.superb.pr.libriphone import audio_frames

    path = _write(tmp_path / "a.flac", 0, seconds=0.5)
    assert audio_frames(path) == audio_frames(str(path)) == 8000
    _write(path, 1, seconds=0.25)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert audio_frames(path) == 4000
