"""``score-train --plan`` and the input-speech count: the plan's numbers against a hand computation on a
LibriSpeech-layout corpus whose utterances average 12.7 s, the SCORE / SPIN ratio of the paper ("1/3 of
the processed speech"), and the input speech a tiny training records in its checkpoint and log."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import score_upstream.training.train as T
from score_upstream.training.config import load_config
from score_upstream.training.data import epoch_order, load_manifest
from score_upstream.training.methods import INPUT_SPEECH
from score_upstream.training.plan import make_plan

pytestmark = pytest.mark.compat_env  # FLAC headers and the checkpoint's score entry; also the oldest environment

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SR = 16000


@pytest.fixture(scope="module")
def corpus_127(tmp_path_factory) -> tuple[Path, list[int]]:
    """40 silent FLAC files in LibriSpeech's layout (no transcripts: the trainer's data code reads only the
    audio headers), 4.7 ... 20.7 s, mean 12.7 s: ``(root, samples per file in manifest order)``."""
    root = tmp_path_factory.mktemp("ls127")
    samples = [int(round(s * SR)) for s in np.linspace(4.7, 20.7, 40)]
    paths = []
    for i, n in enumerate(samples):
        d = root / "LibriSpeech" / "train-clean-100" / str(100 + i % 4) / "7"
        d.mkdir(parents=True, exist_ok=True)
        paths.append(d / f"{100 + i % 4}-7-{i:04d}.flac")
        sf.write(paths[-1], np.zeros(n, dtype=np.int16), SR, subtype="PCM_16")
    order = sorted(range(len(paths)), key=lambda i: str(paths[i]))  # the manifest sorts the paths
    return root, [samples[i] for i in order]


def _plan(recipe: str, root: Path, overrides=()) -> dict:
    return make_plan(load_config(RECIPES / recipe, list(overrides), need_model=False), root)


def test_plan_numbers_match_a_hand_computation(corpus_127):
    root, samples = corpus_127
    mean = sum(samples) / len(samples) / SR
    assert mean == pytest.approx(12.7, abs=1e-4)
    p = _plan("score/hubert_base.yaml", root)
    assert (p["updates"], p["utterances_per_update"], p["utterances"]) == (3600, 8, 40)
    assert p["mean_seconds"] == pytest.approx(mean, rel=1e-12)
    # 3,600 x 8 = 28,800 draws = 720 whole passes over the 40 files: exactly updates x 8 x mean
    assert p["input_speech_hours"] == pytest.approx(3600 * 8 * mean / 3600, rel=1e-12)
    assert p["input_speech_hours"] == pytest.approx(101.6, abs=0.01) and p["epochs"] == pytest.approx(720)
    # the student's view: the original or the 1/f-long speed-perturbed view, 50/50
    ratio = (1 + (1 / 0.9 + 1 + 1 / 1.1) / 3) / 2
    assert p["view_speech_hours"] == pytest.approx(p["input_speech_hours"] * ratio, rel=1e-12)

    # 7 updates x 8 = 56 draws: all 40 files once, then the first 16 of the second epoch's order
    p = _plan("score/hubert_base.yaml", root, ["optim.total_steps=7", "optim.warmup_steps=1"])
    second = epoch_order(samples, 8, 0, 1)[:16]
    assert p["input_speech_hours"] * 3600 * SR == pytest.approx(sum(samples) + sum(samples[i] for i in second), abs=1e-3)
    assert p["input_speech_hours_at_mean"] == pytest.approx(7 * 8 * mean / 3600, rel=1e-12)


def test_score_draws_about_a_third_of_spins_input_speech(corpus_127, capsys):
    root, samples = corpus_127
    t0 = time.perf_counter()
    assert T.main([str(RECIPES / "score" / "hubert_base.yaml"), "--data", str(root), "--plan"]) == 0
    score_out = capsys.readouterr().out
    assert T.main([str(RECIPES / "spin" / "hubert_base.yaml"), "--data", str(root), "--plan"]) == 0
    spin_out = capsys.readouterr().out
    assert time.perf_counter() - t0 < 30  # no model is built or loaded (model.init stays empty)
    assert "3600 (optim.total_steps), 8 utterances" in score_out and "input speech:  101.60 h" in score_out
    assert "5000 (optim.total_steps), packed to 256 s" in spin_out and "5000 x 256 s = 355.56 h nominal" in spin_out
    score, spin = _plan("score/hubert_base.yaml", root), _plan("spin/hubert_base.yaml", root)
    # SPIN's batching: the longest utterances, cropped to 17 s, packed up to 256 s; here one pack per epoch
    # (the rest, an incomplete pack, is left out), 5,000 times
    cropped = sorted((min(n, 17 * SR) for n in samples), reverse=True)
    pack = max(k for k in range(len(cropped) + 1) if sum(cropped[:k]) <= 256 * SR)
    assert spin["input_speech_hours"] == pytest.approx(5000 * sum(cropped[:pack]) / SR / 3600, rel=1e-12)
    assert 0.25 <= score["input_speech_hours"] / spin["input_speech_hours"] <= 0.32
    # views through the trainable model: SPIN both (~706 h), SCORE the student's: about a seventh
    assert spin["view_speech_hours"] == pytest.approx(2 * spin["input_speech_hours"])
    assert 0.13 <= score["view_speech_hours"] / spin["view_speech_hours"] <= 0.16


def test_plan_needs_no_out_and_fails_in_one_line(corpus_127, tmp_path, capsys):
    root, _ = corpus_127
    assert T.main([str(RECIPES / "score" / "hubert_base.yaml"), "--data", str(tmp_path / "none"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "none" in err and "Traceback" not in err
    with pytest.raises(SystemExit):  # neither --out nor --plan
        T.main([str(RECIPES / "score" / "hubert_base.yaml"), "--data", str(root)])


@pytest.mark.usefixtures("one_thread")
def test_tiny_training_records_the_input_speech_it_drew(tiny_corpus, tmp_path):
    args = ["optim.total_steps=3", "optim.warmup_steps=1", "data.utterances_per_update=4", "perturb.pitch_method=fast",
            "progress=false", "log_every=1"]
    recipe = RECIPES / "score" / "tiny.yaml"
    res = T.train(recipe, tiny_corpus, tmp_path / "run", args)
    plan = make_plan(load_config(recipe, args), tiny_corpus)
    cfg = load_config(recipe, args)
    utts, _ = load_manifest(tiny_corpus, cfg.data.subsets, SR, None, plan["min_samples"])
    assert plan["utterances"] == len(utts) == 24
    # by hand: 3 updates x 4 utterances = the first 12 of epoch 0's order
    drawn = sum(utts[i].num_samples for i in epoch_order([u.num_samples for u in utts], 4, 0, 0)[:12]) / SR
    assert sum(h["audio_seconds"] for h in res["history"]) == pytest.approx(drawn, rel=1e-6)
    score = torch.load(tmp_path / "run" / "score_hubert.pt", map_location="cpu", weights_only=True)["score"]
    assert score["input_speech_hours"] * 3600 == pytest.approx(drawn, rel=1e-6)
    assert plan["input_speech_hours"] == pytest.approx(score["input_speech_hours"], rel=1e-6)
    assert score["input_speech"] == INPUT_SPEECH and "student" in score["view_speech"]
    # the view count under its new name and its old one, the same value
    state = torch.load(T.latest_state(tmp_path / "run"), weights_only=True)
    assert score["view_speech_hours"] == score["processed_speech_hours"] == pytest.approx(state["speech_seconds"] / 3600)
    assert state["input_seconds"] == pytest.approx(drawn, rel=1e-6)
    with open(tmp_path / "run" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert float(rows[-1]["input_speech_hours"]) == pytest.approx(drawn / 3600, abs=1e-6)
    assert float(rows[-1]["view_speech_hours"]) == pytest.approx(score["view_speech_hours"], abs=1e-6)
