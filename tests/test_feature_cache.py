"""The upstream's frozen-feature caches serve only features of the weights in use, and never stop an evaluation.

Every check compares the cached forward with an uncached expert holding the same weights, bit for bit.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

import pytest
import torch

from score_upstream.s3prl.upstream.cache import DiskFeatureCache, FeatureCache, WeightsFingerprint, source_digest
from score_upstream.s3prl.upstream.expert import UpstreamExpert

pytestmark = pytest.mark.compat_env  # torch internals: version counters, _foreach_norm, autocast queries

LENGTHS = (16000, 11200, 7437)
CACHE_LOGGER = "score_upstream.s3prl.upstream.cache"


@pytest.fixture(scope="module")
def wavs():
    gen = torch.Generator().manual_seed(3)
    return [0.1 * torch.randn(n, generator=gen) for n in LENGTHS]


@pytest.fixture(scope="module")
def plain(tiny_hubert_ckpt):
    """The reference: an expert without cache; weights are loaded into it before each use."""
    return UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=0, cache_dir="").eval()


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg

    path = save_s3prl(new_hubert(tiny_model_cfg(), seed=1), tmp_path_factory.mktemp("other") / "other.pt")
    return UpstreamExpert(str(path), cache_mb=0, cache_dir="").state_dict()


@pytest.fixture(autouse=True)
def _writes_allowed(monkeypatch):
    """Each test starts as a fresh process would: no failed write yet."""
    monkeypatch.setattr(DiskFeatureCache, "write_error", None)


def features(up, wavs):
    with torch.no_grad():
        return up(wavs)["hidden_states"]


def reference(up, plain, wavs):
    plain.load_state_dict(up.state_dict())
    return features(plain, wavs)


def same(a, b) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def expert(ckpt, caches: str, tmp_path) -> UpstreamExpert:
    mb = 64 if "memory" in caches else 0
    return UpstreamExpert(str(ckpt), cache_mb=mb, cache_dir=tmp_path / "feats" if "disk" in caches else "").eval()


# ------------------------------------------------------------------ the weights in use, and nothing else


def step_in_place(up, other_weights):
    """What torch optimizers do: in-place updates of the parameters (their version counters move)."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in up.model.encoder.layers[-1].parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen))


def step_through_data(up, other_weights):
    """What s3prl's AdamW does (``p.data.addcdiv_``): the version counters stay where they were."""
    gen = torch.Generator().manual_seed(6)
    for p in up.model.encoder.layers[-1].parameters():
        p.data.add_(0.01 * torch.randn(p.shape, generator=gen))


def finetune_step(up, other_weights):
    """s3prl's ``-f``: a training step (train mode, backward, s3prl's AdamW, zero_grad), then dev in eval mode.
    The learning rate is tiny so that the step may leave float32 norms where they were."""
    from s3prl.optimizers import AdamW

    before = {k: v.clone() for k, v in up.state_dict().items()}
    optimizer = AdamW([p for p in up.parameters() if p.requires_grad], lr=1e-7)
    up.train()
    gen = torch.Generator().manual_seed(8)
    loss = up([0.1 * torch.randn(9000, generator=gen)])["last_hidden_state"].pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    up.eval()
    assert any(not torch.equal(v, before[k]) for k, v in up.state_dict().items())


def load_other(up, other_weights):
    """s3prl's ``-e``: the runner loads the checkpoint's upstream weights into the expert after building it."""
    up.load_state_dict(other_weights)


@pytest.mark.parametrize("caches", ["memory", "disk"])
@pytest.mark.parametrize("change", [step_in_place, step_through_data, finetune_step, load_other])
def test_cache_never_returns_features_of_earlier_weights(tiny_hubert_ckpt, wavs, plain, other_weights, tmp_path,
                                                         caches, change):
    up = expert(tiny_hubert_ckpt, caches, tmp_path)
    first = features(up, wavs)
    assert same(first, reference(up, plain, wavs))
    folder = up.disk_cache.root if up.disk_cache is not None else None
    change(up, other_weights)
    after = features(up, wavs)
    assert same(after, reference(up, plain, wavs)) and not same(after, first)
    assert same(features(up, wavs), after)  # and the new weights' features are cached in turn
    if caches == "disk":
        assert up.disk_cache.root != folder and len(list(up.disk_cache.root.glob("*.pt"))) == 1
        assert (up.disk_cache.misses, up.disk_cache.hits) == (1, 1)
    else:
        assert (up.cache.hits, up.cache.misses) == (1, 2)


