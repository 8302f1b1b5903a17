"""QUESST 2014 TWV against hand-computed answers, file parsing, the CLI and the official-tool wrapper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from score_upstream.qbe import twv

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

BETA = (1 - 0.0741289) / 0.0741289  # 12.4900153...


def write_groundtruth(gt_dir: Path, queries: list[str], docs: list[str], hits: list[tuple[str, str]], name="quesst14_dev"):
    """Write ecf/tlist/rttm files in the QUESST 2014 layout (``hits`` = (query, doc) pairs)."""
    gt_dir.mkdir(parents=True, exist_ok=True)
    excerpts = "\n".join(
        f'  <excerpt audio_filename="Audio/{d}.wav" channel="1" tbeg="0.000" dur="6.493" '
        f'language="multiple" source_type="cts"/>'
        for d in docs
    )
    ecf_name = name.replace("_dev", "").replace("_eval", "")
    (gt_dir / f"{ecf_name}.ecf.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ecf source_signal_duration="100" language="multiple" '
        f'version="20140101">\n{excerpts}\n</ecf>\n'
    )
    terms = "\n".join(f'  <term termid="{q}"><termtext>{q}</termtext></term>' for q in queries)
    (gt_dir / f"{name}.tlist.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?>\n<termlist ecf_filename="x" version="1" language="multiple" '
        f'encoding="UTF-8">\n{terms}\n</termlist>\n'
    )
    rttm = "".join(f"LEXEME {d} 1 0.000 2.400 {q} lex SELF <NA>\n" for q, d in hits)
    (gt_dir / f"{name}.rttm").write_text(rttm)
    return gt_dir


def write_stdlist(out_dir: Path, trials: dict[tuple[str, str], tuple[float, bool]]):
    """Write ``benchmark.stdlist.xml`` exactly as s3prl's quesst14_dtw expert formats it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_query: dict[str, list] = {}
    for (q, d), (s, yes) in trials.items():
        by_query.setdefault(q, []).append((d, s, yes))
    lines = [
        "<?xml version='1.0' encoding='UTF-8'?>",
        '<stdlist termlist_filename="benchmark.stdlist.xml" indexing_time="1.00" language="english" '
        'index_size="1" system_id="benchmark">',
    ]
    for q, items in by_query.items():
        lines.append(f'  <detected_termlist termid="{q}" term_search_time="1.0" oov_term_count="1">')
        for d, s, yes in items:
            lines.append(
                f'    <term file="{d}" channel="1" tbeg="0.000" dur="0.00" score="{s:.4f}" '
                f'decision="{"YES" if yes else "NO"}"/>'
            )
        lines.append("  </detected_termlist>")
    lines.append("</stdlist>")
    (out_dir / "benchmark.stdlist.xml").write_text("\n".join(lines) + "\n")
    return out_dir


def test_beta_constant():
    assert twv.effective_prior() == 0.0741289
    assert twv.beta_constant() == pytest.approx(12.490015, abs=1e-6)
    assert twv.beta_constant() != pytest.approx(12.49, abs=1e-6)  # the truncated prior, not the exact one


def test_perfect_system_scores_one():
    targets = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=bool)
    mtwv, theta = twv.max_twv(targets.astype(float), targets)
    assert mtwv == 1.0 and theta == 0.0


def test_targets_scored_lowest_scores_zero():
    targets = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
    scores = np.where(targets, -1.0, 1.0)
    mtwv, theta = twv.max_twv(scores, targets)
    assert mtwv == pytest.approx(0.0, abs=1e-12) and theta == 1.0


def test_ties_form_one_point():
    # target and non-target tie at 0.5: they cannot be split, so TWV 1 is unreachable
    targets = np.array([[1, 0, 0]], dtype=bool)
    scores = np.array([[0.5, 0.5, 0.0]])
    thetas, curve = twv.twv_curve(scores, targets)
    assert list(thetas) == [-np.inf, 0.0, 0.5]
    np.testing.assert_allclose(curve, [1 - BETA, 1 - BETA / 2, 0.0], atol=1e-12)
    assert twv.max_twv(scores, targets) == (pytest.approx(0.0, abs=1e-12), 0.5)


