"""score-train on a corpus with bad files, resume checks and the kept configs.

A corpus with short, empty, corrupt, NaN, wrong-rate, stereo and very loud files (plus one that cannot
be perturbed and one that cannot be encoded) trains to the end: each bad file is reported once with
its path and skipped; too-short, empty and wrong-rate files are rejected at the manifest with a count.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import score_upstream.training.train as T
from score_upstream.augment.perturb import PerturbError, ScorePerturbation
from score_upstream.training.model import ScoreModel

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "score" / "tiny.yaml"
FAST = ["perturb.pitch_method=fast", "progress=false"]
PERTURB_FAILS, ENCODE_FAILS = 23_456, 21_234  # lengths (samples) of the two files the test makes fail


pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.compat_env]  # compat_env: also run in the oldest supported environment (README)


@pytest.fixture()
def bad_corpus(tiny_corpus, tmp_path) -> tuple[Path, dict[str, Path]]:
    """6 good utterances of the tiny corpus plus one file of each kind of trouble."""
    src = sorted((tiny_corpus / "LibriSpeech" / "train-clean-100").glob("*/*/*.flac"))[:6]
    chapter = tmp_path / "LibriSpeech" / "train-clean-100" / "9000" / "1"
    chapter.mkdir(parents=True)
    for k, f in enumerate(src):
        shutil.copy(f, chapter / f"9000-1-{k:04d}.flac")
    good, _ = sf.read(str(src[0]), dtype="float32")
    rng = np.random.default_rng(0)
    bad = {name: chapter / f"9000-1-{name}.flac" for name in
           ("short", "empty", "corrupt", "nan", "rate", "stereo", "loud", "perturb", "encode")}
    sf.write(str(bad["short"]), good[:100], 16000, subtype="PCM_16")
    sf.write(str(bad["empty"]), np.zeros(0, np.float32), 16000, subtype="PCM_16")
    bad["corrupt"].write_bytes(src[1].read_bytes()[:64] + b"\x00garbage" * 400)  # header survives
    nan = 0.1 * rng.standard_normal(16000).astype(np.float32)
    nan[5000:5100] = np.nan
    sf.write(str(bad["nan"]), nan, 16000, format="WAV", subtype="FLOAT")  # FLAC holds no NaN: a float WAV
    sf.write(str(bad["rate"]), good[:8000], 8000, subtype="PCM_16")
    sf.write(str(bad["stereo"]), np.stack([good, 0.5 * good[::-1]], axis=1), 16000, subtype="PCM_16")
    sf.write(str(bad["loud"]), np.clip(good * 1000.0, -1, 1), 16000, subtype="PCM_16")  # clipped square-ish
    sf.write(str(bad["perturb"]), 0.1 * rng.standard_normal(PERTURB_FAILS).astype(np.float32), 16000,
             subtype="PCM_16")
    sf.write(str(bad["encode"]), 0.1 * rng.standard_normal(ENCODE_FAILS).astype(np.float32), 16000,
             subtype="PCM_16")
    return tmp_path, bad


class _FailingPerturbation(ScorePerturbation):
    """The recipe's perturbation, failing on the file of ``PERTURB_FAILS`` samples (alone or in a batch)."""

    def __call__(self, wav, generator):
        if wav.numel() == PERTURB_FAILS:
            raise PerturbError("injected perturbation failure")
        return super().__call__(wav, generator)

    def batch(self, wavs, lengths, generator):
        if PERTURB_FAILS in lengths.tolist():
            raise PerturbError("injected perturbation failure")
        return super().batch(wavs, lengths, generator)


@pytest.fixture()
def failing_encoder(monkeypatch):
    encode = ScoreModel.encode

    def flaky(self, hubert, wav, lengths):
        if ENCODE_FAILS in lengths.tolist():  # one side of every pair is the original
            raise RuntimeError("injected encoder failure")
        return encode(self, hubert, wav, lengths)

    monkeypatch.setattr(ScoreModel, "encode", flaky)


def _reports(caplog, path: Path) -> int:
    return sum(str(path) in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
               and "skipping" in r.getMessage() and "skipped during training" not in r.getMessage())


