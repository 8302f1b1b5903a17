"""Bootstrap interval of a QbE system's MTWV over its queries.

Run it as::

    python -m score_upstream.qbe.bootstrap exp/m/qbe/eval/layer6 quesst14Database/scoring/groundtruth_quesst14_eval
    # -> maxTWV 0.5221  95% interval [0.4310, 0.6102]  sd 0.0457  (1000 resamples of 20 queries, seed 0)

The queries are the sampling unit: a resample draws ``Q`` queries with replacement from the ``Q`` of the
ground truth, and its maxTWV is computed exactly as the QUESST scorer does (score_upstream/qbe/twv.py): at each threshold
the miss and false-alarm rates are averaged over the resampled queries (a query drawn twice counts twice),
and the maximum is taken over theta in {-inf} and every distinct score. The interval is the
percentile interval of the resampled maxTWVs; the generator is seeded, so a rerun gives the same numbers.

A resample is a vector of per-query counts ``c`` (summing to ``Q``), so its TWV at threshold theta is
``1 - sum_q c_q cost_q(theta) / Q`` with ``cost_q = miss_q / tar_q + beta fa_q / (N_docs - tar_q)``. The
maximum can only sit at -inf, just below a target's score or above every score (see
:func:`candidate_thresholds`), so all resamples are one (B, Q) x (Q, K) product with K <= #targets + 2:
1000 resamples of QUESST 2014's eval scores take seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from score_upstream.qbe.twv import TWVError, beta_constant, max_twv, read_ground_truth, read_stdlist

N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95


@dataclass(frozen=True)
class BootstrapInterval:
    """maxTWV of the full query set, its bootstrap percentile interval and the sd of the resamples."""

    mtwv: float
    low: float
    high: float
    sd: float
    level: float
    resamples: int
    seed: int
    n_queries: int

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"maxTWV {self.mtwv:.4f}  {100 * self.level:g}% interval [{self.low:.4f}, {self.high:.4f}]  "
            f"sd {self.sd:.4f}  ({self.resamples} resamples of {self.n_queries} queries, seed {self.seed})"
        )


def query_counts(n_queries: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each query is drawn in each resample: (n_resamples, n_queries) int, rows summing to Q.

    Draws ``Q`` indices with replacement per resample from ``np.random.default_rng(seed)``; the same
    arguments give the same counts.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_queries, size=(n_resamples, n_queries))
    counts = np.zeros((n_resamples, n_queries), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


def resampled_max_twv(scores: np.ndarray, targets: np.ndarray, counts: np.ndarray, beta: float | None = None) -> np.ndarray:
    """maxTWV of each resample, as :func:`score_upstream.qbe.twv.max_twv` gives it on the repeated queries.

    Args:
        scores: (Q, D) trial scores.
        targets: (Q, D) bool, every row with at least one target.
        counts: (B, Q) how many times each query is in each resample (rows summing to Q).
        beta: false-alarm weight; default :func:`score_upstream.qbe.twv.beta_constant`.

    Returns:
        (B,) float64 maxTWV per resample, rounded to 12 decimals as ``twv_curve`` rounds.
    """
    beta = beta_constant() if beta is None else beta
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    n_q, n_d = targets.shape
    if counts.shape[1] != n_q:
        raise TWVError(f"counts cover {counts.shape[1]} queries, the scores {n_q}")
    tar = targets.sum(axis=1)
    if (tar == 0).any():
        raise TWVError("every query needs at least one target document (queries without hits are dropped)")
    nontar = n_d - tar
    thetas = candidate_thresholds(scores, targets)
    # (Q, K) cost of each query at each candidate threshold: miss rate + beta * false-alarm rate
    cost = np.empty((n_q, thetas.size))
    for q in range(n_q):
        hit = np.sort(scores[q, targets[q]])
        other = np.sort(scores[q, ~targets[q]])
        misses = np.searchsorted(hit, thetas, side="right")  # targets scoring <= theta
        fas = other.size - np.searchsorted(other, thetas, side="right")  # non-targets scoring > theta
        cost[q] = misses / tar[q] + beta * fas / max(nontar[q], 1)
    best = np.empty(len(counts))
    for s in range(0, len(counts), 256):  # bounded (256, K) blocks
        twv = 1.0 - counts[s : s + 256] @ cost / n_q
        best[s : s + 256] = twv.max(axis=1)
    return np.round(best, 12) + 0.0


def candidate_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The thresholds at which maxTWV can be reached, whatever the per-query weights: (K,) ascending.

    Raising theta past a non-target's score removes a false alarm (TWV rises) and past a target's
    score adds a miss (TWV falls), so a maximum sits at -inf, just below a target's score (the next
    lower distinct score) or above every score. Per-query weights scale these steps but never flip
    their sign, so the same few thresholds (at most #targets + 2) serve every resample.
    """
    distinct = np.unique(scores)
    below = np.searchsorted(distinct, scores[targets], side="left") - 1  # -1: no lower score, theta = -inf
    picked = np.unique(np.concatenate([below, [distinct.size - 1]]))
    return np.concatenate([[-np.inf], distinct[picked[picked >= 0]]])


