"""Paired differences against a baseline: is a model better by more than the noise of the measurement?

Run it as::

    python -m score_upstream.report.paired exp/demo/hubert exp/demo/score exp/demo/laser \\
        --groundtruth data/demo/quesst14Database/scoring/groundtruth_quesst14_eval --out results/demo

The first experiment folder is the baseline. Writes ``OUT/paired.md`` and ``OUT/paired.csv`` (columns
:data:`CSV_FIELDS` under ``#`` provenance lines: ``pandas.read_csv(path, comment="#")``): for every other
model and metric, the difference ``new - base`` with its 95% interval, the relative improvement and
whether the interval excludes zero.

Two models evaluated on the same material share its noise, so their *difference* is far better
determined than the two separate intervals suggest (overlapping intervals do not mean "no difference"):

* WER / PER: the downstream runs are paired by seed (the same seed gives the same head initialisation and
  batch order); ``d_s = new_s - base_s`` over the seeds both have, mean ± sd and a Student-t interval
  (n - 1 degrees of freedom). With 3 seeds the t factor is 4.30, so it takes a consistent difference.
* MTWV: a paired bootstrap over queries, the sampling unit of QUESST: each resample draws the same
  queries for both systems (:func:`score_upstream.qbe.bootstrap.query_counts` with one seed) and the
  difference of their maxTWVs is recorded; the interval is its 2.5th-97.5th percentile. Computed for
  the layer each model's protocol reported and for its last layer (``qbe/eval/layer<L>/``).

Sign convention: the difference is ``new - base`` in the metric's own unit; ``better`` says whether the
interval lies wholly on the improving side (below zero for WER and PER, above for MTWV).
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from score_upstream.qbe.bootstrap import LEVEL, N_RESAMPLES, SEED, query_counts, resampled_max_twv
from score_upstream.qbe.stdlist import STDLIST_NAME
from score_upstream.qbe.twv import TWVError, max_twv, read_ground_truth, read_stdlist
from score_upstream.report.experiments import (
    LAST, LOWER_IS_BETTER, ModelResult, ResultsError, qbe_mismatch, read_experiment,
)
from score_upstream.report.provenance import header_lines
from score_upstream.report.render import markdown_table, provenance_block, write_csv, write_text

logger = logging.getLogger(__name__)

LABEL = {"wer": "WER %", "per": "PER %", "mtwv": "MTWV (protocol layer)", LAST: "MTWV last layer"}
FEW_SEEDS = "n/a (fewer than 2 seeds in common)"
NO_GROUNDTRUTH = "n/a (no --groundtruth)"
NO_SCORES = "n/a (no eval scores to resample)"


@dataclass(frozen=True)
class Difference:
    """``new - base`` for one metric: point value, 95% interval, how it was obtained."""

    metric: str
    base: float
    new: float
    diff: float
    low: float
    high: float
    method: str  # "seeds (n=3, t)" or "bootstrap (1000 x 50 queries)"

    @property
    def relative(self) -> float:
        """Relative improvement in % (positive = better), as the results table defines it."""
        gain = -self.diff if LOWER_IS_BETTER[self.metric] else self.diff
        return 100.0 * gain / self.base if self.base else math.nan

    @property
    def better(self) -> str:
        """``yes`` / ``no`` (interval wholly on the improving / worsening side), ``not shown`` otherwise."""
        lo, hi = (-self.high, -self.low) if LOWER_IS_BETTER[self.metric] else (self.low, self.high)
        return "yes" if lo > 0 else "worse" if hi < 0 else "not shown"

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` / ``not shown``: :attr:`better` in the words of the results summary."""
        return {"yes": "better"}.get(self.better, self.better)


def seed_difference(metric: str, base: dict, new: dict, level: float = LEVEL) -> Difference | None:
    """Paired-by-seed difference of two models' per-seed values ({seed: value}); None with fewer than 2
    shared seeds (no spread to estimate)."""
    from scipy.stats import t as student_t

    seeds = sorted(set(base) & set(new), key=str)
    if len(seeds) < 2:
        return None
    d = [new[s] - base[s] for s in seeds]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    half = float(student_t.ppf(0.5 + level / 2, len(d) - 1)) * sd / math.sqrt(len(d))
    return Difference(metric, statistics.fmean(base[s] for s in seeds), statistics.fmean(new[s] for s in seeds),
                      mean, mean - half, mean + half, f"seeds (n={len(d)}, t)")


