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
    assert "| SCORE | score | 38.00 | 45.00 | 0.2500 | 12 | +5.00% | +10.00% | +25.00% |" in md
    assert "| unfinished | other | missing | missing | missing | missing |" in md
    assert "SPIN" not in md.split("## Reproduced")[1].split("\n")[2]  # no vs-SPIN columns without a SPIN row
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