def test_first_maximum_wins():
    # beta = 1: TWV(-inf) = 1 - 1 = 0, TWV(1) = -1, TWV(2) = 0 -> the first maximum is theta = -inf
    targets = np.array([[True, False]])
    mtwv, theta = twv.max_twv(np.array([[1.0, 2.0]]), targets, beta=1.0)
    assert mtwv == 0.0 and theta == -np.inf
    assert twv.TWVResult(0.0, 0.0, -np.inf, 1, 2).line() == "actTWV: 0.0  maxTWV: 0.0  Threshold: -Infinity"


@pytest.fixture
def mixed_case(tmp_path):
    """Hand-worked case: 2 kept queries (q3 has no hit), 4 documents, one missing pair.

    q1 targets {d1}; q2 targets {d2, d3}. Scores:
        q1: d1 0.9 (T, YES)  d2 0.5 (YES)  d3 0.1   d4 -0.2
        q2: d1 0.3           d2 0.8 (T, YES)  d3 -0.5 (T)  d4 missing -> -10, NO
    N_docs = 4, so q1 has 3 non-targets and q2 has 2.
    theta = 0.3: q1 miss 0, fa 1/3 (d2); q2 miss 1/2 (d3), fa 0 -> P_miss 1/4, P_FA 1/6 -> 0.75 - beta/6
    theta = 0.5: q1 miss 0, fa 0;        q2 miss 1/2, fa 0    -> P_miss 1/4, P_FA 0   -> 0.75   (the maximum)
    theta = 0.8: q2 misses d2 too -> P_miss 1/2 -> 0.5;  theta = 0.9: P_miss 1 -> 0
    lower thetas keep q1's false alarm(s) and give TWV < 0 (beta = 12.49).
    actTWV (YES = q1/d1, q1/d2, q2/d2): P_miss 1/4, P_FA (1/3 + 0)/2 = 1/6 -> 0.75 - beta/6 = -1.33166923
    """
    docs = ["quesst14_00001", "quesst14_00002", "quesst14_00003", "quesst14_00004"]
    d1, d2, d3, d4 = docs
    gt = write_groundtruth(
        tmp_path / "groundtruth_quesst14_dev",
        ["quesst14_dev_0001", "quesst14_dev_0002", "quesst14_dev_0003"],
        docs,
        [("quesst14_dev_0001", d1), ("quesst14_dev_0002", d2), ("quesst14_dev_0002", d3), ("quesst14_dev_0002", d3)],
    )
    q1, q2, q3 = "quesst14_dev_0001", "quesst14_dev_0002", "quesst14_dev_0003"
    trials = {
        (q1, d1): (0.9, True), (q1, d2): (0.5, True), (q1, d3): (0.1, False), (q1, d4): (-0.2, False),
        (q2, d1): (0.3, False), (q2, d2): (0.8, True), (q2, d3): (-0.5, False),
        # q3 has no hit in the rttm: dropped, even with a perfect-looking score
        (q3, d1): (5.0, True), (q3, d2): (-5.0, False),
    }
    run = write_stdlist(tmp_path / "run", trials)
    return run, gt


def test_mixed_case_by_hand(mixed_case):
    run, gt = mixed_case
    result = twv.score_twv(run, gt)
    assert result.max_twv == pytest.approx(0.75, abs=1e-12)
    assert result.threshold == 0.5
    assert result.act_twv == pytest.approx(0.75 - BETA / 6, abs=1e-9)
    assert result.act_twv == pytest.approx(-1.33166923, abs=1e-8)
    assert (result.n_queries, result.n_documents, result.n_missing) == (2, 4, 1)
    key = twv.read_ground_truth(gt)
    assert key.name == "quesst14" and key.n_dropped_queries == 1
    assert key.queries == ["quesst14_dev_0001", "quesst14_dev_0002"]