def bootstrap_difference(metric: str, base_scores: np.ndarray, new_scores: np.ndarray, targets: np.ndarray,
                         n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Difference:
    """Paired bootstrap over queries of ``maxTWV(new) - maxTWV(base)`` on the same (Q, D) ``targets``."""
    counts = query_counts(len(targets), n_resamples, seed)
    diffs = resampled_max_twv(new_scores, targets, counts) - resampled_max_twv(base_scores, targets, counts)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    base, new = max_twv(base_scores, targets)[0], max_twv(new_scores, targets)[0]
    return Difference(metric, base, new, new - base, float(low), float(high),
                      f"bootstrap ({n_resamples} x {len(targets)} queries)")


def _stdlist_scores(expdir: Path, layer: int | None, gt) -> np.ndarray | None:
    if layer is None:
        return None
    path = expdir / "qbe" / "eval" / f"layer{layer}" / STDLIST_NAME
    if not path.is_file():
        logger.warning("%s: missing; no paired QbE difference for this layer", path)
        return None
    return read_stdlist(path, gt).scores


def differences(base: ModelResult, new: ModelResult, gt=None) -> dict[str, Difference | str]:
    """Every paired difference of ``new`` against ``base``: metric -> :class:`Difference`, or why there is none.

    A metric either row lacks is left out. WER/PER: paired by seed (:func:`seed_difference`); MTWV and the last
    layer's: paired bootstrap over queries (:func:`bootstrap_difference`) of the ``benchmark.stdlist.xml`` in
    each row's ``expdir/qbe/eval/layer<L>/``, when ``gt`` (:class:`score_upstream.qbe.twv.GroundTruth`, the
    eval ground truth) is given and the two MTWVs are comparable (same QbE protocol and scope).
    """
    out: dict[str, Difference | str] = {}
    for metric in ("wer", "per"):
        if getattr(base, metric) is not None and getattr(new, metric) is not None:
            d = seed_difference(metric, base.runs.get(metric, {}), new.runs.get(metric, {}))
            out[metric] = FEW_SEEDS if d is None else d
    for metric, attr in (("mtwv", "qbe_layer"), (LAST, "qbe_last_layer")):
        if getattr(base, metric) is None or getattr(new, metric) is None:
            continue
        if gt is None or base.expdir is None or new.expdir is None:
            out[metric] = qbe_mismatch(new, base, metric) or NO_GROUNDTRUTH
            continue
        out[metric] = qbe_mismatch(new, base, metric) or NO_SCORES
        if out[metric] == NO_SCORES:
            b = _stdlist_scores(base.expdir, getattr(base, attr), gt)
            n = _stdlist_scores(new.expdir, getattr(new, attr), gt)
            if b is not None and n is not None:
                out[metric] = bootstrap_difference(metric, b, n, gt.targets)
    return out


def compare_models(base_dir: Path, new_dir: Path, groundtruth: Path | None) -> tuple[ModelResult, list[Difference]]:
    """Every paired difference of ``new_dir``'s model against ``base_dir``'s that both folders allow."""
    base, new = read_experiment(base_dir), read_experiment(new_dir)
    gt = read_ground_truth(groundtruth) if groundtruth is not None else None
    return new, [d for d in differences(base, new, gt).values() if isinstance(d, Difference)]


CSV_FIELDS = ["model", "metric", "base", "new", "diff", "low", "high", "relative_pct", "better", "method"]


def render(base: str, rows: list[tuple[str, Difference]], header: list[str]) -> tuple[str, list[dict]]:
    """The differences as Markdown text and as CSV records (keys :data:`CSV_FIELDS`)."""
    cells, records = [], []
    for name, d in rows:
        digits = 2 if d.metric in ("wer", "per") else 4
        cells.append([name, LABEL[d.metric], f"{d.base:.{digits}f}", f"{d.new:.{digits}f}",
                      f"{d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]", f"{d.relative:+.2f}%",
                      d.better, d.method])
        records.append(dict(zip(CSV_FIELDS, (name, d.metric, d.base, d.new, d.diff, d.low, d.high, d.relative,
                                             d.better, d.method))))
    md = provenance_block("Paired differences against " + base, header) + markdown_table(
        ["Model", "Metric", "Base", "Model", "Difference [95% interval]", "Relative", "Better?", "How"], cells)
    md += ["", "Difference = model - base in the metric's unit; Better? = yes when the whole interval lies on the "
           "improving side (lower WER/PER, higher MTWV), worse when it lies on the other, not shown otherwise.", ""]
    return "\n".join(md), records


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.report.paired BASE_EXPDIR EXPDIR... [--groundtruth DIR] --out DIR``."""
    from score_upstream.cliparse import ScoreArgumentParser

    parser = ScoreArgumentParser(prog="score-paired", description=__doc__.split("\n\n")[0], examples=[
        "score-paired exp/demo/hubert exp/demo/score exp/demo/spin --out results/demo "
        "--groundtruth data/demo/quesst14Database/scoring/groundtruth_quesst14_eval"])
    parser.add_argument("base", help="experiment folder of the baseline (e.g. the starting HuBERT)")
    parser.add_argument("expdirs", nargs="+", help="experiment folders of the models compared with it")
    parser.add_argument("--groundtruth", default=None, help="QUESST eval ground truth (groundtruth_quesst14_eval) for MTWV")
    parser.add_argument("--out", required=True, help="folder for paired.md and paired.csv")
    parser.add_argument("--banner", default="", help="warning line on top, e.g. for demo numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        gt = read_ground_truth(args.groundtruth) if args.groundtruth else None
        base = read_experiment(args.base)
        rows = []
        for d in args.expdirs:
            new = read_experiment(d)
            rows += [(new.name, x) for x in differences(base, new, gt).values() if isinstance(x, Difference)]
    except (ResultsError, TWVError) as e:
        print(f"score-paired: error: {e}", file=sys.stderr)
        return 2
    header = header_lines("score-paired", argv, args.banner)
    md, records = render(base.name, rows, header)
    out = Path(args.out)
    write_text(md, out / "paired.md")
    write_csv(records, out / "paired.csv", header, fieldnames=CSV_FIELDS)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
