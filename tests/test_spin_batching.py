"""SPIN's batching against a re-statement of its authors' code (vectominist/spin ``src/data/dataset.py``:
drop short utterances, sort longest first, random crop; ``src/data/sampler.py`` ``MaxLengthBatchSampler``:
greedy packing of cropped lengths, last batch dropped, batches shuffled per epoch), the recipes' settings,
and a tiny SPIN training whose updates are those packs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from score_upstream.training.config import ConfigError, load_config
from score_upstream.training.data import DataError, PairDataset, Utterance
from score_upstream.training.packing import PackedSampler, crop_samples, drawn_samples, make_sampler, pack_batches

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SR = 16000


def spin_reference(lengths, max_length, cropped_length, min_audio_len):
    """SPIN's training batches before shuffling, as manifest indices.

    AudioPretrainDataset keeps ``min_audio_len <= l`` (``max_audio_len`` 1,000,000 samples: none of ours are
    longer) and sorts by length, long to short (Python's stable sort, ``reverse=True``);
    MaxLengthBatchSampler walks that order adding ``min(l, cropped_length)`` to a running total: an item
    that keeps the total ``<= max_length`` joins the batch, else the batch is closed and the item opens the
    next one with the total reset to its own length; ``drop_last=True`` leaves the open batch out.
    """
    data = sorted([(i, n) for i, n in enumerate(lengths) if n >= min_audio_len], key=lambda x: x[1], reverse=True)
    lens = [n for _, n in data]
    batch_list, batch, cur = [], [], 0
    for j in range(len(lens)):
        new_batch = batch + [j]
        cur += min(lens[j], cropped_length)
        if cur <= max_length:
            batch = new_batch
        elif len(batch) == 0:
            raise ValueError("single length larger than max_length")
        else:
            batch_list.append(batch)
            batch = [j]
            cur = min(lens[j], cropped_length)
    return [[data[j][0] for j in b] for b in batch_list]


def random_lengths(seed, n=300, lo=0.5, hi=35.0):
    g = torch.Generator().manual_seed(seed)
    secs = lo + (hi - lo) * torch.rand(n, generator=g)
    lengths = (secs * SR).long().tolist()
    lengths[5] = lengths[6] = lengths[7]  # ties keep the manifest's order
    return lengths


@pytest.mark.parametrize("seed", range(4))
def test_packs_are_spins_batches(seed):
    lengths = random_lengths(seed)
    want = spin_reference(lengths, 4_096_000, 272_000, 40_000)
    assert pack_batches(lengths, 4_096_000, 272_000, 40_000) == want
    assert all(sum(min(lengths[i], 272_000) for i in b) <= 4_096_000 for b in want)
    # exactly 2.5 s is kept, a sample less is left out; the open batch at the end is dropped
    edge = [40_000] * 5 + [39_999] * 3 + [80_000]
    assert pack_batches(edge, 80_000, 272_000, 40_000) == spin_reference(edge, 80_000, 272_000, 40_000) == \
        [[8], [0, 1], [2, 3]]
    # smaller packs and no crop: still the reference's
    assert pack_batches(lengths, 900_000, None, 0) == spin_reference(lengths, 900_000, 10**9, 0)


def test_an_utterance_longer_than_a_pack_is_an_error():
    with pytest.raises(DataError, match="data.pack_seconds"):
        pack_batches([100, 5000, 200], 1000)
    with pytest.raises(ValueError):
        spin_reference([100, 5000, 200], 1000, 10**9, 0)


def test_updates_run_through_each_epochs_shuffled_packs():
    lengths = random_lengths(7)
    batches = pack_batches(lengths, 4_096_000, 272_000, 40_000)
    s = PackedSampler(lengths, 4_096_000, seed=3, crop_samples=272_000, min_samples=40_000)
    B = len(batches)
    assert s.updates_per_epoch() == B and s.epoch_of(B - 1) == 0 and s.epoch_of(B) == 1
    for epoch in (0, 1):
        groups = [s.group(u) for u in range(epoch * B, (epoch + 1) * B)]
        assert all(e == epoch for g in groups for _, e in g)
        assert sorted(sorted(i for i, _ in g) for g in groups) == sorted(sorted(b) for b in batches)
    assert [s.group(u) for u in range(B)] != [[(i, 1) for i, _ in s.group(u)] for u in range(B, 2 * B)] or B == 1
    # processes take their share of each update; a resumed position repeats the same updates
    two = [PackedSampler(lengths, 4_096_000, 3, r, 2, 272_000, 40_000) for r in (0, 1)]
    for smp in two:
        smp.set_position(4, 7)
    shares = [list(smp) for smp in two]
    assert len(shares[0]) == 3
    for k, u in enumerate(range(4, 7)):
        assert sorted(shares[0][k] + shares[1][k]) == sorted(s.group(u))
    assert drawn_samples(s, 0) == sum(min(lengths[i], 272_000) for i, _ in s.group(0))


def test_too_little_audio_for_one_pack_says_what_to_change():
    with pytest.raises(DataError, match="lower data.pack_seconds"):
        PackedSampler([30_000] * 10, 4_096_000, seed=0)


def test_crop_is_a_random_window_of_its_own_generator(tmp_path):
    import numpy as np
    import soundfile as sf

    long_path, short_path = tmp_path / "long.wav", tmp_path / "short.wav"
    wav = np.random.default_rng(0).uniform(-0.5, 0.5, 9000).astype(np.float32)
    sf.write(long_path, wav, SR, subtype="FLOAT")
    sf.write(short_path, wav[:3000], SR, subtype="FLOAT")
    utts = [Utterance(str(long_path), 9000), Utterance(str(short_path), 3000)]

    def perturb(w, g):
        return w * (1 + torch.rand((), generator=g))

    originals = PairDataset(utts, None, seed=1, crop_samples=4000)
    starts = set()
    for epoch in range(8):
        item = originals[(0, epoch)]
        assert item["original"].numel() == 4000 and item["seconds"] == 4000 / SR
        start = next(s for s in range(5000) if torch.equal(item["original"], torch.from_numpy(wav[s:s + 4000])))
        starts.add(start)
        assert originals[(1, epoch)]["original"].numel() == 3000  # shorter: whole
    assert len(starts) > 1
    # views come from the cropped audio; a whole utterance's views are those of a run without cropping
    cropped, whole = PairDataset(utts, perturb, seed=1, crop_samples=4000), PairDataset(utts, perturb, seed=1)
    for epoch in range(3):
        item = cropped[(0, epoch)]
        assert item["student"].numel() == item["target"].numel() == 4000
        a, b = cropped[(1, epoch)], whole[(1, epoch)]
        assert torch.equal(a["student"], b["student"]) and torch.equal(a["target"], b["target"])


def test_recipes_batching():
    base = load_config(RECIPES / "spin" / "hubert_base.yaml", ["model.init=x.pt"])
    d = base.data
    assert (d.pack_seconds, d.min_seconds, d.crop_seconds) == (256.0, 2.5, 17.0)
    assert crop_samples(d) == 272_000
    assert isinstance(make_sampler(d, [100_000] * 60, 0), PackedSampler)
    for name in ("small", "tiny"):  # the demo's SPIN model was made with whole utterances
        cfg = load_config(RECIPES / "spin" / f"{name}.yaml", ["model.init=x.pt"] if name == "small" else [])
        assert cfg.data.pack_seconds is None and crop_samples(cfg.data) is None
        assert not isinstance(make_sampler(cfg.data, [50_000] * 10, 0), PackedSampler)
    with pytest.raises(ConfigError, match="'data.pack_seconds'.*spin"):
        load_config(RECIPES / "score" / "tiny.yaml", ["data.pack_seconds=256"])
    with pytest.raises(ConfigError, match="data.crop_seconds"):
        load_config(RECIPES / "spin" / "tiny.yaml", ["data.pack_seconds=10", "data.crop_seconds=20"])
    with pytest.raises(ConfigError, match="data.min_seconds"):
        load_config(RECIPES / "spin" / "tiny.yaml", ["data.min_seconds=2.5"])


@pytest.mark.usefixtures("one_thread")
def test_tiny_spin_training_draws_the_packs(tiny_corpus, tmp_path):
    from score_upstream.training.train import Trainer

    cfg = load_config(RECIPES / "spin" / "tiny.yaml", ["data.pack_seconds=12", "data.min_seconds=2.5",
                                                       "data.crop_seconds=3", "optim.total_steps=2",
                                                       "optim.warmup_steps=1", "progress=false"])
    tr = Trainer(cfg, tiny_corpus, tmp_path)
    assert isinstance(tr.sampler, PackedSampler)
    lengths = [u.num_samples for u in tr.utts]
    assert tr.sampler.batches == spin_reference(lengths, 12 * SR, 3 * SR, int(2.5 * SR))
    want = [drawn_samples(tr.sampler, u) / SR for u in range(2)]
    result = tr.fit()
    assert result["step"] == 2
    assert [r["audio_seconds"] for r in result["history"]] == pytest.approx(want, abs=1e-6)
    assert all(w <= 12 for w in want)
