"""``score-results``: the SUPERB results page of a set of experiments, next to what papers reported.

Run it as::

    score-results exp/hubert exp/score exp/spin --out results/ \\
        --groundtruth data/quesst14Database/scoring/groundtruth_quesst14_eval
    score-results exp/demo/* --out results/demo --banner "DEMO numbers on synthetic speech" --no-reported

Writes ``OUT/superb.md``: a summary a reader takes in at once (per model, each task run with its
uncertainty and the paired difference to the vanilla model and to SPIN with its 95% interval and a
verdict: better / worse / not shown), the figure, the wide table, and a provenance footer (command,
versions, each row's experiment folder and checkpoint, paths relative to the working directory);
``OUT/superb.csv``: the wide table, every column; ``OUT/superb.png``: the summary drawn. The first
experiment of each kind ``hubert`` / ``wavlm`` / ``spin`` is the baseline of its family.
``--groundtruth`` (the QUESST eval ground truth) lets the MTWV differences be computed by a paired
bootstrap over queries; without it they read ``n/a (no --groundtruth)``.

The work is split along what it does:

* :mod:`score_upstream.report.experiments` reads an experiment folder (its layout is documented there) and
  ``results/reported.csv``;
* :mod:`score_upstream.report.table` computes the relative improvements (wide table) and, through
  :mod:`score_upstream.report.paired`, the paired differences (summary);
* :mod:`score_upstream.report.render` writes the CSV and Markdown, :mod:`score_upstream.report.plot` the
  figure, :mod:`score_upstream.report.provenance` what made them.

This module only wires them together; the names other code reads here (``read_experiment``,
``parse_s3prl_log``, ``build_table``, ``provenance``, ...) are those modules' own.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from score_upstream.report.experiments import (
    FAMILIES, KINDS, LAST, LOWER_IS_BETTER, METRICS, MISSING, NA, NOT_REPORTED, NOT_RUN, OTHER_FAMILY, REL_KEY,
    TASK_OF, VANILLA, ModelResult, ResultsError, Training, default_family, empty_experiment, error_rate_from_arks,
    parse_s3prl_log, read_experiment, read_qbe_result, read_reported, read_runs, read_training,
)
from score_upstream.report.provenance import header_lines, provenance
from score_upstream.report.table import build_table, compare, comparisons, relative_improvement

logger = logging.getLogger(__name__)

# what recipes/lib/common.sh, the training code and the tests read here, from the modules that define it
__all__ = [
    "FAMILIES", "KINDS", "LAST", "LOWER_IS_BETTER", "METRICS", "MISSING", "NA", "NOT_REPORTED", "NOT_RUN",
    "OTHER_FAMILY", "REL_KEY", "TASK_OF", "VANILLA", "ModelResult", "ResultsError", "Training", "build_table",
    "compare", "comparisons", "default_family", "error_rate_from_arks", "main", "parse_s3prl_log", "provenance",
    "read_experiment", "read_qbe_result", "read_reported", "read_runs", "read_training", "relative_improvement",
]


def _sources(rows: list[ModelResult]) -> list[dict]:
    return [{"model": r.name, "expdir": r.expdir, "upstream": r.upstream, "ckpt": r.ckpt, "sha256": r.ckpt_sha256}
            for r in rows if r.source == "reproduced"]


def main(argv: list[str] | None = None) -> int:
    """``score-results EXPDIR... --out DIR [--groundtruth DIR] [--reported CSV | --no-reported] [--title T]
    [--banner B]``."""
    from score_upstream.cliparse import ScoreArgumentParser

    parser = ScoreArgumentParser(prog="score-results", description="SUPERB ASR/PR/QbE tables from experiment folders.",
                                 examples=["score-results exp/superb/hubert exp/superb/score --out results/superb",
                                           "score-results exp/demo/hubert exp/demo/score --out results/demo --no-reported "
                                           "--groundtruth data/demo/quesst14Database/scoring/groundtruth_quesst14_eval"])
    parser.add_argument("expdirs", nargs="*", help="one experiment root per model (score_upstream.report.experiments)")
    parser.add_argument("--out", default="results", help="output folder (superb.csv, superb.md, superb.png)")
    parser.add_argument("--groundtruth", default=None,
                        help="QUESST eval ground truth (scoring/groundtruth_quesst14_eval) for the paired MTWV differences")
    parser.add_argument("--reported", default=None, help="published numbers; empty = results/reported.csv if present")
    parser.add_argument("--no-reported", action="store_true", help="leave the published numbers out")
    parser.add_argument("--title", default="SUPERB: SCORE vs HuBERT (WavLM) vs SPIN", help="table and plot title")
    parser.add_argument("--banner", default="", help="warning line on top of every output, e.g. for demo numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from score_upstream.qbe.twv import TWVError, read_ground_truth
    from score_upstream.report.plot import plot
    from score_upstream.report.render import markdown, write_csv, write_text

    try:
        # a folder holding other experiments, or nothing given holding any: nothing to tabulate, say so
        empty = {d: empty_experiment(d) for d in args.expdirs}
        for d, why in empty.items():
            if why and (len(args.expdirs) == 1 or "it holds" in why or all(empty.values())):
                raise ResultsError(why)
        rows = [read_experiment(d) for d in args.expdirs]
        if not args.no_reported:
            reported = Path(args.reported or "results/reported.csv")
            if reported.is_file() or args.reported:
                rows += read_reported(reported)
            else:
                logger.warning("%s not found; table without published numbers", reported)
        if not rows:
            raise ResultsError("nothing to tabulate: give EXPDIRs and/or a reported table")
        try:
            gt = read_ground_truth(args.groundtruth) if args.groundtruth else None
        except TWVError as e:
            raise ResultsError(f"--groundtruth {args.groundtruth}: {e}") from None
        header = header_lines("score-results", argv)
        # the figure may be seen alone, so it carries the banner in its title; the page has it as its own line
        figure_title = f"{args.title} ({args.banner})" if args.banner else args.title
        table = build_table(rows)
        paired = comparisons(rows, gt)
        out = Path(args.out)
        write_csv(table, out / "superb.csv", [args.banner, *header] if args.banner else header)
        plot(table, paired, out / "superb.png", figure_title)
        write_text(markdown(table, header, args.title, banner=args.banner, comparisons=paired, sources=_sources(rows),
                            figure="superb.png"), out / "superb.md")
    except ResultsError as e:
        print(f"score-results: error: {e}", file=sys.stderr)
        return 2
    print((out / "superb.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