@pytest.mark.parametrize("caches", ["memory", "disk"])
def test_weights_loaded_back_find_their_entries(tiny_hubert_ckpt, wavs, plain, other_weights, tmp_path, caches):
    up = expert(tiny_hubert_ckpt, caches, tmp_path)
    original = {k: v.clone() for k, v in up.state_dict().items()}
    first = features(up, wavs)
    up.load_state_dict(other_weights)
    assert not same(features(up, wavs), first)
    up.load_state_dict(original)
    assert same(features(up, wavs), first)
    stats = up.disk_cache if caches == "disk" else up.cache
    assert (stats.hits, stats.misses) == (1, 0 if caches == "disk" else 2)  # the disk cache is per weights


def test_unchanged_weights_hit_without_hashing_again(tiny_hubert_ckpt, wavs, plain, tmp_path):
    """Mode switches and a forward with grad (no step) change nothing: hits, the same single folder and file."""
    up = expert(tiny_hubert_ckpt, "memory+disk", tmp_path)
    ref = reference(up, plain, wavs)
    for _ in range(3):
        assert same(features(up, wavs), ref)
    up.train()
    up.eval()
    assert same(features(up, wavs), ref)
    assert (up.cache.hits, up.cache.misses, up.weights.hashes) == (3, 1, 1)
    up(wavs)  # with grad: the upstream may be training, so the next frozen forward hashes again
    assert same(features(up, wavs), ref)
    assert (up.cache.hits, up.weights.hashes) == (4, 2)
    second = expert(tiny_hubert_ckpt, "disk", tmp_path)
    assert same(features(second, wavs), ref)
    assert second.disk_cache.root == up.disk_cache.root
    assert (second.disk_cache.hits, second.disk_cache.misses) == (1, 0)
    assert [p.name for p in (tmp_path / "feats").iterdir()] == [up.disk_cache.root.name]
    assert len(list(up.disk_cache.root.glob("*.pt"))) == 1


def test_fingerprint_covers_source_and_config(tmp_path, tiny_hubert_ckpt):
    for name, text in (("a", "x = 1\n"), ("b", "x = 2\n"), ("c", "x = 1\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text(text)
    a, b, c = (source_digest([tmp_path / n / "model.py"]) for n in "abc")
    assert a != b and a == c
    model = torch.nn.Linear(3, 2)
    prints = {WeightsFingerprint(model, ctx, [tmp_path / n / "model.py"]).current()
              for ctx, n in ((["cfg1"], "a"), (["cfg1"], "b"), (["cfg2"], "a"))}
    assert len(prints) == 3
    up = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=1)
    from score_upstream.s3prl.upstream.cache import module_files

    assert any(f.endswith("hubert_model.py") for f in module_files(up.model))
    assert any('"encoder_layers": 12' in part for part in up.weights.context)


# ------------------------------------------------------------------ failures never stop an evaluation


def test_disk_full_warns_once_and_evaluation_goes_on(tiny_hubert_ckpt, wavs, plain, tmp_path, monkeypatch, caplog):
    """The rename of every finished entry fails with ENOSPC (the OS call, patched): one warning, right
    features for every batch, no entry and no temporary file left, no further write tried."""
    up = expert(tiny_hubert_ckpt, "disk", tmp_path)
    batches = [wavs, wavs[:2], wavs[1:], wavs]
    refs = [reference(up, plain, b) for b in batches]
    replaced = []

    def full(src, dst):
        replaced.append(dst)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(os, "replace", full)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        outs = [features(up, b) for b in batches]
    assert all(same(o, r) for o, r in zip(outs, refs))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "No space left on device" in warnings[0].getMessage()
    assert str(up.disk_cache.root) in warnings[0].getMessage()
    assert len(replaced) == 1  # later batches do not try to write
    assert list(up.disk_cache.root.glob("*.pt")) == [] and list(up.disk_cache.root.glob(".*.tmp")) == []


def test_write_failing_inside_torch_save_is_survived(tiny_hubert_ckpt, wavs, plain, tmp_path, caplog):
    """A real short write, nothing patched: with a 16 kB file-size limit on this process, torch.save fails
    (with a RuntimeError, not an OSError); both batches still get the right features, with one warning."""
    import resource
    import signal

    up = expert(tiny_hubert_ckpt, "disk", tmp_path)
    batches = [wavs, wavs[:2]]
    refs = [reference(up, plain, b) for b in batches]
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16384, limits[1]))
        with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
            outs = [features(up, b) for b in batches]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert all(same(o, r) for o, r in zip(outs, refs))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot write" in warnings[0], warnings
    assert isinstance(DiskFeatureCache.write_error, (RuntimeError, OSError))
    assert list(up.disk_cache.root.glob("*.pt")) == [] and list(up.disk_cache.root.glob(".*.tmp")) == []


