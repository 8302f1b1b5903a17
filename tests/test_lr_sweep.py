"""A downstream learning-rate sweep (--lrs): each model's rate chosen on dev only, its test value reported.

The choice and the readers are checked on small files written as the recipes write them; the PR recipe runs
a real 2-rate x 2-seed sweep on the tiny synthetic corpus with a tiny random HuBERT.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from score_upstream import runs, stages
from tests.test_recipes import RECIPES, _error_lines, _run


def _fake_run(folder: Path, seed: int, dev: list[float], test: float) -> None:
    """A finished PR run as s3prl and the recipe leave it: dev values in train.log, the test line, markers."""
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("".join(f"train loss: 3.0\ndev loss: 2.0\ndev per: {d}\n" for d in dev)
                                      + "\rdev per: 0.0x junk\n")  # tqdm's carriage returns, a garbled line
    (folder / "test.log").write_text(f"test loss: 1.0\ntest per: {test}\n")
    for n in (2, 3, 4):
        (folder / f".stage{n}.done").write_text(json.dumps(
            {"key": f"{folder.name}-{n}-{test}", "inputs": {"seed": str(seed), "settings": f"lr of {folder.parent.name}"}}))


def _sweep(task: Path, values: dict[str, dict[int, tuple[list[float], float]]]) -> None:
    task.mkdir(parents=True, exist_ok=True)
    (task / ".stage1.done").write_text(json.dumps({"key": "data"}))
    for lr, seeds in values.items():
        for seed, (dev, test) in seeds.items():
            _fake_run(task / f"lr{lr}" / f"seed{seed}", seed, dev, test)


def test_the_rate_is_chosen_by_mean_best_dev_and_only_its_test_values_are_read(tmp_path, caplog, capsys):
    from score_upstream.report.results import read_experiment
    from score_upstream.report.table import build_table

    task = tmp_path / "m" / "pr"
    # 1e-3 wins on dev (best values 0.30, 0.34 -> 0.32) although 1e-2's test PERs are lower: test never chooses
    _sweep(task, {"1e-2": {0: ([0.40, 0.35], 0.10), 1: ([0.33], 0.12)},
                  "1e-3": {0: ([0.50, 0.30], 0.41), 1: ([0.34, 0.36], 0.43)}})
    data = runs.write_manifest(task, "pr", [0, 1], 4, ["1e-2", "1e-3"])
    assert data["lr"] == "1e-3" and data["runs_in"] == "lr1e-3"
    assert data["dev"]["1e-2"]["mean"] == pytest.approx(0.34) and data["dev"]["1e-3"]["mean"] == pytest.approx(0.32)
    assert data["settings"]["settings"] == "lr of lr1e-3"
    assert "learning rate chosen on dev per (mean over seeds 0 1): 1e-3 (1e-2: 0.3400, 1e-3: 0.3200)" in capsys.readouterr().out
    assert runs.manifest_runs(task) == {0: task / "lr1e-3" / "seed0", 1: task / "lr1e-3" / "seed1"}

    row = read_experiment(tmp_path / "m")
    assert row.runs["per"] == pytest.approx({0: 41.0, 1: 43.0}) and row.per == pytest.approx(42.0)
    assert row.lrs["per"]["lr"] == "1e-3"
    rec = build_table([row])[0]
    assert rec["per_lr"] == "1e-3" and rec["per_lr_dev"] == "1e-2: 34.00; 1e-3: 32.00" and rec["wer_lr"] == "n/a"

    # a tie goes to the rate listed first; a run that never evaluated on dev stops the choice, naming its log
    tie = tmp_path / "t" / "pr"
    _sweep(tie, {"5e-4": {0: ([0.2], 0.5)}, "1e-4": {0: ([0.2], 0.6)}})
    assert runs.write_manifest(tie, "pr", [0], 4, ["1e-4", "5e-4"])["lr"] == "1e-4"
    (tie / "lr5e-4" / "seed0" / "train.log").write_text("train loss: 1.0\n")
    with pytest.raises(stages.StageError, match=r"lr5e-4/seed0/train.log: no 'dev per' line"):
        runs.write_manifest(tie, "pr", [0], 4, ["1e-4", "5e-4"])

    # a seed folder of the chosen rate that the manifest does not list is another run's: left out, named
    _fake_run(task / "lr1e-3" / "seed7", 7, [0.1], 0.9)
    with caplog.at_level(logging.WARNING):
        assert read_experiment(tmp_path / "m").runs["per"] == pytest.approx({0: 41.0, 1: 43.0})
    assert "seed7 are not from the last run" in caplog.text


def test_one_rate_is_a_plain_run(tmp_path):
    task = tmp_path / "m" / "pr"
    task.mkdir(parents=True)
    (task / ".stage1.done").write_text(json.dumps({"key": "data"}))
    _fake_run(task / "seed0", 0, [0.3], 0.4)
    data = runs.write_manifest(task, "pr", [0], 4, ["5e-4"])
    assert data["lr"] == "5e-4" and "dev" not in data and "runs_in" not in data
    assert runs.manifest_runs(task) == {0: task / "seed0"} and runs.chosen_lr(task) is None
    with pytest.raises(stages.StageError, match="learning rate 'fast'"):
        runs.write_manifest(task, "pr", [0], 4, ["fast"])


def _pr(corpus: Path, ckpt: Path, exp: Path, *extra) -> tuple:
    return _run([RECIPES / "pr.sh", "--upstream", "hubert_local", "--ckpt", ckpt, "--librispeech",
                 corpus / "LibriSpeech", "--expdir", exp, "--device", "cpu", "--max-steps", "10", "--batch-size", "2",
                 "--num-workers", "0", *extra])


def test_pr_recipe_sweeps_rates_and_chooses_on_dev(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    from score_upstream.report.results import read_experiment

    exp = tmp_path / "exp"
    proc = _pr(tiny_corpus, tiny_hubert_ckpt, exp, "--seeds", "0 1", "--lrs", "1e-1 1e-4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    task = exp / "pr"
    best = {lr: [runs.best_dev(task / f"lr{lr}" / f"seed{s}" / "train.log", "pr") for s in (0, 1)] for lr in ("1e-1", "1e-4")}
    assert all(v is not None for vs in best.values() for v in vs)
    expected = min(("1e-1", "1e-4"), key=lambda lr: (sum(best[lr]), lr != "1e-1"))
    manifest = json.loads((task / "manifest.json").read_text())
    assert manifest["lr"] == expected and manifest["settings"]["settings"].startswith(f"config.optimizer.lr={expected},,")
    assert not list(task.glob("seed*"))  # a sweep's runs live under lr<LR>/
    tests = {s: json.loads((task / f"lr{expected}" / f"seed{s}" / "result.json").read_text())["value"] for s in (0, 1)}
    assert read_experiment(exp).runs["per"] == pytest.approx({s: 100 * v for s, v in tests.items()})
    # the same command again: every stage of every run skipped
    again = _pr(tiny_corpus, tiny_hubert_ckpt, exp, "--seeds", "0 1", "--lrs", "1e-1 1e-4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not re.search(r"Stage \d: (?!.*done, skipping)", again.stderr.replace("learning rate", ""))
    assert again.stderr.count("done, skipping") == 1 + 2 * 2 * 3

    # one rate: seed folders as without --lrs, and the same stage key as --lr (nothing reruns)
    one = tmp_path / "one"
    proc = _pr(tiny_corpus, tiny_hubert_ckpt, one, "--seeds", "0", "--lrs", "1e-1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (one / "pr" / "seed0" / "result.json").is_file() and not list((one / "pr").glob("lr*"))
    same = _pr(tiny_corpus, tiny_hubert_ckpt, one, "--seeds", "0", "--lr", "1e-1")
    assert same.returncode == 0 and same.stderr.count("done, skipping") == 4, same.stderr[-2000:]


@pytest.mark.parametrize("extra, message", [
    (["--lrs", "1e-3 1e-3"], "--lrs lists 1e-3 twice"),
    (["--lrs", "1e-3 fast"], "--lrs must be positive numbers"),
    (["--lrs", "0 1e-3"], "--lrs must be positive numbers"),
    (["--lrs", "1e-3 1e-4", "--run-lr", "1e-2"], "--run-lr 1e-2 is not one of --lrs"),
])
def test_bad_rates_stop_with_one_line(tiny_corpus, tiny_hubert_ckpt, tmp_path, extra, message):
    proc = _pr(tiny_corpus, tiny_hubert_ckpt, tmp_path / "exp", *extra)
    assert proc.returncode == 2 and len(_error_lines(proc)) == 1 and message in _error_lines(proc)[0], proc.stderr
    assert not (tmp_path / "exp" / "pr").exists()
