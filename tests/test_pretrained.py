"""The shipped pre-trained model: its provenance, the same hidden states through every loader, and a
cheap QbE probe on speech it never heard where it must beat a random model of the same architecture."""

from __future__ import annotations

import pytest
import torch

from score_upstream.pretrained import SMALL_SYNTH, provenance

ATOL = 1e-4


def test_provenance_says_how_it_was_made():
    info = provenance()
    pre, pkg = info["pretrain"], info["package"]
    assert pre["corpus"]["synth_size"] == "pretrain" and ["demo", 0] in pre["corpus"]["synth_disjoint_from"]
    assert pre["config"]["model"]["arch"] == "small" and pre["steps"] == pre["config"]["optim"]["total_steps"]
    assert pre["valid"]["acc_m"] > 0.1  # chance is ~1/100
    assert pkg["recipe"].startswith("recipes/pretrain/run.sh") and pkg["weights"] == "float16"
    assert len(pkg["source_sha256"]) == 64 and pkg["commit"]


def test_same_hidden_states_through_every_loader(tmp_path):
    import score_upstream

    score_upstream.register()
    import s3prl.hub
    from transformers import HubertModel

    from score_upstream.models.hubert import load_hubert, save_hf

    gen = torch.Generator().manual_seed(3)
    wav = 0.1 * torch.randn(16000, generator=gen)
    ours = s3prl.hub.score_hubert(ckpt=str(SMALL_SYNTH)).eval()
    stock = s3prl.hub.hubert_local(ckpt=str(SMALL_SYNTH)).eval()
    hf = HubertModel.from_pretrained(save_hf(load_hubert(SMALL_SYNTH), tmp_path / "hf")).eval()
    with torch.no_grad():
        a = ours([wav])["hidden_states"]
        b = stock([wav])["hidden_states"]
        out = hf(wav[None], output_hidden_states=True)
    c = tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)
    assert len(a) == len(b) == len(c) == 7
    for x, y, z in zip(a, b, c):
        assert (x - y).abs().max() < ATOL and (x - z).abs().max() < ATOL


def _best_dev_mtwv(ckpt, corpus, out) -> float:
    from score_upstream.qbe.quesst import main as score_qbe
    from score_upstream.qbe.twv import score_twv

    quesst = corpus / "quesst14Database"
    assert score_qbe(["--upstream", "score_hubert", "--ckpt", str(ckpt), "--quesst-root", str(quesst), "--split", "dev",
                      "--layers", "all", "--device", "cpu", "--out", str(out)]) == 0
    gt = quesst / "scoring" / "groundtruth_quesst14_dev"
    return max(score_twv(d, gt).max_twv for d in sorted(out.glob("layer*")))


def test_beats_a_random_model_on_a_qbe_probe(tiny_corpus, tmp_path):
    from score_upstream.models.hubert import cluster_symbols, load_hubert, new_hubert, save_s3prl

    shipped = load_hubert(SMALL_SYNTH)
    random_path = save_s3prl(new_hubert(shipped.model_cfg, shipped.task_cfg, seed=0, symbols=cluster_symbols(100)),
                             tmp_path / "random.pt")
    trained = _best_dev_mtwv(SMALL_SYNTH, tiny_corpus, tmp_path / "shipped")
    untrained = _best_dev_mtwv(random_path, tiny_corpus, tmp_path / "random")
    assert trained > untrained + 0.2, (trained, untrained)