def test_stale_temporary_files_are_removed(tmp_path):
    """A .tmp whose entry's lock nobody holds is a dead writer's: removed on opening and before writing that
    entry; one whose lock is held (a writer at work) stays."""
    root = tmp_path / "c"
    root.mkdir()
    dead, alive, later = b"\x01" * 20, b"\x02" * 20, b"\x03" * 20
    for key in (dead, alive):
        (root / f".{key.hex()}.pt.k2j4h5.tmp").write_bytes(b"partial")
    with open(root / f"{alive.hex()}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another open file: conflicts like another process would
        cache = DiskFeatureCache(root)
        assert sorted(p.name for p in root.glob(".*.tmp")) == [f".{alive.hex()}.pt.k2j4h5.tmp"]
        assert cache.removed_tmp == 1
    (root / f".{later.hex()}.pt.x8d0q1.tmp").write_bytes(b"partial")  # dies after the cache opened
    assert torch.equal(cache.get_or_compute(later, lambda: [torch.ones(3)])[0], torch.ones(3))
    assert not (root / f".{later.hex()}.pt.x8d0q1.tmp").exists() and (root / f"{later.hex()}.pt").exists()


def _garbage(entry_path, key):
    entry_path.write_bytes(b"PK\x03\x04 cut short")


def _fewer_frames(entry_path, key):
    entry = torch.load(entry_path, weights_only=True)
    entry["hidden_states"][4] = entry["hidden_states"][4][:, :-1]
    torch.save(entry, entry_path)


def _fewer_layers(entry_path, key):
    entry = torch.load(entry_path, weights_only=True)
    entry["hidden_states"].pop()
    torch.save(entry, entry_path)


def _half_precision(entry_path, key):
    entry = torch.load(entry_path, weights_only=True)
    entry["hidden_states"] = [h.half() for h in entry["hidden_states"]]
    torch.save(entry, entry_path)


def _other_batch(entry_path, key):
    entry = torch.load(entry_path, weights_only=True)
    entry["key"] = "00" * 20
    torch.save(entry, entry_path)


@pytest.mark.parametrize("damage, says", [(_garbage, "Error"), (_fewer_frames, "shape"), (_fewer_layers, "12 hidden"),
                                          (_half_precision, "dtype"), (_other_batch, "holds batch")])
def test_bad_disk_entry_is_recomputed_and_replaced(tiny_hubert_ckpt, wavs, plain, tmp_path, caplog, damage, says):
    up = expert(tiny_hubert_ckpt, "disk", tmp_path)
    ref = reference(up, plain, wavs)
    features(up, wavs)
    (entry_path,) = up.disk_cache.root.glob("*.pt")
    damage(entry_path, bytes.fromhex(entry_path.stem))
    again = expert(tiny_hubert_ckpt, "disk", tmp_path)
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        assert same(features(again, wavs), ref)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and says in warnings[0] and "computing them again" in warnings[0], warnings
    assert (again.disk_cache.rejected, again.disk_cache.misses) == (1, 1)
    third = expert(tiny_hubert_ckpt, "disk", tmp_path)
    assert same(features(third, wavs), ref) and third.disk_cache.hits == 1  # replaced by a good entry


def test_bad_memory_entry_is_dropped(caplog):
    cache = FeatureCache(max_bytes=10_000)
    cache.put(b"k", [torch.zeros(2, 3)])
    with caplog.at_level(logging.WARNING, logger=CACHE_LOGGER):
        assert cache.get(b"k", check=lambda hidden: "hidden state 0 of shape (2, 3), expected (2, 4)") is None
    assert len(caplog.records) == 1 and "(2, 4)" in caplog.records[0].getMessage()
    assert (len(cache), cache.bytes, cache.rejected, cache.misses) == (0, 0, 1, 1)
    cache.put(b"k", [torch.ones(2, 4)])
    assert torch.equal(cache.get(b"k", check=lambda hidden: None)[0], torch.ones(2, 4))