@pytest.mark.parametrize("on_device", [False, True])
def test_bad_files_are_reported_once_and_training_ends(bad_corpus, failing_encoder, tmp_path, caplog, on_device):
    root, bad = bad_corpus
    caplog.set_level(logging.WARNING)
    steps = 6 if not on_device else 3  # 12 usable files, 4 per update: 2 epochs (1 on the device path)
    cfg = T.load_config(RECIPE, [f"optim.total_steps={steps}", "optim.warmup_steps=1", "data.utterances_per_update=4",
                                 "data.max_failed_fraction=0.5", f"perturb.on_device={str(on_device).lower()}",
                                 *FAST])
    perturbation = _FailingPerturbation(pitch_method="fast")
    res = T.Trainer(cfg, root, tmp_path / "run", perturbation=perturbation).fit()

    assert res["step"] == steps and res["final"] is not None
    assert all(np.isfinite(h["loss"]) for h in res["history"])
    skipped = dict(res["skipped_manifest"])
    assert skipped.pop("too_short") == 1 and skipped.pop("sample_rate") == 1
    assert skipped in ({"empty": 1}, {"unreadable": 1})  # a zero-sample FLAC may not even open
    failed = {str(bad[k]) for k in ("corrupt", "nan", "perturb", "encode")}
    assert set(res["failed_files"]) <= failed
    if not on_device:  # two epochs: every bad file was drawn, some twice
        assert set(res["failed_files"]) == failed
    for name, path in bad.items():
        expected = 1 if str(path) in res["failed_files"] or name in ("short", "empty", "rate") else 0
        assert _reports(caplog, path) == expected, (name, [r.getMessage() for r in caplog.records])
    raw = torch.load(tmp_path / "run" / "score_hubert.pt", weights_only=True)
    assert raw["score"]["unreadable_files"] == len(res["failed_files"])


def test_too_many_bad_files_stop_the_run_with_a_summary(bad_corpus, failing_encoder, tmp_path):
    root, bad = bad_corpus
    cfg = T.load_config(RECIPE, ["optim.total_steps=6", "optim.warmup_steps=1", "data.utterances_per_update=4",
                                 "data.max_failed_fraction=0.1", *FAST])
    with pytest.raises(T.TrainError, match="data.max_failed_fraction=0.1") as err:
        T.Trainer(cfg, root, tmp_path / "run", perturbation=_FailingPerturbation(pitch_method="fast")).fit()
    text = str(err.value)
    assert "of 12 utterances" in text and "could not be loaded, perturbed or encoded" in text
    assert any(str(bad[k]) in text for k in ("corrupt", "nan", "perturb", "encode"))


def test_resume_refuses_a_changed_recipe_key_and_keeps_every_config(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    base = [str(RECIPE), "--data", str(tiny_corpus), "--out", str(out), "optim.total_steps=2", "optim.warmup_steps=1",
            "data.utterances_per_update=2", *FAST]
    assert T.main([*base, "stop_at=1"]) == 0
    assert T.main([*base, "resume=true", "optim.lr=5e-3"]) == 2
    err = capsys.readouterr().err
    assert "'optim.lr'" in err and "--allow-config-change" in err and "Traceback" not in err
    assert T.main([*base, "resume=true", "loss.gamma=0.5", "optim.lr=5e-3", "log_every=1"]) == 2
    err = capsys.readouterr().err
    assert "'loss.gamma'" in err and "optim.lr" in err and "log_every" not in err
    # keys that only drive the run may change; an explicit flag allows a recipe change
    assert T.main([*base, "resume=true", "optim.lr=5e-3", "log_every=1", "--allow-config-change"]) == 0
    assert (out / "score_hubert.pt").is_file()
    kept = sorted(out.glob("config-*.yaml"))
    assert len(kept) == 2  # the two starts that ran; refused starts write nothing
    assert "lr: 0.001" in kept[0].read_text() and "lr: 0.005" in kept[1].read_text()
    assert (out / "config.yaml").read_text() == kept[1].read_text()


def test_spin_drops_a_failing_utterance_and_keeps_its_sinkhorn_batch_whole(bad_corpus, failing_encoder, tmp_path,
                                                                           monkeypatch, caplog):
    from score_upstream.training.methods.spin import Spin

    root, bad = bad_corpus
    for name in ("corrupt", "nan", "perturb"):  # only the file that cannot be encoded stays bad
        bad[name].unlink()
    batches = []  # utterances of every batch SPIN trained on (with gradient)
    pair_losses = Spin.pair_losses

    def recording(self, model, mb, *args):
        out = pair_losses(self, model, mb, *args)
        if torch.is_grad_enabled():
            batches.append(list(mb.indices))
        return out

    monkeypatch.setattr(Spin, "pair_losses", recording)
    caplog.set_level(logging.WARNING)
    recipe = RECIPE.parents[1] / "spin" / "tiny.yaml"
    cfg = T.load_config(recipe, ["optim.total_steps=3", "optim.warmup_steps=1", "data.utterances_per_update=4",
                                 "data.max_failed_fraction=0.5", "progress=false"])
    trainer = T.Trainer(cfg, root, tmp_path / "run")
    encode_fails = next(i for i, u in enumerate(trainer.utts) if u.path == str(bad["encode"]))
    res = trainer.fit()
    assert res["step"] == 3 and res["failed_files"] == [str(bad["encode"])]
    assert _reports(caplog, bad["encode"]) == 1
    # one Sinkhorn batch per update: 4 utterances, or 3 where the failing one was drawn (never split to 1)
    assert len(batches) == 3 and all(len(b) == 4 or (len(b) == 3 and encode_fails not in b) for b in batches)
    assert any(len(b) == 3 for b in batches)
