"""Bootstrap interval over queries of the MTWV against a brute-force recomputation of every resample."""

from __future__ import annotations

import json

import numpy as np
import pytest

from score_upstream.qbe import bootstrap, twv
from score_upstream.s3prl.superb.qbe import protocol
from test_twv import write_groundtruth, write_stdlist

BETA = twv.beta_constant()


def brute_max_twv(scores: np.ndarray, targets: np.ndarray, rows: np.ndarray) -> float:
    """maxTWV of the queries ``rows`` (repeats allowed), by the definition: per-query rates averaged
    over the drawn queries, every threshold in {-inf} and the distinct scores tried."""
    best = -np.inf
    for theta in [-np.inf, *sorted(set(scores.ravel().tolist()))]:
        cost = 0.0
        for q in rows:
            yes = scores[q] > theta
            tar = targets[q].sum()
            cost += (targets[q] & ~yes).sum() / tar + BETA * (~targets[q] & yes).sum() / max(targets.shape[1] - tar, 1)
        best = max(best, 1.0 - cost / len(rows))
    return best


def hand_made() -> tuple[np.ndarray, np.ndarray]:
    """5 queries x 6 documents, tied scores included; query 4 is found at the top, query 2 never."""
    targets = np.zeros((5, 6), dtype=bool)
    targets[[0, 1, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5]] = True
    scores = np.array([
        [2.0, 0.5, 0.5, -1.0, 0.0, 0.1],
        [0.0, 1.5, 0.2, 0.2, 1.5, -0.3],
        [1.0, 1.0, 1.0, -2.0, 0.3, 0.0],
        [0.4, 0.1, 0.0, 0.2, 0.4, 0.9],
        [-1.0, -1.0, 0.0, 0.1, 0.2, 3.0],
    ])
    return scores, targets


def test_every_resample_equals_brute_force():
    scores, targets = hand_made()
    counts = bootstrap.query_counts(5, n_resamples=60, seed=7)
    assert counts.shape == (60, 5) and (counts.sum(axis=1) == 5).all()
    fast = bootstrap.resampled_max_twv(scores, targets, counts)
    for c, value in zip(counts, fast):
        rows = np.repeat(np.arange(5), c)
        assert value == pytest.approx(brute_max_twv(scores, targets, rows), abs=1e-12)
        assert value == pytest.approx(twv.max_twv(scores[rows], targets[rows])[0], abs=1e-12)
    # all queries once: the point estimate
    assert bootstrap.resampled_max_twv(scores, targets, np.ones((1, 5)))[0] == pytest.approx(twv.max_twv(scores, targets)[0])


def test_random_systems_match_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(4):
        q, d = rng.integers(2, 7), rng.integers(4, 15)
        targets = rng.random((q, d)) < 0.3
        targets[np.arange(q), rng.integers(0, d, q)] = True
        scores = np.round(rng.standard_normal((q, d)) + targets, 1)  # rounding makes ties
        counts = bootstrap.query_counts(q, 25, seed=1)
        fast = bootstrap.resampled_max_twv(scores, targets, counts)
        slow = [brute_max_twv(scores, targets, np.repeat(np.arange(q), c)) for c in counts]
        np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_interval_contains_point_and_is_deterministic():
    scores, targets = hand_made()
    a = bootstrap.bootstrap_max_twv(scores, targets, n_resamples=500, seed=0)
    assert a.mtwv == twv.max_twv(scores, targets)[0]
    assert a.low <= a.mtwv <= a.high and a.low < a.high and a.sd > 0
    assert (a.resamples, a.seed, a.level, a.n_queries) == (500, 0, 0.95, 5)
    assert bootstrap.bootstrap_max_twv(scores, targets, n_resamples=500, seed=0) == a
    other = bootstrap.bootstrap_max_twv(scores, targets, n_resamples=500, seed=1)
    assert (other.low, other.high, other.sd) != (a.low, a.high, a.sd)
    # the interval is the 2.5th / 97.5th percentile of exactly these resamples
    values = bootstrap.resampled_max_twv(scores, targets, bootstrap.query_counts(5, 500, 0))
    assert (a.low, a.high) == tuple(np.percentile(values, [2.5, 97.5]))
    assert a.sd == pytest.approx(values.std(ddof=1))


def test_one_query_gives_a_zero_width_interval():
    scores, targets = hand_made()
    a = bootstrap.bootstrap_max_twv(scores[3:4], targets[3:4], n_resamples=50)
    assert a.low == a.high == a.mtwv == pytest.approx(brute_max_twv(scores, targets, np.array([3])))
    assert a.sd == 0.0 and a.n_queries == 1


def test_bad_settings_are_refused():
    scores, targets = hand_made()
    with pytest.raises(ValueError, match="level"):
        bootstrap.bootstrap_max_twv(scores, targets, level=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap.bootstrap_max_twv(scores, targets, n_resamples=1)


def _write_case(root):
    """The hand-made system as QUESST files; query q_5 has no hit, so the scorer drops it."""
    scores, targets = hand_made()
    queries, docs = [f"q_{i}" for i in range(5)], [f"d_{j}" for j in range(6)]
    hits = [(queries[i], docs[j]) for i, j in zip(*np.nonzero(targets))]
    gt = write_groundtruth(root / "gt", [*queries, "q_5"], docs, hits, name="quesst14_eval")
    trials = {(queries[i], docs[j]): (float(scores[i, j]), False) for i in range(5) for j in range(6)}
    return gt, trials, scores, targets


def test_stdlist_and_qbe_report_carry_the_interval(tmp_path, capsys):
    gt, trials, scores, targets = _write_case(tmp_path)
    qbe = tmp_path / "qbe"
    for split, layer in (("dev", 3), ("dev", 6), ("eval", 3), ("eval", 6)):
        write_stdlist(qbe / split / f"layer{layer}", trials)
        twv.write_score_out(twv.score_twv(qbe / split / f"layer{layer}", gt), qbe / split / f"layer{layer}")
    expected = bootstrap.bootstrap_max_twv(scores, targets, n_resamples=200, seed=0)
    assert bootstrap.bootstrap_stdlist(qbe / "eval" / "layer3", gt, n_resamples=200) == expected

    result = protocol.report(qbe, 3, "best-dev-layer", "english-only", gt, last=6, resamples=200)
    assert json.loads((qbe / "qbe_result.json").read_text()) == result
    assert result["eval_mtwv_interval"] == [expected.low, expected.high] and result["eval_mtwv_sd"] == expected.sd
    assert result["bootstrap"] == {"resamples": 200, "seed": 0, "level": 0.95, "unit": "query", "n_queries": 5}
    last = result["last_layer"]
    assert (last["layer"], last["eval_mtwv_interval"], last["scorer"]) == (6, [expected.low, expected.high], "score-twv")
    assert last["dev_mtwv"] == result["dev_mtwv_per_layer"]["6"]
    with pytest.raises(protocol.QbeProtocolError, match="no score for the last layer 9"):
        protocol.report(qbe, 3, "best-dev-layer", "english-only", gt, last=9)

    assert bootstrap.main([str(qbe / "eval" / "layer3"), str(gt), "--resamples", "200"]) == 0
    assert capsys.readouterr().out.startswith(f"maxTWV {expected.mtwv:.4f}  95% interval [{expected.low:.4f}")
