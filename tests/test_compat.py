"""The s3prl compatibility layer: audio I/O, sox effects, removed hub classes, runner checkpoints.

Marked ``compat_env``: CI also runs these in the oldest supported environment (requirements-min.lock),
where most shims are not needed and s3prl runs on the libraries' own code.
"""

from __future__ import annotations

import argparse
import math

import pytest
import soundfile as sf
import torch

from score_upstream.s3prl import compat

pytestmark = pytest.mark.compat_env


@pytest.fixture(scope="module", autouse=True)
def applied():
    compat.apply()
    compat.apply()  # idempotent


def test_s3prl_imports():
    import s3prl.downstream.asr.expert  # noqa: F401
    import s3prl.downstream.quesst14_dtw.dataset  # noqa: F401  (sox_effects at import time)
    import s3prl.downstream.runner  # noqa: F401  (HfFolder, Repository at import time)
    import s3prl.hub

    assert callable(s3prl.hub.hubert_local)


def test_soundfile_io_stands_in_for_torchaudio(tmp_path):
    gen = torch.Generator().manual_seed(0)
    wav = (0.3 * torch.randn(2, 1600, generator=gen)).clamp(-1, 1)
    path = tmp_path / "a.flac"
    compat.save(str(path), wav, 16000)
    info = compat.info(str(path))
    assert (info.sample_rate, info.num_frames, info.num_channels, info.bits_per_sample) == (16000, 1600, 2, 16)
    back, sr = compat.load(str(path))
    ref, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == 16000 and back.shape == (2, 1600) and torch.equal(back, torch.from_numpy(ref.T.copy()))
    assert (back - wav).abs().max() < 1e-4
    part, _ = compat.load(str(path), frame_offset=100, num_frames=50)
    assert torch.equal(part, back[:, 100:150])


def test_torchaudio_io_reads_what_soundfile_reads(tmp_path):
    """After apply(), s3prl's ``torchaudio.load`` works: torchaudio's own (< 2.9) or ours (2.9+)."""
    import torchaudio

    assert ("torchaudio.load/save/info" in compat.applied_shims()) == (torchaudio.load is compat.load)
    gen = torch.Generator().manual_seed(0)
    wav = (0.3 * torch.randn(1, 1600, generator=gen)).clamp(-1, 1)
    path = tmp_path / "a.wav"
    sf.write(str(path), wav[0].numpy(), 16000, subtype="PCM_16")
    back, sr = torchaudio.load(str(path))
    ref, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == 16000 and torch.equal(back, torch.from_numpy(ref.T.copy()))
    assert torchaudio.info(str(path)).num_frames == 1600


