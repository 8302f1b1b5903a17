"""One run per folder: score-train and score-pretrain refuse a folder holding another run (leaving it byte for
byte as it was), ``--overwrite`` deletes only the run's files and trains, ``resume=true`` continues the run
with its own log cut at the resumed step, and the speech counts carry across a resume."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import score_upstream.training.train as T
from score_upstream.pretrain import trainer as P

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.compat_env]  # also run in the oldest environment

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SCORE_TINY = RECIPES / "score" / "tiny.yaml"
PRETRAIN_TINY = RECIPES / "pretrain" / "tiny.yaml"
FAST = ["data.utterances_per_update=4", "perturb.pitch_method=fast", "progress=false", "optim.warmup_steps=1",
        "save_every=1", "log_every=1"]
PRE_FAST = ["optim.total_steps=2", "optim.warmup_steps=1", "valid_every=1", "save_every=1", "labels.clusters=8",
            "data.batch_crops=3", "data.crop_seconds=1.0", "labels.max_frames=2000"]


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: content and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _log_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _refusal(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_score_train_refuses_another_run_then_overwrite_clears_it(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "X"
    base = [str(SCORE_TINY), "--data", str(tiny_corpus), "--out", str(out), *FAST]
    assert T.main([*base, "optim.total_steps=2"]) == 0
    (out / "notes.txt").write_text("a user's file\n")
    before = _snapshot(out)
    assert {"state-000001.pt", "state-000002.pt", "score_hubert.pt", "train_log.csv", "config.yaml"} <= set(before)
    capsys.readouterr()

    # the same folder, another lr and fewer updates, resume at its default: refused, nothing touched
    assert T.main([*base, "optim.lr=5e-4", "optim.total_steps=1", "optim.warmup_steps=0"]) == 2
    line = _refusal(capsys)
    assert str(out) in line and "state-000002.pt" in line and "score_hubert.pt" in line and "train_log.csv" in line
    assert "resume=true" in line and "--overwrite" in line and "another --out" in line
    assert _snapshot(out) == before
    # resume=auto of a folder whose states are gone but whose final model stays: nothing to continue
    moved = {p: p.read_bytes() for p in out.glob("state-*.pt")}
    for p in moved:
        p.unlink()
    assert T.main([*base, "optim.total_steps=2", "resume=auto"]) == 2
    assert "no state-NNNNNN.pt to resume from" in _refusal(capsys)
    for p, data in moved.items():
        p.write_bytes(data)
    # --overwrite and resume=true contradict each other
    assert T.main([*base, "optim.total_steps=2", "resume=true", "--overwrite"]) == 2
    assert "--overwrite" in _refusal(capsys)

    # --overwrite: the old run's files go (its later state too), the user's file stays, the new run trains
    assert T.main([*base, "optim.lr=5e-4", "optim.total_steps=1", "optim.warmup_steps=0", "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {p.name for p in out.glob("state-*.pt")} == {"state-000001.pt"}
    assert (out / "notes.txt").read_text() == "a user's file\n"
    assert len(list(out.glob("config-*.yaml"))) == 1 and "score_hubert.pt" in names
    assert _log_steps(out / "train_log.csv") == [1]
    raw = torch.load(out / "score_hubert.pt", map_location="cpu", weights_only=True)
    assert raw["score"]["steps"] == 1 and raw["score"]["config"]["optim"]["lr"] == 5e-4


def test_score_train_resume_continues_its_own_log_and_speech_counts(tiny_corpus, tmp_path, capsys, caplog):
    args = [*FAST, "optim.total_steps=3", "keep_checkpoints=3"]
    whole = T.train(SCORE_TINY, tiny_corpus, tmp_path / "a", args)
    out = tmp_path / "b"
    T.train(SCORE_TINY, tiny_corpus, out, [*args, "stop_at=2"])
    assert _log_steps(out / "train_log.csv") == [1, 2]
    # the newest state lost: the run resumes from step 1, its log is cut there and goes on once per step
    (out / "state-000002.pt").unlink()
    state = torch.load(out / "state-000001.pt", weights_only=True)
    del state["input_seconds"]  # a state written before input speech was counted
    from score_upstream.atomic import atomic_save

    atomic_save(state, out / "state-000001.pt")
    with caplog.at_level("WARNING"):
        res = T.train(SCORE_TINY, tiny_corpus, out, [*args, "resume=true"])
    assert "predates the input-speech count" in caplog.text
    assert _log_steps(out / "train_log.csv") == [1, 2, 3]
    first = whole["history"][0]["audio_seconds"]
    assert res["input_speech_hours"] * 3600 == pytest.approx(whole["input_speech_hours"] * 3600 - first, rel=1e-6)
    assert res["view_speech_hours"] == pytest.approx(whole["view_speech_hours"], rel=1e-6)

    # a full resume carries the input count: stop at 2, resume to 3, same hours as the uninterrupted run
    out = tmp_path / "c"
    T.train(SCORE_TINY, tiny_corpus, out, [*args, "stop_at=2"])
    res = T.train(SCORE_TINY, tiny_corpus, out, [*args, "resume=true"])
    assert res["input_speech_hours"] == pytest.approx(whole["input_speech_hours"], rel=1e-9)
    raw = torch.load(out / "score_hubert.pt", map_location="cpu", weights_only=True)["score"]
    assert raw["input_speech_hours"] == pytest.approx(whole["input_speech_hours"], rel=1e-9)
    assert _log_steps(out / "train_log.csv") == [1, 2, 3]


def test_score_pretrain_refuses_overwrites_and_resumes(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "P"
    base = [str(PRETRAIN_TINY), "--data", str(tiny_corpus), "--out", str(out), *PRE_FAST]
    assert P.main([*base, "stop_at=1"]) == 0
    (out / "notes.txt").write_text("kept\n")
    before = _snapshot(out)
    assert {"state-000001.pt", "train_log.csv", "valid_log.csv", "labels.pt"} <= set(before)
    capsys.readouterr()

    assert P.main([*base, "optim.lr=1e-3"]) == 2
    line = _refusal(capsys)
    assert str(out) in line and "state-000001.pt" in line and "resume=true" in line and "--overwrite" in line
    assert _snapshot(out) == before

    # resume=true continues the run to its end, its logs once per step
    assert P.main([*base, "resume=true"]) == 0
    assert (out / "hubert.pt").is_file() and _log_steps(out / "train_log.csv") == [1, 2]
    assert _log_steps(out / "valid_log.csv") == [1, 2]

    # --overwrite: a fresh run; the user's file stays
    assert P.main([*base, "optim.total_steps=1", "optim.warmup_steps=0", "--overwrite"]) == 0
    assert {p.name for p in out.glob("state-*.pt")} == {"state-000001.pt"}
    assert _log_steps(out / "train_log.csv") == [1] and (out / "notes.txt").read_text() == "kept\n"
    assert torch.load(out / "hubert.pt", weights_only=True)["pretrain"]["steps"] == 1
