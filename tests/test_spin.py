"""SPIN Lightning checkpoints -> s3prl's converted HuBERT: same weights, same outputs, safe loading."""

from __future__ import annotations

import contextlib
import sys
import types

import pytest
import torch

from score_upstream.models.formats import CheckpointError, Probe, pickle_strings, write_s3prl
from score_upstream.models.formats import spin
from score_upstream.models.hubert import load_hubert, new_hubert, save_s3prl, tiny_model_cfg

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

SAFE_LOADING = hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
needs_torch_2_6 = pytest.mark.skipif(not SAFE_LOADING, reason="safe SPIN loading needs torch >= 2.6")


class FakeAttributeDict(dict):
    """Pickled under Lightning's name, to check that loading needs no Lightning."""


@contextlib.contextmanager
def fake_lightning():
    """Make ``lightning.fabric.utilities.data.AttributeDict`` importable only while a checkpoint is saved."""
    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    assert not any(n in sys.modules for n in names)
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    FakeAttributeDict.__module__ = "lightning.fabric.utilities.data"
    FakeAttributeDict.__qualname__ = FakeAttributeDict.__name__ = "AttributeDict"
    sys.modules["lightning.fabric.utilities.data"].AttributeDict = FakeAttributeDict
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]


def make_spin(tmp_path, base_path, *, path_or_url="https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt"):
    """A SPIN-like ckpt: the tiny HuBERT with its top two layers changed, plus a head and a codebook."""
    trained = new_hubert(tiny_model_cfg(), seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if name.startswith(("encoder.layers.10.", "encoder.layers.11.")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    state = {
        spin.ENCODER_PREFIX + k: v
        for k, v in trained.model.state_dict().items()
        if not k.startswith(spin.PRETRAINING_HEADS)
    }
    state["pred_head.net.0.weight"] = torch.randn(16, 48, generator=gen)
    state["loss_module.codebook.weight"] = torch.randn(32, 16, generator=gen)
    hparams = FakeAttributeDict(
        model={"encoder": {"type": "HuBERT", "use_layer": 12, "path_or_url": path_or_url,
                           "freeze_layers": ["pos", 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]},
               "loss": {"type": "SwavVQDisentangle", "num_vars": 32}},
        optim={"optimizer": {"name": "Adam", "args": {"lr": 1e-4}}},
        trainer={"default_root_dir": __import__("pathlib").PosixPath("exp/tmp")},
    )
    ckpt = {
        "epoch": 3,
        "global_step": 5000,
        "pytorch-lightning_version": "2.0.2",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None, "dirpath": "exp/tmp"}},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-6, "params": [0]}]}],
        "lr_schedulers": [{"last_epoch": 5000}],
        "hparams_name": "config",
        "hyper_parameters": hparams,
    }
    path = tmp_path / "spin.ckpt"
    with fake_lightning():
        torch.save(ckpt, path)
    return path, trained


@pytest.fixture
def spin_ckpt(tmp_path):
    base_path = save_s3prl(new_hubert(tiny_model_cfg(), seed=0), tmp_path / "base.pt")
    path, trained = make_spin(tmp_path, base_path)
    return path, base_path, trained


@needs_torch_2_6
def test_converted_spin_gives_identical_outputs(spin_ckpt, tmp_path):
    path, base_path, trained = spin_ckpt
    assert "lightning" not in sys.modules  # loading must not need Lightning
    raw = spin.read_spin(path, base=base_path)
    out = write_s3prl(raw, tmp_path / "spin_s3prl.pt")
    converted = load_hubert(out)
    assert converted.extra["spin"]["global_step"] == 5000
    assert "pred_head.net.0.weight" in converted.extra["spin"]["dropped"]
    trained.model.eval()
    wav = torch.randn(2, 8000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, _ = trained.model.extract_features(wav)
        got, _ = converted.model.extract_features(wav)
        base, _ = load_hubert(base_path).model.extract_features(wav)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.allclose(base, want)  # the SPIN layers really were taken

    # s3prl's own loader (what hubert_local runs) accepts it with its strict load
    from s3prl.upstream.hubert.convert import load_converted_model

    model, _ = load_converted_model(str(out))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.extract_features(wav)[0], want, rtol=0, atol=0)


def test_detection(spin_ckpt):
    path, base_path, _ = spin_ckpt
    assert spin.detect(Probe(path, False, pickle_strings(path)))
    assert not spin.detect(Probe(base_path, False, pickle_strings(base_path)))


@needs_torch_2_6
def test_base_from_hyper_parameters(tmp_path):
    base_path = save_s3prl(new_hubert(tiny_model_cfg(), seed=0), tmp_path / "base.pt")
    path, _ = make_spin(tmp_path, base_path, path_or_url=str(base_path))
    raw = spin.read(path)  # the registry's entry point: no explicit base
    assert raw.source_format == "spin" and raw.extra["spin"]["base"] == str(base_path)


@needs_torch_2_6
def test_missing_base_is_a_clear_error(spin_ckpt):
    path, _, _ = spin_ckpt
    with pytest.raises(CheckpointError, match="stores weights only.*--base"):
        spin.read_spin(path)


@needs_torch_2_6
def test_wrong_base_is_refused(spin_ckpt, tmp_path):
    path, _, _ = spin_ckpt
    other = save_s3prl(new_hubert(tiny_model_cfg(encoder_embed_dim=32, encoder_ffn_embed_dim=64), seed=0),
                       tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="do not fit.*other shape"):
        spin.read_spin(path, base=other)


@needs_torch_2_6
def test_unsafe_globals_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.0", "hyper_parameters": {"x": print}}, path)
    with pytest.raises(CheckpointError, match="builtins.print"):
        spin.load_lightning(path)
    with pytest.raises(CheckpointError, match="not found"):
        spin.load_lightning(tmp_path / "nope.ckpt")


@needs_torch_2_6
def test_score_convert_cli_with_base(spin_ckpt, tmp_path, capsys):
    from score_upstream.models.convert import main

    path, base_path, trained = spin_ckpt
    out = tmp_path / "via_cli.pt"
    assert main([str(path), str(out), "--to", "s3prl", "--base", str(base_path)]) == 0
    converted = load_hubert(out)
    for name, want in trained.model.state_dict().items():
        torch.testing.assert_close(converted.model.state_dict()[name], want, rtol=0, atol=0)
    # without --base the recorded hub URL cannot be used here: one line, exit 2
    assert main([str(path), str(tmp_path / "x.pt"), "--to", "s3prl"]) == 2
    assert "base" in capsys.readouterr().err.lower()


@pytest.mark.skipif(SAFE_LOADING, reason="this torch reads SPIN checkpoints")
def test_old_torch_refuses_spin_in_one_line(spin_ckpt):
    path, _, _ = spin_ckpt
    with pytest.raises(CheckpointError, match=r"needs torch >= 2\.6.*has torch 2\."):
        spin.load_lightning(path)
