"""score-results: parsing what s3prl's evaluate prints and writes, relative-improvement signs, missing runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from score_upstream.report import results

REPORTED = Path(__file__).resolve().parent.parent / "results" / "reported.csv"


def make_expdir(root: Path, name: str, kind: str, wer=None, per=None, mtwv=None, layer=12,
                protocol="superb-best-dev", scope="english", arks: bool = False) -> Path:
    """An experiment root with the files the recipes leave, lines formatted as s3prl prints them."""
    d = root / name
    d.mkdir(parents=True)
    (d / "model.json").write_text(json.dumps({"name": name, "upstream": f"{kind}_hubert", "ckpt": f"{name}.pt", "kind": kind}))
    if wer is not None:
        (d / "asr").mkdir()
        # tqdm progress (\r-separated) precedes the expert's prints when stdout and stderr share the log
        (d / "asr" / "test-clean.log").write_text(
            "[Runner] - Loading upstream\ntest-clean:  50%|#####     | 1/2 [00:01<00:01]\r"
            "test-clean: 100%|##########| 2/2 [00:02<00:00]\n"
            f"test-clean loss: 0.40213\ntest-clean uer: 3.1\ntest-clean wer: {wer}\n"
        )
        if arks:  # 2 errors (1 sub + 1 del) over 4 reference words = 50 %
            (d / "asr" / "test-clean-noLM-hyp.ark").write_text("u1 A CAT\nu2 SAT\n")
            (d / "asr" / "test-clean-noLM-ref.ark").write_text("u1 A DOG\nu2 SAT DOWN\n")
    if per is not None:
        (d / "pr").mkdir()
        (d / "pr" / "test.log").write_text(f"dev per: 0.9\ntest loss: 1.2\ntest per: {per}\n")
    if mtwv is not None:
        (d / "qbe").mkdir()
        (d / "qbe" / "qbe_result.json").write_text(json.dumps(
            {"layer": layer, "dev_mtwv": mtwv + 0.01, "eval_mtwv": mtwv, "protocol": protocol, "scope": scope,
             "dev_mtwv_per_layer": {"12": mtwv + 0.01}}))
    return d


def test_parse_s3prl_log_lines(tmp_path):
    log = tmp_path / "test.log"
    log.write_text("dev-clean wer: 50.0\ntest-clean wer: 7.5\nsome noise: x\ntest-clean wer: 6.4213\n")
    assert results.parse_s3prl_log(log, "wer") == 6.4213  # last test line wins, dev ignored
    assert results.parse_s3prl_log(log, "per") is None
    assert results.parse_s3prl_log(tmp_path / "absent.log", "wer") is None


def test_reads_all_three_tasks(tmp_path):
    d = make_expdir(tmp_path, "SCORE", "score", wer=6.35, per=0.0522, mtwv=0.0829)
    row = results.read_experiment(d)
    assert (row.name, row.kind, row.source) == ("SCORE", "score", "reproduced")
    assert row.wer == 6.35
    assert row.per == pytest.approx(5.22)  # ctc's per is a fraction; the table is in %
    assert row.mtwv == 0.0829 and row.qbe_layer == 12
    assert (row.qbe_protocol, row.qbe_scope) == ("best-dev-layer", "english-only")


def test_ark_cross_check(tmp_path):
    good = results.read_experiment(make_expdir(tmp_path, "a", "hubert", wer=50.0, arks=True))
    assert good.notes == []
    bad = results.read_experiment(make_expdir(tmp_path, "b", "hubert", wer=6.0, arks=True))
    assert "50.00 from the hyp/ref arks" in bad.notes[0]


@pytest.mark.parametrize("metric,base,new,sign", [
    ("wer", 6.42, 6.35, +1), ("wer", 6.42, 6.50, -1),
    ("per", 5.41, 5.22, +1), ("per", 5.41, 5.60, -1),
    ("mtwv", 0.0736, 0.0829, +1), ("mtwv", 0.0736, 0.0700, -1),
])
def test_relative_improvement_signs(metric, base, new, sign):
    value = results.relative_improvement(metric, new, base)
    assert value * sign > 0
    assert abs(value) == pytest.approx(100 * abs(new - base) / base)


def test_table_with_missing_runs_and_baselines(tmp_path):
    rows = [
        results.read_experiment(make_expdir(tmp_path, "HuBERT", "hubert", wer=6.42, per=0.0541, mtwv=0.0736)),
        results.read_experiment(make_expdir(tmp_path, "SCORE", "score", wer=6.35, mtwv=0.0829)),  # PR never ran
        results.read_experiment(make_expdir(tmp_path, "SPIN", "spin", wer=6.34, per=0.0503, mtwv=0.0800,
                                            protocol="fixed-layer")),
    ]
    table = {r["model"]: r for r in results.build_table(rows)}
    score = table["SCORE"]
    assert score["per"] == "missing" and score["rel_pr_vs_hubert"] == "missing"
    assert score["rel_asr_vs_hubert"] == pytest.approx(100 * (6.42 - 6.35) / 6.42)
    assert score["rel_qbe_vs_hubert"] == pytest.approx(100 * (0.0829 - 0.0736) / 0.0736)
    assert score["rel_asr_vs_spin"] == pytest.approx(100 * (6.34 - 6.35) / 6.34)  # worse than SPIN: negative
    assert score["rel_asr_vs_spin"] < 0
    assert score["rel_qbe_vs_spin"].startswith("n/a")  # SPIN's layer was fixed, SCORE's picked on dev
    assert table["HuBERT"]["rel_asr_vs_hubert"] == 0.0


def test_reported_rows_stay_apart(tmp_path):
    rows = [results.read_experiment(make_expdir(tmp_path, "SCORE", "score", wer=3.0, per=0.03, mtwv=0.5))]
    rows += results.read_reported(REPORTED)
    table = results.build_table(rows)
    score = next(r for r in table if r["model"] == "SCORE")
    assert score["source"] == "reproduced" and score["rel_asr_vs_hubert"] == "n/a"  # no reproduced HuBERT
    paper = next(r for r in table if r["model"] == "SCORE (paper)")
    assert paper["source"] == "reported" and paper["wer"] == "not reported"
    assert (paper["rel_asr_vs_hubert"], paper["rel_pr_vs_hubert"], paper["rel_qbe_vs_hubert"]) == (1.09, 3.58, 12.65)
    hubert = next(r for r in table if r["model"] == "HuBERT Base")
    assert (hubert["wer"], hubert["per"], hubert["mtwv"]) == (6.42, 5.41, 0.0736)
    wavlm = next(r for r in table if r["model"] == "WavLM Base")
    assert wavlm["rel_pr_vs_hubert"] == pytest.approx(100 * (5.41 - 4.84) / 5.41)


def test_cli_writes_csv_md_plot(tmp_path, capsys):
    h = make_expdir(tmp_path, "HuBERT", "hubert", wer=40.0, per=0.5, mtwv=0.2)
    s = make_expdir(tmp_path, "SCORE", "score", wer=38.0, per=0.45, mtwv=0.25)
    empty = tmp_path / "unfinished"
    empty.mkdir()  # a run that never got anywhere: no model.json, no outputs
    out = tmp_path / "out"
    banner = "DEMO numbers on synthetic speech"
    assert results.main([str(h), str(s), str(empty), "--out", str(out), "--no-reported", "--banner", banner]) == 0
    md = (out / "superb.md").read_text()
    assert banner in md and "git commit" in md and "torch 2." in md and "s3prl" in md
    assert banner not in md.splitlines()[0]  # on its own line, not repeated in the title
    assert "| SCORE | score | 38.00 | 45.00 | 0.2500 | 12 | +5.00% | +10.00% | +25.00% |" in md
    assert "| unfinished | other | missing | missing | missing | missing |" in md
    assert "SPIN" not in md.split("## All columns")[1].split("\n")[2]  # no vs-SPIN columns without a SPIN row
    csv = pd.read_csv(out / "superb.csv", comment="#")
    assert list(csv["model"]) == ["HuBERT", "SCORE", "unfinished"]
    assert csv.loc[2, "wer"] == "missing"
    assert (out / "superb.png").stat().st_size > 1000
    assert banner in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert results.main([str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-reported"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nope" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text('{"name": "x", "kind": "bert"}')
    assert results.main([str(bad), "--out", str(tmp_path / "o"), "--no-reported"]) == 2
    assert "kind" in capsys.readouterr().err


def test_malformed_qbe_result_is_missing(tmp_path):
    d = make_expdir(tmp_path, "X", "score", wer=6.0, mtwv=0.1)
    (d / "qbe" / "qbe_result.json").write_text('{"layer": 3, "eval_mtwv": 0.1, "protocol": "magic", "scope": "english"}')
    assert results.read_experiment(d).mtwv is None


def make_seeded(root: Path, name: str, kind: str, wers: dict, pers: dict, mtwv: float, interval, last=None) -> Path:
    """An experiment root as the recipes lay out several downstream seeds, plus a QbE result with intervals."""
    d = make_expdir(root, name, kind)
    for seed, wer in wers.items():
        (d / "asr" / f"seed{seed}").mkdir(parents=True)
        (d / "asr" / f"seed{seed}" / "test-clean.log").write_text(f"test-clean loss: 0.4\ntest-clean wer: {wer}\n")
    for seed, per in pers.items():
        (d / "pr" / f"seed{seed}").mkdir(parents=True)
        (d / "pr" / f"seed{seed}" / "test.log").write_text(f"test per: {per}\n")
    qbe = {"layer": 3, "dev_mtwv": mtwv, "eval_mtwv": mtwv, "protocol": "best-dev-layer", "scope": "english-only",
           "eval_mtwv_interval": interval, "eval_mtwv_sd": 0.01}
    if last:
        qbe["last_layer"] = {"layer": 6, "dev_mtwv": None, "eval_mtwv": last[0], "eval_mtwv_interval": last[1]}
    (d / "qbe").mkdir()
    (d / "qbe" / "qbe_result.json").write_text(json.dumps(qbe))
    return d


def test_seeds_mean_sd_and_intervals(tmp_path, caplog):
    h = make_seeded(tmp_path, "HuBERT", "hubert", {0: 40.0, 1: 42.0, 2: 44.0}, {0: 0.50, 1: 0.52, 2: 0.51},
                    0.40, [0.30, 0.50], last=(0.20, [0.15, 0.26]))
    (h / "asr" / "seed7").mkdir()  # an unfinished seed: left out, with a warning
    (h / "asr" / "seed7" / "test-clean.log").write_text("test-clean:  40%|####      | 2/5\n")
    s = make_seeded(tmp_path, "SCORE", "score", {0: 38.0, 1: 39.0}, {3: 0.45}, 0.42, [0.33, 0.52], last=(0.30, [0.24, 0.37]))
    row = results.read_experiment(h)
    assert row.runs["wer"] == {0: 40.0, 1: 42.0, 2: 44.0} and "seed 7 left out" in caplog.text
    assert row.wer == 42.0 and row.sd["wer"] == 2.0  # sample sd (ddof 1) of 40, 42, 44
    assert row.per == pytest.approx(51.0) and row.sd["per"] == pytest.approx(1.0)
    assert row.intervals == {"mtwv": (0.30, 0.50), "mtwv_last": (0.15, 0.26)}
    assert (row.mtwv_last, row.qbe_last_layer) == (0.20, 6)

    table = {r["model"]: r for r in results.build_table([row, results.read_experiment(s)])}
    score = table["SCORE"]
    assert (score["wer"], score["wer_sd"], score["wer_n"]) == (38.5, pytest.approx(0.5 ** 0.5), 2)
    assert (score["per"], score["per_sd"], score["per_n"]) == (pytest.approx(45.0), "n/a", 1)  # one seed: no sd
    assert score["rel_asr_vs_hubert"] == pytest.approx(100 * (42.0 - 38.5) / 42.0)  # on the means
    assert score["rel_pr_vs_hubert"] == pytest.approx(100 * (51.0 - 45.0) / 51.0)
    assert (score["mtwv_low"], score["mtwv_high"], score["qbe_layer"]) == (0.33, 0.52, 3)
    assert (score["mtwv_last"], score["mtwv_last_low"], score["mtwv_last_high"], score["qbe_last_layer"]) == (0.30, 0.24, 0.37, 6)
    assert score["rel_qbe_last_vs_hubert"] == pytest.approx(100 * (0.30 - 0.20) / 0.20)

    out = tmp_path / "out"
    assert results.main([str(h), str(s), "--out", str(out), "--no-reported"]) == 0
    md = (out / "superb.md").read_text()
    assert ("| SCORE | score | 38.50 ± 0.71 (n=2) | 45.00 | 0.4200 [0.3300, 0.5200] | 3 | 0.3000 [0.2400, 0.3700] | 6 "
            "| +8.33% | +11.76% | +5.00% | +50.00% |") in md
    assert "| HuBERT | hubert | 42.00 ± 2.00 (n=3) | 51.00 ± 1.00 (n=3) |" in md
    csv = pd.read_csv(out / "superb.csv", comment="#")
    for column in ("wer_sd", "wer_n", "per_sd", "per_n", "mtwv_low", "mtwv_high", "mtwv_last", "mtwv_last_low",
                   "mtwv_last_high", "qbe_last_layer", "rel_qbe_last_vs_hubert"):
        assert column in csv.columns
    assert float(csv.loc[0, "wer_sd"]) == 2.0 and int(csv.loc[0, "wer_n"]) == 3
    assert (out / "superb.png").stat().st_size > 1000


def test_error_bars_follow_the_table():
    from score_upstream.report.plot import error_bar

    rec = {"wer": 42.0, "wer_sd": 2.0, "per": 45.0, "per_sd": "n/a", "mtwv": 0.42, "mtwv_low": 0.33, "mtwv_high": 0.52}
    assert error_bar(rec, "wer") == (2.0, 2.0) and error_bar(rec, "per") == (0.0, 0.0)
    assert error_bar(rec, "mtwv") == (pytest.approx(0.09), pytest.approx(0.10))


def test_speech_hours_follow_the_papers_accounting(tmp_path):
    """"Speech h" is the input audio drawn (the paper's SCORE ~101 h vs SPIN ~356 h, 0.28x); the views through
    the model are their own column; a checkpoint that does not record the input audio shows it missing."""
    import torch

    def trained(name, kind, info):
        d = make_expdir(tmp_path, name, kind, per=0.05)
        torch.save(info, tmp_path / f"{name}.pt")
        meta = json.loads((d / "model.json").read_text())
        (d / "model.json").write_text(json.dumps({**meta, "ckpt": str(tmp_path / f"{name}.pt")}))
        return d

    dirs = [make_expdir(tmp_path, "HuBERT", "hubert", per=0.06),
            trained("SCORE", "score", {"score": {"method_name": "score", "input_speech_hours": 101.0,
                                                 "view_speech_hours": 101.0, "processed_speech_hours": 101.0}}),
            trained("SPIN", "spin", {"score": {"method_name": "spin", "input_speech_hours": 356.0,
                                               "view_speech_hours": 711.0, "processed_speech_hours": 711.0}}),
            trained("old", "score", {"score": {"method_name": "score", "processed_speech_hours": 99.0}})]
    assert results.read_training(tmp_path / "SPIN.pt") == ("spin", 356.0, 711.0)
    assert results.read_training(tmp_path / "old.pt") == ("score", None, 99.0)  # views never stand in for input
    assert results.read_training(None) == (None, None, None)
    table = {r["model"]: r for r in results.build_table([results.read_experiment(d) for d in dirs])}
    assert (table["SCORE"]["train_speech_h"], table["SCORE"]["train_view_speech_h"]) == (101.0, 101.0)
    assert table["SCORE"]["train_speech_vs_spin"] == pytest.approx(101.0 / 356.0)
    assert (table["old"]["train_speech_h"], table["old"]["train_speech_vs_spin"]) == ("missing", "n/a")
    assert table["old"]["train_view_speech_h"] == 99.0
    assert (table["HuBERT"]["train_speech_h"], table["HuBERT"]["train_view_speech_h"]) == ("n/a", "n/a")

    out = tmp_path / "out"
    assert results.main([str(d) for d in dirs] + ["--out", str(out), "--no-reported"]) == 0
    md = (out / "superb.md").read_text()
    assert "| Method | Speech h | Speech vs SPIN | View h through model |\n|---|" in md
    assert "| score | 101.00 | 0.28x | 101.00 |" in md and "| spin | 356.00 | 1.00x | 711.00 |" in md
    assert "| score | missing | n/a | 99.00 |" in md
    assert "Speech h counts the input audio drawn for the fine-tuning updates, as the SCORE paper does" in md
    csv = pd.read_csv(out / "superb.csv", comment="#").set_index("model")
    assert float(csv.loc["SCORE", "train_speech_h"]) == 101.0 and float(csv.loc["SPIN", "train_view_speech_h"]) == 711.0
    assert csv.loc["old", "train_speech_h"] == "missing"
