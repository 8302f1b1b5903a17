"""`score_hubert` returns s3prl's `hubert_local` hidden states and transformers' `HubertModel` ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from score_upstream.models.hubert import load_hubert, new_hubert, save_hf, save_s3prl, tiny_model_cfg, tiny_task_cfg

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

ATOL = 1e-4
LENGTHS = (16000, 11200, 7437)  # one second, and two shorter utterances padded in the same batch


def perturbed(bundle, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return bundle


@pytest.fixture(scope="module")
def registered():
    import score_upstream

    score_upstream.register()
    import s3prl.hub

    return s3prl.hub


@pytest.fixture(scope="module", params=["post_ln", "pre_ln"])
def ckpts(request, tmp_path_factory):
    """Base-style (post-LN, GroupNorm front-end) and Large-style (pre-LN, LayerNorm front-end, normalised input)."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "post_ln":
        bundle = new_hubert(tiny_model_cfg(), seed=0)
    else:
        bundle = new_hubert(tiny_model_cfg(layer_norm_first=True, extractor_mode="layer_norm", conv_bias=True),
                            tiny_task_cfg(normalize=True), seed=0)
    perturbed(bundle)
    s3prl_path = save_s3prl(bundle, root / "score.pt", extra={"score": {"step": 3600}})
    hf_dir = save_hf(bundle, root / "hf")
    return s3prl_path, hf_dir


@pytest.fixture(scope="module")
def wavs():
    gen = torch.Generator().manual_seed(7)
    return [0.1 * torch.randn(n, generator=gen) for n in LENGTHS]


def min_samples_for_frames(n: int, conv_layers) -> int:
    """Shortest input the conv front-end maps to ``n`` frames (inverse of floor((L - k) / s) + 1)."""
    for _, k, s in reversed(conv_layers):
        n = (n - 1) * s + k
    return n


def test_import_score_upstream_is_light():
    import subprocess

    code = "import sys, score_upstream; print(any(m.startswith('s3prl') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    # the recipes start these helpers for every model: each would spend ~2 s importing torch
    helpers = ["score_upstream.atomic", "score_upstream.report.results", "score_upstream.s3prl.superb.qbe.protocol",
               "score_upstream.s3prl.superb.qbe.prepare"]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {helpers!r}]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_registration_is_idempotent(registered):
    import score_upstream

    fn = registered.score_hubert
    score_upstream.register()
    assert registered.score_hubert is fn and registered.score_local is not None


def test_same_hidden_states_as_hubert_local(registered, ckpts, wavs):
    s3prl_path, hf_dir = ckpts
    ours = registered.score_hubert(ckpt=str(s3prl_path), model_config=None, refresh=False).eval()
    stock = registered.hubert_local(ckpt=str(s3prl_path)).eval()
    from_hf_dir = registered.score_local(str(hf_dir)).eval()
    assert ours.get_downsample_rates("hidden_states") == 320
    with torch.no_grad():
        a = ours(wavs)["hidden_states"]
        b = stock(wavs)["hidden_states"]
        c = from_hf_dir(wavs)["hidden_states"]
    assert len(a) == len(b) == 13
    for x, y, z in zip(a, b, c):
        assert x.shape == y.shape == z.shape
        assert (x - y).abs().max() < ATOL and (x - z).abs().max() < ATOL
    assert a[-1].shape[:2] == (3, 49)


def _transformers_models_usable() -> bool:
    from transformers.utils import is_torch_available

    return is_torch_available()  # transformers 5 needs torch >= 2.6 for its models


