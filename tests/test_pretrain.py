"""score-pretrain: labels line up with the model's frames, the masked-prediction loss goes down, a resumed
run ends with the same weights, a changed recipe key is refused on resume, and the result is a HuBERT
that our loaders and s3prl's read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from score_upstream.pretrain import labels as L
from score_upstream.pretrain.config import load_pretrain_config
from score_upstream.pretrain.trainer import PretrainError, Pretrainer
from score_upstream.training.config import ConfigError

RECIPE = "recipes/pretrain/tiny.yaml"
FAST = ["optim.total_steps=12", "optim.warmup_steps=2", "valid_every=12", "save_every=6", "labels.clusters=8",
        "data.batch_crops=3", "data.crop_seconds=1.0"]


def test_mfcc_frames_match_the_cnn():
    from score_upstream.models.hubert import new_hubert, small_model_cfg
    from score_upstream.training.model import conv_layout, frame_lengths

    layout = conv_layout(new_hubert(small_model_cfg()).model)
    for n in (399, 400, 719, 720, 16000, 48_080, 51_234):
        cnn = int(frame_lengths(torch.tensor([n]), layout)[0])
        assert L.num_frames(n) == cnn
        assert L.mfcc_features(torch.randn(n)).shape == (cnn, 39)


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = [centres[i] + 0.1 * torch.randn(200, 2, generator=g) for i in range(3)]
    km = L.fit_kmeans(feats, clusters=3, seed=0, n_init=2, batch_size=256)
    units = [L.assign(km, f) for f in feats]
    assert all(len(set(u.tolist())) == 1 for u in units)
    assert len({int(u[0]) for u in units}) == 3
    assert L.cluster_usage(units, 3) == pytest.approx({"max_share": 1 / 3, "perplexity": 3.0, "unused": 0})


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="labels.model"):
        load_pretrain_config(RECIPE, ["labels.features=hubert"])
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        load_pretrain_config(RECIPE, ["optim.lrr=1"])


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    cfg = load_pretrain_config(RECIPE, FAST)
    trainer = Pretrainer(cfg, tiny_corpus, out)
    before = trainer.validate()
    result = trainer.fit()
    return out, cfg, before, result


def test_pretraining_lowers_the_masked_loss_and_writes_a_hubert(pretrained):
    out, cfg, before, result = pretrained
    assert result["step"] == 12 and result["final"] == out / "hubert.pt"
    assert result["valid"]["loss_m"] < before["loss_m"] - 0.05
    from score_upstream.models.hubert import load_hubert

    bundle = load_hubert(out / "hubert.pt")
    assert bundle.symbols[0][4:] == [str(i) for i in range(8)]
    assert bundle.extra["pretrain"]["steps"] == 12
    assert bundle.model.label_embs_concat.shape[0] == 8 + 4


def test_resume_gives_the_same_weights(pretrained, tiny_corpus, tmp_path):
    out, cfg, _, _ = pretrained
    half = load_pretrain_config(RECIPE, FAST + ["stop_at=6"])
    Pretrainer(half, tiny_corpus, tmp_path).fit()
    assert not (tmp_path / "hubert.pt").exists()
    with pytest.raises(PretrainError, match="'optim.lr'"):
        Pretrainer(load_pretrain_config(RECIPE, FAST + ["resume=true", "optim.lr=1e-3"]), tiny_corpus, tmp_path).fit()
    Pretrainer(load_pretrain_config(RECIPE, FAST + ["resume=true"]), tiny_corpus, tmp_path).fit()
    a = torch.load(out / "hubert.pt", weights_only=True)["model_weight"]
    b = torch.load(tmp_path / "hubert.pt", weights_only=True)["model_weight"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert len(list(tmp_path.glob("config-*.yaml"))) >= 1


def test_second_iteration_clusters_a_layer_of_the_first(pretrained, tiny_corpus, tmp_path):
    out, _, _, _ = pretrained
    cfg = load_pretrain_config(RECIPE, FAST + ["labels.features=hubert", f"labels.model={out / 'hubert.pt'}",
                                               "labels.layer=2", "optim.total_steps=2", "optim.warmup_steps=0", "valid_every=2"])
    trainer = Pretrainer(cfg, tiny_corpus, tmp_path)
    units = trainer.labels["units"]
    first = torch.load(out / "labels.pt", weights_only=True)["units"]
    assert units.keys() == first.keys()
    assert all(len(units[k]) == len(first[k]) for k in units)  # same frames, other units
    assert any(not torch.equal(units[k], first[k]) for k in units)
    assert trainer.labels["centroids"].shape == (8, 48)


def test_labels_follow_the_content_of_the_clustered_model(pretrained, tiny_corpus, tmp_path, caplog):
    """A retrained model at the same path gets new labels; the same bytes reuse them."""
    import logging
    import shutil

    from score_upstream.models.hubert import new_hubert, save_s3prl, small_model_cfg

    out, _, _, _ = pretrained
    model = tmp_path / "model.pt"
    shutil.copy(out / "hubert.pt", model)
    cfg = load_pretrain_config(RECIPE, FAST + ["labels.features=hubert", f"labels.model={model}", "labels.layer=2"])
    caplog.set_level(logging.INFO, logger="score_upstream.pretrain.trainer")
    first = Pretrainer(cfg, tiny_corpus, tmp_path / "run").labels
    assert Pretrainer(cfg, tiny_corpus, tmp_path / "run").labels["key"] == first["key"]
    assert "reusing" in caplog.text
    caplog.clear()
    save_s3prl(new_hubert(small_model_cfg(), seed=7), model)  # "retrained": same path, other weights
    second = Pretrainer(cfg, tiny_corpus, tmp_path / "run").labels
    assert "made from other inputs" in caplog.text
    assert second["key"]["model_sha256"] != first["key"]["model_sha256"]


def test_an_iteration_can_start_from_the_previous_model(pretrained, tiny_corpus, tmp_path):
    from score_upstream.models.hubert import PREDICTION_HEAD as HEAD
    from score_upstream.models.hubert import load_hubert, new_hubert, save_s3prl, tiny_model_cfg

    out, _, _, _ = pretrained
    prev = load_hubert(out / "hubert.pt").model.state_dict()
    cfg = load_pretrain_config(RECIPE, FAST + ["labels.features=hubert", f"labels.model={out / 'hubert.pt'}",
                                               "labels.layer=1", f"model.init={out / 'hubert.pt'}"])
    trainer = Pretrainer(cfg, tiny_corpus, tmp_path / "warm")
    fresh = Pretrainer(load_pretrain_config(RECIPE, FAST + ["labels.features=hubert", f"labels.model={out / 'hubert.pt'}",
                                                            "labels.layer=1"]), tiny_corpus, tmp_path / "cold")
    state, cold = trainer.model.state_dict(), fresh.model.state_dict()
    body = [k for k in state if not k.startswith(HEAD)]
    assert body and all(torch.equal(state[k], prev[k]) for k in body)  # every weight but the head: the previous model's
    assert all(torch.equal(state[k], cold[k]) for k in state if k.startswith(HEAD))  # the head: a fresh start's

    other = tmp_path / "wide.pt"
    save_s3prl(new_hubert(tiny_model_cfg(encoder_embed_dim=64, encoder_ffn_embed_dim=128)), other)
    with pytest.raises(PretrainError, match=r"model.init=.*wide.pt: not the architecture of this recipe's model"):
        Pretrainer(load_pretrain_config(RECIPE, FAST + [f"model.init={other}"]), tiny_corpus, tmp_path / "bad")
