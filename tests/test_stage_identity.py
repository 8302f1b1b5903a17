"""A recipe stage is identified by the content of its inputs (score_upstream.stages), never by path text.

The recipe runs use the tiny synthetic corpus, two tiny random HuBERTs and a few PR updates; the hash cache,
the stage decisions and the manifest readers are checked directly on small files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from score_upstream import runs, stages
from tests.test_recipes import RECIPES, _run


@pytest.fixture
def hash_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return stages.cache_file()


# ---------------------------------------------------------------- content hashes


def test_hash_cache_reads_a_file_once_and_rehashes_changed_bytes(tmp_path, hash_cache):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"a" * 1000)
    truth = hashlib.sha256(b"a" * 1000).hexdigest()
    assert stages.file_sha256(ckpt) == truth
    cache = json.loads(hash_cache.read_text())
    assert cache[str(ckpt.resolve())]["sha256"] == truth
    # plant another digest under the same stat record: a second call that returns it did not read the file
    cache[str(ckpt.resolve())]["sha256"] = "0" * 64
    hash_cache.write_text(json.dumps(cache))
    assert stages.file_sha256(ckpt) == "0" * 64
    # a retrained file of the same size at the same path: new bytes, new mtime
    ckpt.write_bytes(b"b" * 1000)
    st = ckpt.stat()
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert stages.file_sha256(ckpt) == hashlib.sha256(b"b" * 1000).hexdigest()
    # a cache another process left broken is rebuilt, never an error
    hash_cache.write_text("{not json")
    assert stages.file_sha256(ckpt) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert json.loads(hash_cache.read_text())[str(ckpt.resolve())]["sha256"] == hashlib.sha256(b"b" * 1000).hexdigest()


def test_tree_fingerprint_follows_files_not_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.flac").write_bytes(b"12345")
    first = stages.tree_fingerprint(tmp_path)
    assert str(tmp_path.resolve()) in first and "1 files, 5 bytes" in first
    (tmp_path / "a" / "y.flac").write_bytes(b"1")
    assert stages.tree_fingerprint(tmp_path) != first


# ---------------------------------------------------------------- stage decisions


def _check(directory: Path, inputs: dict, **kw):
    return stages.check(directory, 2, "train", inputs, [directory / "out"], parent=directory.parent, **kw)


def _finish(directory: Path, n: int = 2) -> None:
    (directory / f".stage{n}.inprogress").rename(directory / f".stage{n}.done")


def test_check_skips_resumes_and_clears_with_a_reason(tmp_path, hash_cache):
    run = tmp_path / "seed0"
    ckpt = tmp_path / "a.pt"
    ckpt.write_bytes(b"weights A")
    first = {"upstream checkpoint": stages.describe_input("file", "", str(ckpt)), "lr": "1e-2"}
    assert _check(run, first) == ("run", "")  # stage 1 is missing: runs, clears nothing
    (tmp_path / ".stage1.done").write_text(json.dumps({"key": "k1"}))
    assert _check(run, first) == ("run", "inputs changed (stage 1 missing -> k1): rerunning")
    (run / "out").mkdir()
    (run / "out" / "states-30.ckpt").write_text("partial")
    assert _check(run, first) == ("resume", "resuming an interrupted run made from the same inputs")
    assert (run / "out" / "states-30.ckpt").is_file()
    _finish(run)
    assert _check(run, first) == ("skip", "")
    (run / ".stage3.done").write_text("{}")
    ckpt.write_bytes(b"weights B")  # the same path, other bytes
    second = {**first, "upstream checkpoint": stages.describe_input("file", "", str(ckpt))}
    action, why = _check(run, second)
    old, new = first["upstream checkpoint"][7:15], second["upstream checkpoint"][7:15]
    assert action == "run" and why == f"inputs changed (upstream checkpoint content {old}.. -> {new}..): clearing {run / 'out'} and rerunning"
    assert not (run / "out").exists() and not (run / ".stage3.done").exists()
    marker = json.loads((run / ".stage2.inprogress").read_text())
    assert marker["inputs"]["stage 1"] == "k1" and marker["what"] == "train"
    _finish(run)
    (run / "out").mkdir()
    assert _check(run, second, force=True)[1].startswith("--force true: clearing")
    (run / "out").mkdir()
    _finish(run)
    (run / ".stage2.done").write_text("train (seed 0): a.pt -> seed0\n")  # a marker from before keys
    assert "no record of the inputs" in _check(run, second)[1]
    with pytest.raises(stages.StageError, match="inside the stage's folder"):
        stages.check(run, 2, "train", second, [tmp_path], parent=tmp_path)


def test_changes_lists_only_the_overrides_that_differ():
    old = {"settings": "config.optimizer.lr=1e-2,,config.runner.total_steps=20", "seed": "0"}
    new = {"settings": "config.optimizer.lr=5e-3,,config.runner.total_steps=20", "seed": "0"}
    assert stages.changes(old, new) == "settings config.optimizer.lr=1e-2 -> config.optimizer.lr=5e-3"


# ---------------------------------------------------------------- manifests and the readers


def _seed_run(task: Path, seed: int, per: float) -> None:
    """A finished seed folder as the recipe leaves it: test log and markers of stages 2-4."""
    run = task / f"seed{seed}"
    run.mkdir(parents=True)
    (run / "test.log").write_text(f"test loss: 1.0\ntest per: {per}\n")
    for n in (2, 3, 4):
        stages.check(run, n, f"stage {n}", {"seed": str(seed), "per": str(per)}, [], parent=task)
        _finish(run, n)


def test_readers_take_the_manifest_seeds_and_warn_about_strays(tmp_path, caplog, hash_cache):
    from score_upstream.report.paired import compare_models
    from score_upstream.report.results import read_experiment

    for name, pers in (("base", (0.50, 0.52, 0.90)), ("new", (0.40, 0.43, 0.10))):
        task = tmp_path / name / "pr"
        task.mkdir(parents=True)
        (task / ".stage1.done").write_text(json.dumps({"key": "data"}))
        for seed, per in enumerate(pers):
            _seed_run(task, seed, per)
        with caplog.at_level(logging.WARNING):
            caplog.clear()
            assert read_experiment(tmp_path / name).runs["per"] == pytest.approx({0: 100 * pers[0], 1: 100 * pers[1], 2: 100 * pers[2]})
        assert "no manifest.json" in caplog.text and "seed0, seed1, seed2" in caplog.text  # old folders: all seeds
        runs.write_manifest(task, "pr", [0, 1], 4)  # the last run had seeds 0 and 1; seed2 is an older run's
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        row = read_experiment(tmp_path / "new")
        _, diffs = compare_models(tmp_path / "base", tmp_path / "new", None)
    assert row.runs["per"] == pytest.approx({0: 40.0, 1: 43.0}) and row.per == pytest.approx(41.5)
    assert [d.method for d in diffs] == ["seeds (n=2, t)"] and diffs[0].diff == pytest.approx(-9.5)
    strays = [r.getMessage() for r in caplog.records if "not from the last run" in r.getMessage()]
    assert strays and all("seed2" in m and "lists seeds 0 1" in m for m in strays)
    shutil.rmtree(tmp_path / "new" / "pr" / "seed1")  # a listed seed whose folder went away
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert read_experiment(tmp_path / "new").runs["per"] == pytest.approx({0: 40.0})
    assert "seed1 was redone or removed after manifest.json was written" in caplog.text
    (tmp_path / "new" / "pr" / ".stage1.done").write_text(json.dumps({"key": "other data"}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert "per" not in read_experiment(tmp_path / "new").runs
    assert "seed0 was made before the data preparation was redone" in caplog.text


# ---------------------------------------------------------------- the PR recipe, end to end

PR_FAST = ["--device", "cpu", "--max-steps", "10", "--batch-size", "2", "--num-workers", "0", "--seeds", "0"]


def _pr(corpus: Path, ckpt: Path, exp: Path, *extra: str) -> tuple[str, float]:
    proc = _run([RECIPES / "pr.sh", "--upstream", "hubert_local", "--ckpt", ckpt, "--librispeech",
                 corpus / "LibriSpeech", "--expdir", exp, *PR_FAST, *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr, json.loads((exp / "pr" / "seed0" / "result.json").read_text())["value"]


def _trained_from(run: Path) -> str:
    import torch

    return torch.load(run / "dev-best.ckpt", map_location="cpu", weights_only=False)["Args"].upstream_ckpt


@pytest.mark.compat_env
def test_pr_reruns_when_checkpoint_bytes_or_settings_change(tiny_corpus, tiny_hubert_ckpt, tmp_path, monkeypatch):
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the recipes' hash cache
    exp, run = tmp_path / "exp", tmp_path / "exp" / "pr" / "seed0"
    a = tmp_path / "a.pt"
    shutil.copy(tiny_hubert_ckpt, a)
    b = tmp_path / "b.pt"
    save_s3prl(new_hubert(tiny_model_cfg(), seed=1), b)

    log_a, per_a = _pr(tiny_corpus, a, exp, "--lr", "1e-2")
    log_b, per_b = _pr(tiny_corpus, b, exp, "--lr", "1e-2")
    assert "Stage 2: inputs changed (upstream checkpoint content" in log_b and f"clearing {run} and rerunning" in log_b
    assert "Resume from" not in (run / "train.log").read_text()  # trained from scratch, not from A's states
    assert per_b != per_a and _trained_from(run) == str(b)

    same, per_same = _pr(tiny_corpus, b, exp, "--lr", "1e-2")
    assert same.count("(done, skipping") == 4 and per_same == per_b
    assert json.loads((exp / "pr" / "manifest.json").read_text())["seeds"] == [0]

    shutil.copy(a, b)  # "retrained": other bytes at the same path
    log_c, per_c = _pr(tiny_corpus, b, exp, "--lr", "1e-2")
    assert "Stage 2: inputs changed (upstream checkpoint content" in log_c and "Stage 1: data preparation" in log_c
    assert per_c == pytest.approx(per_a)  # A's bytes, A's settings: A's result

    log_d = _run([RECIPES / "pr.sh", "--upstream", "hubert_local", "--ckpt", b, "--librispeech",
                  tiny_corpus / "LibriSpeech", "--expdir", exp, *PR_FAST, "--lr", "5e-3", "--stop-stage", "2"])
    assert log_d.returncode == 0, log_d.stderr[-3000:]
    assert "Stage 2: inputs changed (settings config.optimizer.lr=1e-2 -> config.optimizer.lr=5e-3)" in log_d.stderr
    assert not (run / "result.json").exists()  # the old lr's result went with its folder


@pytest.mark.compat_env
def test_qbe_reruns_its_searches_for_other_checkpoint_bytes(tiny_corpus, tiny_hubert_ckpt, tmp_path, monkeypatch):
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ckpt, exp = tmp_path / "m.pt", tmp_path / "exp"
    shutil.copy(tiny_hubert_ckpt, ckpt)
    args = [RECIPES / "qbe.sh", "--upstream", "hubert_local", "--ckpt", ckpt, "--quesst-root",
            tiny_corpus / "quesst14Database", "--expdir", exp, "--device", "cpu", "--layer", "last", "--official", "false"]
    first = _run(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _run(args).stderr.count("(done, skipping") == 4
    save_s3prl(new_hubert(tiny_model_cfg(), seed=1), ckpt)  # retrained in place
    second = _run(args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("(done, skipping") == 1  # the QUESST tree did not change: stage 1 only
    why = {n: next(line for line in second.stderr.splitlines() if f"Stage {n}: inputs changed (" in line) for n in (2, 3, 4)}
    assert "(upstream checkpoint content " in why[2] and f"clearing {exp / 'qbe' / 'dev'}" in why[2]
    assert "(stage 2 " in why[3] and "; upstream checkpoint content " in why[3]  # eval reads the checkpoint too
    assert "(stage 2 " in why[4] and "stage 3 " in why[4]
    third = _run([*args[:-4], "--layer", "0", "--official", "false", "--stop-stage", "2"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"Stage 2: inputs changed (layer last -> 0): clearing {exp / 'qbe' / 'dev'}" in third.stderr
    assert (exp / "qbe" / "dev_layer.txt").read_text().strip() == "0"
    assert not (exp / "qbe" / "eval").exists() and not (exp / "qbe" / "qbe_result.json").exists()  # no stale result