def test_missing_pairs_score_minus_ten(tmp_path):
    # the target pair is missing (-> -10, NO); a present non-target scores -20: -10 > -20 separates them
    gt = write_groundtruth(tmp_path / "gt", ["q1"], ["a", "b"], [("q1", "a")])
    run = write_stdlist(tmp_path / "run", {("q1", "b"): (-20.0, False)})
    result = twv.score_twv(run, gt)
    assert result.max_twv == 1.0 and result.threshold == -20.0
    assert result.act_twv == pytest.approx(0.0)  # decision NO everywhere: P_miss 1, P_FA 0
    assert twv.score_twv(run, gt, default_score=-30.0).max_twv == pytest.approx(0.0, abs=1e-12)


def _write_lines(path: Path, terms: dict[str, list[tuple[str, float, bool]]]) -> Path:
    """A stdlist whose <detected_termlist> blocks may repeat a query or a document (what a dict cannot hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ['<stdlist termlist_filename="x" indexing_time="1.00" language="english" index_size="1" system_id="b">']
    for q, items in terms:
        lines.append(f'  <detected_termlist termid="{q}" term_search_time="1.0" oov_term_count="1">')
        lines += [f'    <term file="{d}" channel="1" tbeg="0.000" dur="0.00" score="{s}" decision="{"YES" if y else "NO"}"/>' for d, s, y in items]
        lines.append("  </detected_termlist>")
    path.write_text("\n".join([*lines, "</stdlist>"]) + "\n")
    return path


def test_repeated_trial_identical_counts_once_and_conflicting_is_refused(tmp_path, capsys):
    from score_upstream.qbe import stdlist

    gt = write_groundtruth(tmp_path / "gt", ["q1"], ["a", "b"], [("q1", "a")])
    # the same trial twice, identically, once in a second block of the same query: one trial
    same = _write_lines(tmp_path / "same" / "benchmark.stdlist.xml", [("q1", [("a", 0.5, False), ("b", 0.1, False)]), ("q1", [("a", 0.5, False)])])
    trials = stdlist.read_stdlist(same)
    assert trials.as_dict() == {"q1": {"a": (0.5, "NO"), "b": (0.1, "NO")}} and len(trials.scores) == 2
    system = twv.read_stdlist(same, twv.read_ground_truth(gt))
    assert (system.n_given, system.n_missing, system.n_ignored) == (2, 0, 0)
    # different scores (or decisions) for one trial: the official scorer's choice is unknown, so refuse
    for second in [("a", 0.9, False), ("a", 0.5, True)]:
        clash = _write_lines(tmp_path / "clash" / "benchmark.stdlist.xml", [("q1", [("a", 0.5, False), ("b", 0.1, False), second])])
        with pytest.raises(stdlist.StdlistError, match=r"\(q1, a\) is listed 2 times with different values"):
            stdlist.read_stdlist(clash)
        with pytest.raises(twv.TWVError, match="expected one score per"):
            twv.read_stdlist(clash, twv.read_ground_truth(gt))
    assert twv.main([str(clash.parent), str(gt)]) == 2
    assert "(q1, a)" in capsys.readouterr().err


def test_empty_system_scores_zero(tmp_path):
    gt = write_groundtruth(tmp_path / "gt", ["q1", "q2"], ["a", "b", "c"], [("q1", "a"), ("q2", "c")])
    run = write_stdlist(tmp_path / "run", {})
    result = twv.score_twv(run, gt)
    assert result.max_twv == pytest.approx(0.0, abs=1e-12) and result.threshold == -10.0
    assert result.n_missing == 6


def test_vectorised_matches_brute_force():
    rng = np.random.default_rng(0)
    targets = rng.random((7, 30)) < 0.15
    targets[np.arange(7), rng.integers(0, 30, 7)] = True
    scores = np.round(rng.normal(size=(7, 30)) + 1.5 * targets, 1)  # rounding makes ties
    thetas, curve = twv.twv_curve(scores, targets)
    for theta, value in zip(thetas, curve):
        yes = scores > theta
        p_miss = np.mean([(t & ~y).sum() / t.sum() for t, y in zip(targets, yes)])
        p_fa = np.mean([(~t & y).sum() / (~t).sum() for t, y in zip(targets, yes)])
        assert value == pytest.approx(1 - p_miss - BETA * p_fa, abs=1e-9)
        assert value == pytest.approx(twv.act_twv(yes, targets), abs=1e-9)


def test_cli_prints_and_writes_score_out(mixed_case, capsys):
    run, gt = mixed_case
    assert twv.main([str(run), str(gt)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == "actTWV: -1.3316692  maxTWV: 0.75  Threshold: 0.5"
    assert (run / "score.out").read_text().strip() == line
    values = twv.parse_score_out(run / "score.out")
    assert values["maxTWV"] == 0.75 and values["Threshold"] == 0.5


def test_parse_official_score_out(tmp_path):
    path = tmp_path / "score.out"
    path.write_text(
        "Main Results:\n\nactTWV: 0.40079603  maxTWV: 0.41911224  Threshold: 5.2125\n"
        "actCnxe: 0.97036207  minCnxe: 0.6852714\n\nModel-dependent calibration Results:\n\n"
        "Upper-bound TWV (model-dependent offset)  -  actTWV: 0.5082787  maxTWV: 0.5082787  Threshold: 0.0\n"
    )
    values = twv.parse_score_out(path)
    assert values == {"actTWV": 0.40079603, "maxTWV": 0.41911224, "Threshold": 5.2125,
                      "actCnxe": 0.97036207, "minCnxe": 0.6852714}


@pytest.mark.parametrize("broken", ["missing_rttm", "bad_xml", "no_stdlist"])
def test_bad_input_is_one_line_naming_the_file(mixed_case, capsys, broken):
    run, gt = mixed_case
    if broken == "missing_rttm":
        culprit = gt
        (gt / "quesst14_dev.rttm").unlink()
    elif broken == "bad_xml":
        culprit = gt / "quesst14.ecf.xml"
        culprit.write_text("<ecf><excerpt audio_filename='a.wav'></ecf>")
    else:
        culprit = run
        (run / "benchmark.stdlist.xml").unlink()
    assert twv.main([str(run), str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(culprit) in err and "Traceback" not in err


def test_official_scorer_wrapper(mixed_case, tmp_path, monkeypatch):
    run, _ = mixed_case
    scoring = tmp_path / "scoring"
    scoring.mkdir()
    # stand-in for the Java tool: records its arguments and writes score.out where the real one does
    (scoring / "score-TWV-Cnxe.sh").write_text(
        '#!/bin/bash\necho "$2 $3" > "$1/args"\n'
        'printf "actTWV: 0.1  maxTWV: 0.2  Threshold: 1.5\\nactCnxe: 0.9  minCnxe: 0.8\\n" > "$1/score.out"\n'
    )
    monkeypatch.setattr(twv.shutil, "which", lambda name: "/usr/bin/java")
    values = twv.run_official_scorer(run, scoring, "groundtruth_quesst14_dev")
    assert values["maxTWV"] == 0.2 and values["minCnxe"] == 0.8
    assert (run / "official" / "args").read_text().split() == ["groundtruth_quesst14_dev", "-10"]
    assert (run / "official" / "benchmark.stdlist.xml").is_file()
    with pytest.raises(twv.TWVError, match="official scorer not found"):
        twv.run_official_scorer(run, tmp_path / "nowhere")