@pytest.mark.skipif(not _transformers_models_usable(), reason="transformers' models need a newer torch")
def test_same_hidden_states_as_transformers(ckpts, wavs):
    """transformers' HubertModel from our directory, given the same frame padding mask, per utterance.

    fairseq calls a frame padding only when every sample under its stride is padding; transformers
    masks frames past the conv output length of the valid samples (one frame fewer). The network
    is compared given the same frame mask: the transformers attention mask is as long as the
    shortest input that yields fairseq's number of valid frames. For a pre-LN model transformers'
    last ``hidden_states`` entry is taken before the encoder's final LayerNorm; s3prl's (and ours)
    is the encoder output, transformers' ``last_hidden_state``.
    """
    from transformers import HubertModel

    from score_upstream.models.formats.hf import parse_conv_layers
    from score_upstream.s3prl.upstream.expert import UpstreamExpert

    s3prl_path, hf_dir = ckpts
    ours = UpstreamExpert(str(s3prl_path)).eval()

    def pick(out):
        return tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)

    hf = HubertModel.from_pretrained(hf_dir).eval()
    conv = parse_conv_layers(load_hubert(s3prl_path).model_cfg["conv_feature_layers"])
    inputs = [torch.nn.functional.layer_norm(w, w.shape) for w in wavs] if ours.normalize else wavs
    padded = torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True)
    sample_mask = torch.arange(padded.shape[1])[None] < torch.tensor(LENGTHS)[:, None]
    with torch.no_grad():
        ref = ours(wavs)["hidden_states"]
        frames_pad = ours.model.forward_padding_mask(torch.zeros(3, ref[-1].shape[1], 1), ~sample_mask)
        valid = (~frames_pad).sum(-1).tolist()
        attention = torch.zeros_like(sample_mask, dtype=torch.long)
        for i, n in enumerate(valid):
            attention[i, : min_samples_for_frames(n, conv)] = 1
        got = pick(hf(padded, attention_mask=attention, output_hidden_states=True))
        single = [pick(hf(w[None], output_hidden_states=True)) for w in inputs[:1]]
    assert len(got) == len(ref) == 13
    for layer, (x, y) in enumerate(zip(ref, got)):
        for i, n in enumerate(valid):
            assert (x[i, :n] - y[i, :n]).abs().max() < ATOL, (layer, i)
    # An unpadded utterance needs no mask at all: the longest one is compared in full.
    for x, y in zip(ref, single[0]):
        assert (x[0, : y.shape[1]] - y[0]).abs().max() < ATOL


def test_s3prl_upstream_by_name(registered, ckpts, wavs):
    from s3prl.nn import S3PRLUpstream

    s3prl_path, _ = ckpts
    up = S3PRLUpstream("score_hubert", path_or_url=str(s3prl_path)).eval()
    assert up.num_layers == 13 and set(up.downsample_rates) == {320}
    wav_len = torch.tensor(LENGTHS)
    with torch.no_grad():
        hs, hs_len = up(torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), wav_len)
    assert len(hs) == 13 and hs[0].shape[0] == 3
    assert hs_len[0].tolist()[0] == hs[0].shape[1]


def test_missing_checkpoint_is_one_line(registered, tmp_path):
    from score_upstream.models.formats import CheckpointError

    with pytest.raises(CheckpointError, match=r"missing\.pt: checkpoint not found"):
        registered.score_hubert(ckpt=str(tmp_path / "missing.pt"))
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        registered.score_hubert()


def test_tiny_model_shape():
    bundle = new_hubert(tiny_model_cfg(), seed=0)
    assert bundle.num_layers == 12
    again = new_hubert(tiny_model_cfg(), seed=0)
    assert all(torch.equal(p, q) for p, q in zip(bundle.model.parameters(), again.model.parameters()))
    other = new_hubert(tiny_model_cfg(), seed=1)
    assert not torch.equal(bundle.model.final_proj.weight, other.model.final_proj.weight)


# ---------------------------------------------------------------- frozen-feature cache


def test_feature_cache_returns_the_uncached_tensors(tiny_hubert_ckpt, wavs, monkeypatch):
    """A padded batch of three lengths: the cached forward equals the uncached one bit for bit."""
    from score_upstream.s3prl.upstream.expert import CACHE_ENV, UpstreamExpert

    monkeypatch.setenv(CACHE_ENV, "64")
    cached = UpstreamExpert(str(tiny_hubert_ckpt)).eval()
    plain = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=0).eval()
    assert cached.cache is not None and plain.cache is None
    with torch.no_grad():
        ref = plain(wavs)["hidden_states"]
        first = cached(wavs)
        first["hidden_states"][0].add_(1.0)  # a caller modifying its result must not reach the cache
        again = cached([w.clone() for w in wavs])  # same bytes, new tensors
        other = cached(wavs[:2])  # a different batch is a different entry
    assert cached.cache.hits == 1 and cached.cache.misses == 2 and len(cached.cache) == 2
    assert len(again["hidden_states"]) == len(ref) == 13
    for x, y in zip(again["hidden_states"], ref):
        assert x.shape == y.shape and torch.equal(x, y)
    assert again["last_hidden_state"] is again["hidden_states"][-1]
    with torch.no_grad():
        ref2 = plain(wavs[:2])["hidden_states"]
    assert all(torch.equal(x, y) for x, y in zip(other["hidden_states"], ref2))


def test_feature_cache_off_in_train_mode_or_with_grad(tiny_hubert_ckpt, wavs):
    from score_upstream.s3prl.upstream.expert import UpstreamExpert

    up = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=64).eval()
    up(wavs)  # grad enabled
    up.train()
    with torch.no_grad():
        up(wavs)
    assert len(up.cache) == 0 and up.cache.hits == up.cache.misses == 0
    up.eval()
    with torch.no_grad():
        up(wavs)
        up(wavs)
    assert up.cache.hits == 1


