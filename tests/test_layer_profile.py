"""The layer profile of a pre-trained model (score_upstream/pretrain/profile.py, recipes/pretrain/profile.sh)
and its record in the packaged model (python -m score_upstream.pretrained attach-profile / show)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from score_upstream.pretrain import profile as prof
from score_upstream.qbe.stdlist import STDLIST_NAME, write_stdlist
from score_upstream.qbe.twv import max_twv, read_ground_truth, read_stdlist
from tests.test_recipes import REPO, _error_lines, _run


def _qbe_layer(expdir: Path, layer: int, gt, scores: np.ndarray) -> None:
    out = expdir / "qbe" / "dev" / f"layer{layer}"
    out.mkdir(parents=True)
    write_stdlist(out / STDLIST_NAME, gt.queries, gt.documents, torch.as_tensor(scores))


def _probe(expdir: Path, layer: int, dev: dict[int, float]) -> None:
    for seed, per in dev.items():
        run = expdir / "probe" / f"layer{layer}" / "pr" / f"seed{seed}"
        run.mkdir(parents=True)
        # s3prl prints a dev line per evaluation; the best (lowest) counts
        (run / "train.log").write_text(f"dev per: {per + 0.05}\ntrain loss: 1.0\ndev per: {per}\n")


def _profiled(tmp_path, tiny_corpus, good_layer: int) -> tuple[Path, Path, object]:
    """Layers 0..2 of a 2-layer model: ``good_layer`` separates the dev targets, the others are noise."""
    gt_dir = tiny_corpus / "quesst14Database" / "scoring" / "groundtruth_quesst14_dev"
    gt = read_ground_truth(gt_dir)
    rng = np.random.default_rng(0)
    targets = gt.targets.astype(float)
    expdir = tmp_path / "profile"
    for layer in range(3):
        noise = rng.normal(size=targets.shape)
        _qbe_layer(expdir, layer, gt, 4 * targets + 0.3 * noise if layer == good_layer else noise)
        base = 0.30 if layer == good_layer else 0.45
        _probe(expdir, layer, {s: base + 0.01 * ((s * 7 + layer) % 3) for s in range(4)})
    return expdir, gt_dir, gt


def test_a_profile_best_in_an_upper_layer_beyond_its_interval_is_hubert_like(tmp_path, tiny_corpus):
    from scipy.stats import t as student_t

    expdir, gt_dir, gt = _profiled(tmp_path, tiny_corpus, good_layer=2)
    p = prof.profile(expdir, gt_dir, n_layers=2)
    assert p["qbe"]["best_layer"] == 2 and p["pr"]["best_layer"] == 2 and p["hubert_like"] is True
    assert p["qbe"]["layers"][2]["better"] == "yes" and p["pr"]["layers"][2]["better"] == "yes"
    assert p["qbe"]["n"] == len(gt.queries) and p["pr"]["n"] == 4

    # the PR row re-stated: best dev per seed in %, paired by seed against layer 0, Student t with n - 1 dof
    per = {L: [100 * (0.30 if L == 2 else 0.45) + 1.0 * ((s * 7 + L) % 3) for s in range(4)] for L in (0, 2)}
    d = [b - a for a, b in zip(per[0], per[2])]
    half = student_t.ppf(0.975, 3) * statistics.stdev(d) / math.sqrt(4)
    row = p["pr"]["layers"][2]
    assert row["value"] == pytest.approx(statistics.fmean(per[2]))
    assert row["diff"] == pytest.approx(statistics.fmean(d)) and row["low"] == pytest.approx(statistics.fmean(d) - half)
    # the QbE row: each layer's maxTWV of its stdlist; the difference is new - layer 0
    q = p["qbe"]["layers"]
    assert q[2]["diff"] == pytest.approx(q[2]["value"] - q[0]["value"]) and q[2]["low"] > 0
    layer0 = read_stdlist(expdir / "qbe" / "dev" / "layer0" / STDLIST_NAME, gt).scores
    assert q[0]["value"] == pytest.approx(max_twv(layer0, gt.targets)[0])

    text = prof.render(p)
    assert "| 0 (CNN output) |" in text and "better" in text and "HuBERT-like (both" in text and text.endswith("yes.\n")

    # the runs the recipe asked for, only: a seed or layer folder an earlier run left is not mixed in
    _probe(expdir, 1, {9: 0.01})
    _probe(expdir, 5, {0: 0.01, 1: 0.01})
    asked = prof.profile(expdir, gt_dir, n_layers=2, probe_layers=[0, 1, 2], seeds=[0, 1, 2, 3])
    assert asked["pr"] == p["pr"] and "seed9" not in str(asked) and 5 not in asked["pr"]["layers"]
    with pytest.raises(prof.ProfileError, match=r"layer0/pr/seed7/train.log: no 'dev per' line"):
        prof.profile(expdir, gt_dir, n_layers=2, probe_layers=[0, 2], seeds=[0, 7])


def test_a_profile_best_at_the_cnn_output_or_in_a_lower_layer_is_not(tmp_path, tiny_corpus):
    expdir, gt_dir, _ = _profiled(tmp_path, tiny_corpus, good_layer=0)
    p = prof.profile(expdir, gt_dir, n_layers=2)
    assert p["qbe"]["best_layer"] == 0 and p["pr"]["best_layer"] == 0 and p["hubert_like"] is False
    assert p["qbe"]["layers"][2]["better"] == "worse"

    low, _, _ = _profiled(tmp_path / "low", tiny_corpus, good_layer=1)
    p = prof.profile(low, gt_dir, n_layers=2)  # layer 1 of 2 is not in the upper half
    assert p["qbe"]["best_layer"] == 1 and p["qbe"]["beats_cnn_output"] and not p["qbe"]["upper_half"]
    assert p["hubert_like"] is False

    with pytest.raises(prof.ProfileError, match="run recipes/pretrain/profile.sh first"):
        prof.profile(tmp_path / "empty", gt_dir)


def _packaged(tmp_path: Path) -> Path:
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg
    from score_upstream.pretrained import package

    src = tmp_path / "hubert.pt"
    save_s3prl(new_hubert(tiny_model_cfg(), seed=0), src)
    state = torch.load(src, map_location="cpu", weights_only=True)
    state["pretrain"] = {"steps": 10, "config": {"seed": 0}}
    torch.save(state, src)
    return package(src, tmp_path / "packaged.pt", recipe="recipes/pretrain/run.sh --recipe test")


def test_the_profile_is_stored_in_the_model_it_measured_and_shown(tmp_path, capsys):
    from score_upstream.pretrained import PretrainedError, attach_profile, main, provenance, weights_digest

    pkg = _packaged(tmp_path)
    identity = prof.checkpoint_identity(pkg)
    digest = identity["weights_sha256"]
    p = {"hubert_like": True, "n_layers": 12, **identity, "qbe": {"best_layer": 9}}
    (tmp_path / "profile.json").write_text(json.dumps(p))
    assert main(["attach-profile", str(pkg), str(tmp_path / "profile.json")]) == 0
    assert "layer profile attached (HuBERT-like: yes)" in capsys.readouterr().out
    assert provenance(pkg)["profile"] == p
    # storing it rewrote the file, not the weights: the profile still names them
    assert weights_digest(torch.load(pkg, weights_only=True)) == digest
    assert json.loads(pkg.with_suffix(".json").read_text())["profile"]["qbe"]["best_layer"] == 9
    assert main(["show", str(pkg)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["profile"]["weights_sha256"] == digest and shown["package"]["recipe"].endswith("--recipe test")

    other = dict(p, weights_sha256="0" * 64)
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(PretrainedError, match="measured other weights.*recipes/pretrain/profile.sh --ckpt"):
        attach_profile(pkg, tmp_path / "other.json")
    assert provenance(pkg)["profile"] == p  # nothing was written


def test_profile_recipe_measures_every_layer_on_dev(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    exp = tmp_path / "prof"
    args = [REPO / "recipes/pretrain/profile.sh", "--ckpt", tiny_hubert_ckpt, "--expdir", exp, "--data", tiny_corpus,
            "--seeds", "0 1", "--jobs", "2", "--pr-max-steps", "4", "--layers", "0 12"]
    proc = _run(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = json.loads((exp / "profile.json").read_text())
    assert sorted(map(int, p["qbe"]["layers"])) == list(range(13)) and sorted(map(int, p["pr"]["layers"])) == [0, 12]
    assert p["n_layers"] == 12 and p["pr"]["n"] == 2 and len(p["pr"]["layers"]["12"]["seeds"]) == 2
    assert p["ckpt_sha256"] == prof.checkpoint_identity(tiny_hubert_ckpt)["ckpt_sha256"]
    assert not (exp / "qbe" / "eval").exists()  # dev only: the eval queries are never searched
    assert "| 12 |" in (exp / "profile.md").read_text() and not (exp / "feature-cache").exists()
    # a rerun finds every measurement done for this checkpoint
    again = _run(args)
    assert again.returncode == 0 and "skip" in again.stderr.lower()

    bad = _run([REPO / "recipes/pretrain/profile.sh", "--ckpt", tiny_hubert_ckpt, "--expdir", exp, "--data", tiny_corpus,
                "--layers", "13"])
    assert _error_lines(bad) == [f"error: profile: --layers: '13' is not a hidden state of {tiny_hubert_ckpt} (0..12)"]
