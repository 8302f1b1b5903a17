"""Checkpoint formats: s3prl <-> transformers round trips, fairseq files without fairseq, bad input."""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch

from score_upstream.models.convert import main as convert_main
from score_upstream.models.formats import CheckpointError, detect_format
from score_upstream.models.formats.hf import parse_conv_layers
from score_upstream.models.hubert import load_hubert, new_hubert, save_hf, save_s3prl, tiny_model_cfg, to_raw

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)


def perturbed(bundle, seed=1):
    """Randomise every parameter (LayerNorms too), so a swapped parameter name cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return bundle.model.eval() and bundle


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    bundle = perturbed(new_hubert(tiny_model_cfg(), seed=0))
    bundle.extra = {"score": {"config": {"lr": 2e-5, "gamma": 0.1}, "step": 3600}}
    root = tmp_path_factory.mktemp("formats")
    return bundle, save_s3prl(bundle, root / "tiny.pt"), root


def assert_same(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.model_cfg == b.model_cfg and a.task_cfg == b.task_cfg and a.symbols == b.symbols


def test_s3prl_file_is_weights_only_and_keeps_extra(tiny):
    bundle, path, _ = tiny
    state = torch.load(path, weights_only=True)
    assert {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols", "score"} <= set(state)
    back = load_hubert(path)
    assert back.source_format == "s3prl" and back.extra == bundle.extra
    assert_same(bundle, back)


def test_round_trip_s3prl_hf_s3prl_is_lossless(tiny):
    bundle, path, root = tiny
    save_hf(load_hubert(path), root / "hf")
    assert detect_format(root / "hf") == "hf"
    from_hf = load_hubert(root / "hf")
    assert from_hf.extra == bundle.extra
    back_path = save_s3prl(from_hf, root / "back.pt")
    a, b = torch.load(path, weights_only=True), torch.load(back_path, weights_only=True)
    assert set(a) == set(b)
    for key in a:
        if key == "model_weight":
            assert a[key].keys() == b[key].keys()
            assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
        else:
            assert a[key] == b[key], key


def test_hf_dir_without_our_metadata_maps_the_config(tiny):
    """A plain transformers directory (e.g. facebook/hubert-base-ls960) loads from its config alone."""
    import json

    bundle, path, root = tiny
    save_hf(bundle, root / "plain")
    cfg = json.loads((root / "plain" / "config.json").read_text())
    for key in ("fairseq_model_cfg", "fairseq_task_cfg", "fairseq_symbols", "score_extra"):
        cfg.pop(key)
    (root / "plain" / "config.json").write_text(json.dumps(cfg))
    (root / "plain" / "fairseq_extra.safetensors").unlink()
    plain = load_hubert(root / "plain")
    ref = bundle.model.state_dict()
    got = plain.model.state_dict()
    shared = [k for k in ref if not k.startswith(("final_proj", "label_embs"))]
    assert all(torch.equal(ref[k], got[k]) for k in shared)
    assert parse_conv_layers(plain.model_cfg["conv_feature_layers"]) == parse_conv_layers(bundle.model_cfg["conv_feature_layers"])
    x = torch.randn(1, 8000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ya, _ = bundle.model.extract_features(x)
        yb, _ = plain.model.eval().extract_features(x)
    assert torch.allclose(ya, yb, atol=1e-5)


def _fake_fairseq_modules():
    """Classes with fairseq's import paths, so pickle writes the same globals fairseq's files hold."""
    created = {}
    for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
        if name not in sys.modules:
            created[name] = sys.modules[name] = types.ModuleType(name)

    class Dictionary:
        def __init__(self, symbols):
            self.bos_word, self.pad_word, self.eos_word, self.unk_word = "<s>", "<pad>", "</s>", "<unk>"
            self.symbols = list(symbols)
            self.count = [1] * len(symbols)
            self.indices = {s: i for i, s in enumerate(symbols)}
            self.nspecial = 4

    Dictionary.__module__, Dictionary.__qualname__ = "fairseq.data.dictionary", "Dictionary"
    sys.modules["fairseq.data.dictionary"].Dictionary = Dictionary
    return Dictionary, created


def write_fairseq(bundle, path, style="cfg", legacy=False):
    """A fairseq-layout checkpoint (cfg dict / DictConfig / pre-hydra args), optionally legacy serialised."""
    Dictionary, created = _fake_fairseq_modules()
    try:
        raw = to_raw(bundle)
        cfg = {"_name": None, "common": {"seed": 1}, "model": raw.model_cfg, "task": raw.task_cfg}
        args = None
        if style == "omegaconf":
            from omegaconf import OmegaConf

            cfg = OmegaConf.create(cfg)
        elif style == "args":
            args, cfg = argparse.Namespace(**{**raw.task_cfg, **raw.model_cfg, "arch": "hubert"}), None
        state = {
            "args": args,
            "cfg": cfg,
            "model": OrderedDict(raw.state_dict),
            "criterion": None,
            "optimizer_history": [{"criterion_name": "HubertCriterion", "optimizer_name": "FairseqAdam",
                                   "lr_scheduler_state": {"best": np.float64(3.5)}, "num_updates": 400000}],
            "task_state": {"dictionaries": [Dictionary(s) for s in raw.symbols]},
            "extra_state": {"epoch": 289, "val_loss": np.float64(3.1), "previous_training_time": 1.0},
            "last_optimizer_state": {"state": {}, "param_groups": []},
        }
        torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    finally:
        for name in created:
            sys.modules.pop(name, None)
    assert "fairseq" not in sys.modules
    return path


@pytest.mark.parametrize("style,legacy", [("cfg", False), ("omegaconf", False), ("args", True)])
def test_fairseq_layout_loads_without_fairseq(tiny, style, legacy):
    bundle, _, root = tiny
    path = write_fairseq(bundle, root / f"fairseq_{style}.pt", style, legacy)
    with pytest.raises(ModuleNotFoundError):
        __import__("fairseq")
    assert detect_format(path) == "fairseq"
    got = load_hubert(path)
    assert got.source_format == "fairseq" and got.symbols == bundle.symbols
    ref, new = bundle.model.state_dict(), got.model.state_dict()
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    assert got.model_cfg["encoder_embed_dim"] == bundle.model_cfg["encoder_embed_dim"]


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("layout", ["fairseq", "s3prl"])
def test_pickle_with_a_disallowed_global_is_refused(tiny, tmp_path, layout):
    bundle, path, _ = tiny
    marker = tmp_path / "ran"
    if layout == "fairseq":
        state = {"cfg": {"model": {}, "task": {}}, "model": {}, "task_state": {"x": _Evil(marker)}}
    else:
        state = dict(torch.load(path, weights_only=True), payload=_Evil(marker))
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(CheckpointError) as err:
        load_hubert(bad)
    msg = str(err.value)
    assert str(bad) in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()


def test_bad_inputs_give_one_line_errors(tmp_path):
    from transformers import BertConfig

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    wrong_keys = tmp_path / "wrong.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, wrong_keys)
    bert = tmp_path / "bert"
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(bert)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases = {tmp_path / "missing.pt": "not found", text: "not a HuBERT checkpoint", wrong_keys: "not a HuBERT checkpoint",
             bert: "model_type 'bert'", empty_dir: "not a HuBERT checkpoint"}
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as err:
            load_hubert(path)
        msg = str(err.value)
        assert str(path) in msg and expected in msg and "\n" not in msg, msg


def test_wav2vec2_directory_is_refused(tmp_path):
    from transformers import Wav2Vec2Config

    w2v = tmp_path / "w2v"
    Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(w2v)
    with pytest.raises(CheckpointError, match=r"w2v: config.json has model_type .wav2vec2.*expected transformers HubertModel"):
        load_hubert(w2v)


def test_conv_layer_spec_is_parsed_without_eval():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2")[-1] == (512, 2, 2)
    with pytest.raises(CheckpointError, match="conv_feature_layers"):
        parse_conv_layers("__import__('os').system('true')")


def test_convert_cli(tiny, tmp_path, capsys):
    _, path, _ = tiny
    assert convert_main([str(path), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert convert_main([str(tmp_path / "hf"), str(tmp_path / "back.pt"), "--to", "s3prl"]) == 0
    assert load_hubert(tmp_path / "back.pt").source_format == "s3prl"
    capsys.readouterr()
    assert convert_main([str(tmp_path / "nope.pt"), str(tmp_path / "x.pt"), "--to", "s3prl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.pt" in err and "Traceback" not in err


def test_pickle_refusal_is_not_fooled_by_pickle_module(tmp_path):
    """The restricted unpickler is used even for legacy (non-zip) torch files."""
    bad = tmp_path / "legacy_bad.pt"
    torch.save({"cfg": {}, "model": {}, "x": _Evil(tmp_path / "ran")}, bad, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="refusing to unpickle global"):
        load_hubert(bad)
    assert not (tmp_path / "ran").exists()
    assert pickle is not None