def test_feature_cache_is_bounded_lru():
    from score_upstream.s3prl.upstream.expert import FeatureCache, batch_key

    cache = FeatureCache(max_bytes=3 * 400)  # three entries of 100 float32
    keys = [batch_key([torch.full((5,), float(i))]) for i in range(4)]
    assert len(set(keys)) == 4 and batch_key([torch.zeros(5)]) != batch_key([torch.zeros(6)])
    for i, k in enumerate(keys[:3]):
        cache.put(k, [torch.full((100,), float(i))])
    assert cache.get(keys[0]) is not None  # 0 is now the most recently used
    cache.put(keys[3], [torch.zeros(100)])
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    assert len(cache) == 3 and cache.bytes == 1200 and cache.evictions == 1
    cache.put(batch_key([torch.ones(1)]), [torch.zeros(301)])  # larger than the budget: not stored
    assert len(cache) == 3


def test_disk_feature_cache_is_shared_and_exact(tiny_hubert_ckpt, wavs, tmp_path, monkeypatch):
    """Two experts (two processes in a real run) on one folder: the second reads what the first computed,
    bit for bit; another checkpoint gets its own folder; train mode or grad never touch it."""
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg
    from score_upstream.s3prl.upstream.expert import CACHE_DIR_ENV, UpstreamExpert

    plain = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=0, cache_dir="").eval()
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "feats"))
    first = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=0).eval()
    second = UpstreamExpert(str(tiny_hubert_ckpt), cache_mb=64).eval()
    assert plain.disk_cache is None and first.disk_cache.root == second.disk_cache.root
    with torch.no_grad():
        ref = plain(wavs)["hidden_states"]
        a = first(wavs)["hidden_states"]
        b = second([w.clone() for w in wavs])["hidden_states"]
        second(wavs)  # now from its memory cache
    assert (first.disk_cache.misses, first.disk_cache.hits) == (1, 0)
    assert (second.disk_cache.misses, second.disk_cache.hits, second.cache.hits) == (0, 1, 1)
    assert len(list(first.disk_cache.root.glob("*.pt"))) == 1
    for x, y, z in zip(ref, a, b):
        assert torch.equal(x, y) and torch.equal(x, z)
    other_ckpt = tmp_path / "other.pt"
    save_s3prl(new_hubert(tiny_model_cfg(), seed=1), other_ckpt)
    assert UpstreamExpert(str(other_ckpt)).disk_cache.root != first.disk_cache.root
    first(wavs)  # grad enabled
    first.train()
    with torch.no_grad():
        first(wavs[:2])
    assert (first.disk_cache.misses, first.disk_cache.hits) == (1, 0)


def test_disk_feature_cache_computes_each_entry_once_across_processes(tmp_path):
    """Four processes ask for the same entry at once: one computes it (under the entry's lock), all get it."""
    import multiprocessing as mp

    from score_upstream.s3prl.upstream.expert import DiskFeatureCache

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ask_disk_cache, args=(str(tmp_path / "c"), str(tmp_path / "log"), n)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 4
    computed = (tmp_path / "log").read_text().split()
    assert len(computed) == 1, computed
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["0", "1", "2", "3"]
    (tmp_path / "c" / (b"k" * 20).hex()).with_suffix(".pt").write_bytes(b"not a torch file")
    cache = DiskFeatureCache(tmp_path / "c")
    assert torch.equal(cache.get_or_compute(b"k" * 20, lambda: [torch.ones(2)])[0], torch.ones(2))
    assert cache.misses == 1  # the unreadable entry was computed again and replaced
    assert torch.equal(DiskFeatureCache(tmp_path / "c").get_or_compute(b"k" * 20, lambda: [])[0], torch.ones(2))


def _ask_disk_cache(root: str, log: str, n: int) -> None:
    import time

    from score_upstream.s3prl.upstream.expert import DiskFeatureCache

    def compute():
        with open(log, "a") as f:
            f.write(f"{n}\n")
        time.sleep(0.5)
        return [torch.arange(6.0).reshape(2, 3)]

    out = DiskFeatureCache(root).get_or_compute(b"\x01" * 20, compute)
    assert torch.equal(out[0], torch.arange(6.0).reshape(2, 3))
    results = Path(root).parent / "results"
    results.mkdir(exist_ok=True)
    (results / str(n)).touch()


def test_feature_cache_size_from_environment(monkeypatch):
    from score_upstream.s3prl.upstream.expert import CACHE_ENV, cache_megabytes_from_env

    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_megabytes_from_env() == 0
    monkeypatch.setenv(CACHE_ENV, "512")
    assert cache_megabytes_from_env() == 512
    for bad in ("lots", "-1", "nan"):
        monkeypatch.setenv(CACHE_ENV, bad)
        with pytest.raises(ValueError, match=CACHE_ENV):
            cache_megabytes_from_env()