def test_sox_effects_subset(tmp_path):
    from score_upstream.s3prl.compat import apply_effects_file, apply_effects_tensor

    t = torch.linspace(0, 1, 8000)
    stereo = torch.stack([torch.sin(2 * math.pi * 440 * t), 0.5 * torch.sin(2 * math.pi * 440 * t)]) * 0.5
    out, sr = apply_effects_tensor(stereo, 8000, [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert sr == 16000 and out.shape == (1, 16000)
    expected_peak = 0.75 * 0.5 * 10 ** (-3 / 20)
    assert abs(out.abs().max().item() - expected_peak) < 0.01
    normed, _ = apply_effects_tensor(stereo, 8000, [["norm"]])
    assert abs(normed.abs().max().item() - 1.0) < 1e-6
    normed3, _ = apply_effects_tensor(stereo, 8000, [["gain", "-n", "-3"]])
    assert abs(normed3.abs().max().item() - 10 ** (-3 / 20)) < 1e-6
    rev, _ = apply_effects_tensor(stereo, 8000, [["reverse"]])
    assert torch.equal(rev, stereo.flip(-1))
    padded, _ = apply_effects_tensor(stereo, 8000, [["pad", "0.5", "0.25"], ["trim", "0.5", "1"]])
    assert torch.equal(padded, stereo)
    path = tmp_path / "s.wav"
    sf.write(str(path), stereo.T.numpy(), 8000, subtype="FLOAT")
    from_file, sr = apply_effects_file(str(path), [["channels", "1"]])
    assert sr == 8000 and torch.allclose(from_file, stereo.mean(0, keepdim=True), atol=1e-6)
    with pytest.raises(compat.CompatError, match=r"\['vad'.*supported: channels"):
        apply_effects_tensor(stereo, 8000, [["vad", "-T", "0.25"]])


def test_sox_effects_of_the_qbe_dataset_run(tmp_path):
    """s3prl's QUESST dataset calls ``apply_effects_file`` with channels, rate and gain: sox or ours."""
    from torchaudio.sox_effects import apply_effects_file

    t = torch.linspace(0, 1, 8000)
    path = tmp_path / "q.wav"
    sf.write(str(path), (0.5 * torch.sin(2 * math.pi * 440 * t)).numpy(), 8000, subtype="PCM_16")
    out, sr = apply_effects_file(str(path), [["channels", "1"], ["rate", "16000"], ["gain", "-3.0"]])
    assert sr == 16000 and out.shape == (1, 16000)
    assert abs(out.abs().max().item() - 0.5 * 10 ** (-3 / 20)) < 0.01


def test_removed_hub_classes_fail_only_when_used():
    import huggingface_hub

    for name in ("HfFolder", "Repository"):
        assert hasattr(huggingface_hub, name)  # s3prl's runner imports both at module level
        assert (f"huggingface_hub.{name}" in compat.applied_shims()) == isinstance(
            getattr(huggingface_hub, name), compat._RemovedMeta)
    with pytest.raises(compat.CompatError, match="HfFolder was removed"):
        compat._removed("HfFolder").get_token()
    with pytest.raises(compat.CompatError, match="Repository was removed"):
        compat._removed("Repository")("x")


def test_runner_checkpoints_load_weights_only(tmp_path):
    """s3prl's run_downstream loads states-*.ckpt with torch's default (weights-only) torch.load."""
    state = {"Args": argparse.Namespace(upstream="score_hubert", device="cpu"), "Config": {"runner": {"total_steps": 4}},
             "Step": 4, "Downstream": {"w": torch.ones(2)}}
    path = tmp_path / "states-4.ckpt"
    torch.save(state, path)
    back = torch.load(path, map_location="cpu")
    assert back["Args"].upstream == "score_hubert" and torch.equal(back["Downstream"]["w"], torch.ones(2))


def test_default_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compat.default_device_args(["-m", "train"])[-2:] == ["--device", "cpu"]
    assert compat.default_device_args(["--device", "cuda:1"]) == ["--device", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compat.default_device_args(["-m", "train"]) == ["-m", "train"]


def test_missing_s3prl_modules_installed():
    import sys

    assert "s3prl.downstream.ctc.corpus.libriphone" in sys.modules


def test_ctc_load_dataset_leaves_the_corpus_config_alone(monkeypatch):
    """s3prl's ctc ``load_dataset`` pops ``num_workers``; later loaders must still see the configured value."""
    import s3prl.downstream.ctc.data as ctc_data
    import s3prl.downstream.ctc.expert as ctc_expert

    seen = []
    monkeypatch.setattr(ctc_data, "create_dataset", lambda split, tok, num_workers, **kw: seen.append(num_workers)
                        or (None, 1))
    monkeypatch.setattr(ctc_data, "DataLoader", lambda *a, **kw: kw["num_workers"])
    corpus = {"name": "libriphone", "num_workers": 0}
    assert ctc_expert.load_dataset is ctc_data.load_dataset
    assert ctc_expert.load_dataset("dev", None, corpus) == 0
    assert ctc_expert.load_dataset("test", None, corpus) == 0  # s3prl alone would fall back to 12 here
    assert corpus == {"name": "libriphone", "num_workers": 0} and seen == [0, 0]


def test_register_logs_the_applied_shims_in_one_debug_line():
    """A fresh process: ``register()`` says once, at debug level, which shims this environment needed."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(level=logging.DEBUG, format='%(name)s|%(message)s'); "
            "import score_upstream; score_upstream.register(); score_upstream.register()")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    lines = [line for line in err.splitlines() if line.startswith("score_upstream.s3prl.compat|")]
    assert len(lines) == 1, err
    assert "s3prl compatibility layer (torch " in lines[0] and "): applied " in lines[0]
    assert lines[0].endswith(", ".join(compat.applied_shims()) or "nothing")


def test_hf_experts_load_transformers_only_when_used(tmp_path):
    """``import s3prl.hub`` leaves transformers out; ``hf_hubert_custom`` still builds s3prl's own expert."""
    import subprocess
    import sys

    code = f"""
import sys, torch
import score_upstream
score_upstream.register()
import s3prl.hub as hub
assert "transformers" not in sys.modules, "s3prl.hub imported transformers"
from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor
torch.manual_seed(0)
HubertModel(HubertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=4,
                         num_conv_pos_embedding_groups=2)).save_pretrained({str(tmp_path)!r})
Wav2Vec2FeatureExtractor().save_pretrained({str(tmp_path)!r})
expert = hub.hf_hubert_custom({str(tmp_path)!r}).eval()
real = sys.modules["s3prl.upstream.hf_hubert.expert"]
assert type(expert) is real.UpstreamExpert and real.HubertModel is HubertModel
wav = torch.randn(1600)
with torch.no_grad():
    hs = expert([wav])["hidden_states"]
    ref = HubertModel.from_pretrained({str(tmp_path)!r}).eval()(((wav - wav.mean()) / (wav.var(unbiased=False) + 1e-7).sqrt())[None],
                                                                  output_hidden_states=True).hidden_states
assert len(hs) == len(ref) == 2 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(hs, ref))
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
