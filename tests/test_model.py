"""SCORE model: the paper's trainable set, frozen target, frame lengths, batch == one-by-one."""

from __future__ import annotations

import pytest
import torch

from score_upstream.training.config import ConfigError, ModelConfig
from score_upstream.models.hubert import new_hubert, tiny_model_cfg
from score_upstream.training.model import ScoreModel, conv_layout, frame_lengths

LAYER_PARAMS = [
    "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "self_attn_layer_norm.weight", "self_attn_layer_norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    "final_layer_norm.weight", "final_layer_norm.bias",
]


@pytest.fixture(scope="module")
def bundle_factory():
    return lambda: new_hubert(tiny_model_cfg(), seed=0)


def test_default_trainable_set_is_the_papers(bundle_factory):
    m = ScoreModel(bundle_factory(), ModelConfig(head_dim=16), seed=0)
    expected = {f"student.encoder.layers.{i}.{p}" for i in (10, 11) for p in LAYER_PARAMS}
    expected |= {"student.layer_norm.weight", "student.layer_norm.bias",
                 "student.encoder.layer_norm.weight", "student.encoder.layer_norm.bias",
                 "head.weight", "head.bias"}
    assert set(m.trainable_parameters()) == expected
    grad_on = {f"student.{n}" for n, p in m.student.named_parameters() if p.requires_grad}
    assert grad_on | {"head.weight", "head.bias"} == expected
    assert not any(p.requires_grad for p in m.target.parameters())
    # the target is not part of the trainable module tree (so not in checkpoints or the optimiser)
    assert not any(k.startswith("target") for k in m.state_dict())
    assert m.head.in_features == 48 and m.head.out_features == 16
    assert m.student.feature_grad_mult == 0.0 and m.student.encoder.layerdrop == 0.0


def test_bad_trainable_prefix_names_key(bundle_factory):
    with pytest.raises(ConfigError, match="model.trainable.*encoder.layers.99"):
        ScoreModel(bundle_factory(), ModelConfig(trainable=["encoder.layers.99."]), seed=0)


def test_target_frozen_and_never_updated_and_dropout_modes(bundle_factory):
    m = ScoreModel(bundle_factory(), ModelConfig(head_dim=16), seed=0)
    before = {k: v.clone() for k, v in m.target.state_dict().items()}
    student_before = {k: v.clone() for k, v in m.student.state_dict().items()}
    assert m.training and m.student.training and m.target.training  # paper: target in train mode
    opt = torch.optim.SGD(list(m.trainable_parameters().values()), lr=0.5)
    g = torch.Generator().manual_seed(0)
    wav = torch.randn(2, 8000, generator=g)
    lens = torch.tensor([8000, 6000])
    s, sl, t, tl = m(wav, lens, wav.flip(1), lens)
    assert s.requires_grad and t.requires_grad  # the shared head projects the target with gradient (authors')
    (s[0, : sl[0]].sum() + s[1, : sl[1]].pow(2).sum() + t[0, : tl[0]].sum()).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())  # only the head learns
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.target.state_dict().items())
    after = m.student.state_dict()
    changed = {k for k in after if not torch.equal(after[k], student_before[k])}
    assert changed and all(k.startswith(("encoder.layers.10.", "encoder.layers.11.", "layer_norm.",
                                         "encoder.layer_norm.")) for k in changed)
    assert "layer_norm.weight" in changed  # gradients reach the lowest trainable LayerNorm
    m2 = ScoreModel(bundle_factory(), ModelConfig(head_dim=16, target_dropout=False), seed=0)
    assert m2.student.training and not m2.target.training


def test_frame_lengths_and_padded_batch_equals_one_by_one(bundle_factory):
    m = ScoreModel(bundle_factory(), ModelConfig(head_dim=16), seed=0).eval()
    assert conv_layout(m.student) == [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2
    assert frame_lengths(torch.tensor([16000, 400, 399, 320 * 10 + 80]), m.layout).tolist() == [49, 1, 0, 10]
    g = torch.Generator().manual_seed(1)
    lens = torch.tensor([9000, 5000, 3300])
    wav = torch.randn(3, 9000, generator=g)
    for b in range(3):
        wav[b, lens[b]:] = 0
    with torch.no_grad():
        xb, fb = m.encode(m.student, wav, lens)
        for b in range(3):
            x1, f1 = m.encode(m.student, wav[b:b + 1, : lens[b]], lens[b:b + 1])
            assert int(f1) == int(fb[b]) == x1.shape[1]
            assert torch.allclose(xb[b, : fb[b]], x1[0], atol=1e-5)
