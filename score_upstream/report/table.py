"""Computing the results tables from the rows :mod:`score_upstream.report.experiments` reads.

Two comparisons, each with its own use:

* Relative improvement on the means (:func:`build_table`, the wide table of ``superb.csv`` and of the second
  section of ``superb.md``): ``(base - new) / base`` for WER and PER, ``(new - base) / base`` for MTWV, in %;
  positive = better. Reproduced rows are compared with the reproduced HuBERT (kind ``hubert``), WavLM (kind
  ``wavlm``) and SPIN (kind ``spin``) rows only, reported rows with the reported ones only, and MTWVs only
  when their protocol and scope agree. It is what papers quote, and says nothing about noise.
* Paired differences with a 95% interval (:func:`comparisons`, the summary on top of ``superb.md`` and the
  lower row of ``superb.png``): every fine-tuned reproduced row against the vanilla row and the SPIN row of
  its family, by :func:`score_upstream.report.paired.differences`, the code that writes ``paired.md``
  (WER/PER paired by downstream seed with a Student-t interval; MTWV by a paired bootstrap over queries,
  which needs the QUESST eval ground truth).

Model families: rows are grouped by family (HuBERT, then WavLM). A fine-tuned model (SCORE, LASER, SPIN,
other) is compared with the vanilla model and the SPIN row *of its own family* (``rel_*_vs_hubert`` for
HuBERT-based rows, ``rel_*_vs_wavlm`` for WavLM-based ones; the other family's column says
``n/a (other family)``); the two vanilla models are compared with each other too.

A task no reproduced row ran (no ``asr/`` folder anywhere, say) reads ``not run`` in the CSV and is left out
of the Markdown and the figure; ``missing`` is kept for a task that ran and left no number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from score_upstream.report.experiments import (
    FAMILIES, LAST, LOWER_IS_BETTER, METRICS, MISSING, NA, NOT_REPORTED, NOT_RUN, OTHER_FAMILY, REL_KEY, VANILLA,
    ModelResult, qbe_mismatch,
)
from score_upstream.report.paired import Difference, differences

logger = logging.getLogger(__name__)


def relative_improvement(metric: str, new: float | None, base: float | None) -> float | None:
    """Relative improvement in %: positive = better. None when a value is missing or base is 0."""
    if new is None or base is None or base == 0:
        return None
    gain = (base - new) if LOWER_IS_BETTER[metric] else (new - base)
    return 100.0 * gain / base


def _baseline(rows: list[ModelResult], kind: str) -> ModelResult | None:
    found = [r for r in rows if r.kind == kind and (r.wer, r.per, r.mtwv) != (None, None, None)]
    if len(found) > 1:
        logger.warning("several %s rows (%s); the first is the baseline", kind, ", ".join(r.name for r in found))
    return found[0] if found else None


def compare(row: ModelResult, base: ModelResult | None, metric: str, kind: str = "hubert") -> float | str:
    """Relative improvement of ``row`` over ``base`` (the ``kind`` baseline) for ``metric``, or why there is none.

    A paper's own relative figure vs HuBERT (``reported_rel``) is quoted as it stands.
    """
    if kind == "hubert" and metric in row.reported_rel:
        return row.reported_rel[metric]
    if base is None:
        return NA
    if base.family != row.family and row.kind not in VANILLA:
        return OTHER_FAMILY
    if getattr(row, metric) is None or getattr(base, metric) is None:
        return MISSING if row.source == "reproduced" else NOT_REPORTED
    mismatch = qbe_mismatch(row, base, metric) if metric in ("mtwv", LAST) else None
    if mismatch:
        return mismatch
    value = relative_improvement(metric, getattr(row, metric), getattr(base, metric))
    return NA if value is None else value


def metrics_run(rows: list[ModelResult]) -> list[str]:
    """The metrics of :data:`METRICS` and :data:`LAST` that some reproduced row ran (its task folder exists,
    or it holds the number), in table order."""
    done = [r for r in rows if r.source == "reproduced"]
    return [m for m in (*METRICS, LAST)
            if any(getattr(r, m) is not None or (m != LAST and m in r.tasks) for r in done)]


def build_table(rows: list[ModelResult]) -> list[dict]:
    """Plain records, one per row, grouped by family: metrics with their uncertainty and relative improvements
    (on the means) vs HuBERT, WavLM and the SPIN row of its own family, of its own source.

    Columns: ``wer``, ``wer_sd``, ``wer_n``, ``wer_lr``, ``wer_lr_dev``, then the same for ``per`` (mean, sd over
    seeds, seed count; with a learning-rate sweep the rate chosen on dev and each rate's mean dev value in %),
    ``mtwv``, ``mtwv_low``, ``mtwv_high``, ``qbe_layer``, ``mtwv_last``, ``mtwv_last_low``, ``mtwv_last_high``,
    ``qbe_last_layer`` (bootstrap intervals over queries), ``qbe_protocol``, ``qbe_scope``, then
    ``rel_{asr,pr,qbe,qbe_last}_vs_{hubert,wavlm,spin}``, ``train_method``, ``train_speech_h`` (input audio
    drawn, the paper's accounting), ``train_speech_vs_spin`` (to the SPIN row of the same family),
    ``train_view_speech_h`` (views through the trainable model), ``citation``, ``notes``. A reproduced
    row's cells of a task no reproduced row ran read ``not run`` (:func:`metrics_run`).
    """
    table = []
    ran = metrics_run(rows)
    for source in ("reproduced", "reported"):
        group = sorted((r for r in rows if r.source == source), key=lambda r: FAMILIES.index(r.family))
        bases = {"hubert": _baseline(group, "hubert"), "wavlm": _baseline(group, "wavlm"),
                 **{("spin", f): _baseline([r for r in group if r.family == f], "spin") for f in FAMILIES}}
        for row in group:
            empty = MISSING if source == "reproduced" else NOT_REPORTED

            def blank(metric: str) -> str:
                return NOT_RUN if source == "reproduced" and metric not in ran else empty

            rec = {"model": row.name, "kind": row.kind, "family": row.family, "source": source}
            for metric in ("wer", "per"):
                rec[metric] = blank(metric) if getattr(row, metric) is None else getattr(row, metric)
                rec[f"{metric}_sd"] = row.sd.get(metric, NA)
                rec[f"{metric}_n"] = len(row.runs[metric]) if metric in row.runs else NA
                sweep = row.lrs.get(metric)
                # a learning-rate sweep: the rate chosen on dev, and every rate's mean dev value (in %)
                rec[f"{metric}_lr"] = sweep["lr"] if sweep else NA
                rec[f"{metric}_lr_dev"] = "; ".join(f"{lr}: {100 * sweep['dev'][lr]['mean']:.2f}"
                                                    for lr in sweep["lrs"]) if sweep else NA
            for metric, layer in (("mtwv", row.qbe_layer), (LAST, row.qbe_last_layer)):
                rec[metric] = blank(metric) if getattr(row, metric) is None else getattr(row, metric)
                low, high = row.intervals.get(metric, (NA, NA))
                rec[f"{metric}_low"], rec[f"{metric}_high"] = low, high
                key = "qbe_layer" if metric == "mtwv" else "qbe_last_layer"
                rec[key] = layer if layer is not None else (blank(metric) if source == "reproduced" else NA)
            rec["qbe_protocol"] = row.qbe_protocol or NA
            rec["qbe_scope"] = row.qbe_scope or NA
            for kind in ("hubert", "wavlm", "spin"):
                base = bases[("spin", row.family)] if kind == "spin" else bases[kind]
                for metric in (*METRICS, LAST):
                    rel = compare(row, base, metric, kind)
                    rec[f"rel_{REL_KEY[metric]}_vs_{kind}"] = blank(metric) if rel == MISSING else rel
            # a vanilla model was not fine-tuned: nothing is missing from its row
            no_run = NA if source == "reported" or row.kind in ("hubert", "wavlm") else empty
            rec["train_method"] = row.train_method or no_run
            hours = row.train_input_speech_hours
            rec["train_speech_h"] = hours if hours is not None else no_run
            spin = bases[("spin", row.family)]
            spin_h = spin.train_input_speech_hours if spin is not None else None
            rec["train_speech_vs_spin"] = hours / spin_h if hours is not None and spin_h else NA
            views = row.train_view_speech_hours
            rec["train_view_speech_h"] = views if views is not None else no_run
            rec["citation"] = row.citation
            rec["notes"] = "; ".join(row.notes)
            table.append(rec)
    return table


def baselines(rows: list[ModelResult]) -> dict[tuple[str, str], ModelResult]:
    """The reproduced rows others are compared with: ``("vanilla", family)`` (kind ``hubert`` / ``wavlm``) and
    ``("spin", family)``, where such a row exists."""
    done = [r for r in rows if r.source == "reproduced"]
    found = {}
    for family in FAMILIES:
        for role, kind, group in (("vanilla", family, done), ("spin", "spin", [r for r in done if r.family == family])):
            base = _baseline(group, kind)
            if base is not None and (role == "spin" or base.family == family):
                found[(role, family)] = base
    return found


@dataclass(frozen=True)
class Comparison:
    """One row against one baseline: ``diffs`` maps each metric both have to its paired :class:`Difference`
    or to why there is none (``n/a (...)``)."""

    against: str
    diffs: dict[str, Difference | str]


def comparisons(rows: list[ModelResult], gt=None) -> dict[str, dict[str, Comparison]]:
    """Paired differences of every reproduced row against its family's vanilla row (``"vanilla"``) and SPIN row
    (``"spin"``): ``{model: {role: Comparison}}``; a row is never compared with itself, vanilla rows with
    nothing.

    Args:
        rows: rows of :func:`score_upstream.report.experiments.read_experiment` (reported rows are ignored).
        gt: the QUESST eval ground truth (a :class:`score_upstream.qbe.twv.GroundTruth`); None: the
            MTWV differences say ``n/a (no --groundtruth)``.
    """
    bases = baselines(rows)
    out: dict[str, dict[str, Comparison]] = {}
    for row in rows:
        if row.source != "reproduced" or row.kind in VANILLA:
            continue
        if row.name in out:
            logger.warning("two reproduced rows named %r; the summary compares the first", row.name)
            continue
        out[row.name] = {}
        for role in ("vanilla", "spin"):
            base = bases.get((role, row.family))
            if base is not None and base is not row:
                out[row.name][role] = Comparison(base.name, differences(base, row, gt))
    return out