def bootstrap_max_twv(
    scores: np.ndarray,
    targets: np.ndarray,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
    beta: float | None = None,
) -> BootstrapInterval:
    """maxTWV of (Q, D) ``scores`` / ``targets`` with a bootstrap percentile interval over queries.

    Args:
        scores, targets: as :func:`score_upstream.qbe.twv.max_twv` takes them.
        n_resamples: resamples drawn (default 1000).
        seed: seed of the generator that draws them (default 0): reruns give identical numbers.
        level: coverage of the interval (default 0.95: the 2.5th and 97.5th percentiles).

    Returns:
        :class:`BootstrapInterval`; ``sd`` is the standard deviation (ddof 1) of the resampled maxTWVs.
        One query gives a zero-width interval: every resample is that query.
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level}: expected a coverage strictly between 0 and 1, e.g. 0.95")
    if n_resamples < 2:
        raise ValueError(f"n_resamples {n_resamples}: expected at least 2 (1000 is usual)")
    point, _ = max_twv(scores, targets, beta)
    values = resampled_max_twv(scores, targets, query_counts(len(targets), n_resamples, seed), beta)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapInterval(
        mtwv=point, low=float(low), high=float(high), sd=float(values.std(ddof=1)),
        level=level, resamples=n_resamples, seed=seed, n_queries=len(targets),
    )


def bootstrap_stdlist(
    stdlist: str | os.PathLike, groundtruth_dir: str | os.PathLike, n_resamples: int = N_RESAMPLES, seed: int = SEED,
    level: float = LEVEL,
) -> BootstrapInterval:
    """:func:`bootstrap_max_twv` of a ``benchmark.stdlist.xml`` (or the folder holding it) against a ground truth."""
    from score_upstream.qbe.stdlist import STDLIST_NAME

    path = Path(stdlist)
    if path.is_dir():
        path = path / STDLIST_NAME
    if not path.is_file():
        raise TWVError(f"{path}: system output not found; run the QbE search first")
    gt = read_ground_truth(groundtruth_dir)
    system = read_stdlist(path, gt)
    return bootstrap_max_twv(system.scores, gt.targets, n_resamples, seed, level)


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.qbe.bootstrap STDLIST GROUNDTRUTH_DIR [--resamples 1000] [--seed 0]``."""
    parser = argparse.ArgumentParser(description="Bootstrap interval over queries of a QbE system's maxTWV.")
    parser.add_argument("stdlist", help="benchmark.stdlist.xml or the folder holding it")
    parser.add_argument("groundtruth_dir", help="folder with *.ecf.xml, *.rttm, *.tlist.xml")
    parser.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the resampling generator")
    parser.add_argument("--level", type=float, default=LEVEL, help="coverage of the interval")
    args = parser.parse_args(argv)
    try:
        result = bootstrap_stdlist(args.stdlist, args.groundtruth_dir, args.resamples, args.seed, args.level)
    except (TWVError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
