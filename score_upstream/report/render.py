"""Rendering of the ``score-results`` table: CSV with a provenance header and the Markdown tables.

The records come from :func:`score_upstream.report.results.build_table`; this module only formats them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from score_upstream.report.results import LAST, METRICS, NA, REL_KEY, TASK_OF


VS = {"hubert": "HuBERT", "wavlm": "WavLM", "spin": "SPIN (same family)"}


def _cell(value, digits: int, percent: bool = False) -> str:
    if isinstance(value, str) or value is None:
        return value or NA
    return f"{value:+.{digits}f}%" if percent else f"{value:.{digits}f}"


def write_csv(table: list[dict], path: Path, header: list[str]) -> Path:
    """CSV with ``#`` comment lines on top (read with ``pandas.read_csv(path, comment="#")``)."""
    from score_upstream.atomic import atomic_write_bytes

    buf = io.StringIO()
    buf.write("".join(f"# {h}\n" for h in header))
    writer = csv.DictWriter(buf, fieldnames=list(table[0]) if table else ["model"], lineterminator="\n")
    writer.writeheader()
    for rec in table:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})
    return atomic_write_bytes(buf.getvalue().encode(), path)


def value_cell(rec: dict, metric: str) -> str:
    """``38.00 ± 0.50 (n=3)`` for WER/PER over several seeds, ``0.2500 [0.2100, 0.2900]`` for an MTWV with
    its bootstrap interval, the bare value otherwise."""
    value = rec[metric]
    if metric in ("wer", "per"):
        sd = rec[f"{metric}_sd"]
        return _cell(value, 2) + (f" ± {sd:.2f} (n={rec[f'{metric}_n']})" if isinstance(sd, float) else "")
    low, high = rec[f"{metric}_low"], rec[f"{metric}_high"]
    return _cell(value, 4) + (f" [{low:.4f}, {high:.4f}]" if isinstance(low, float) else "")


def markdown(table: list[dict], header: list[str], title: str) -> str:
    """Two markdown tables (reproduced, reported), rows grouped by family; family and vs-WavLM columns only
    where a WavLM-based row exists, vs-SPIN columns only where a SPIN row exists, last-layer QbE columns only
    where a row has the last layer's MTWV."""
    out = [f"# {title}", "", *(f"> {h}  " for h in header), ""]
    for source, heading in (("reproduced", "Reproduced by this project"), ("reported", "Reported by papers")):
        rows = [r for r in table if r["source"] == source]
        if not rows:
            continue
        wavlm = any(r["family"] == "wavlm" for r in rows)
        kinds = ["hubert"] + (["wavlm"] if wavlm else []) + (["spin"] if any(r["kind"] == "spin" for r in rows) else [])
        metrics = [*METRICS] + ([LAST] if any(isinstance(r[LAST], float) for r in rows) else [])
        cols = ["Model", "Kind"] + (["Family"] if wavlm else []) + ["WER % (ASR)", "PER % (PR)", "MTWV (QbE)", "QbE layer"]
        cols += ["MTWV last layer", "Last layer"] if LAST in metrics else []
        cols += [f"{TASK_OF[m]} vs {VS[k]}" for k in kinds for m in metrics]
        trained = any(isinstance(r.get("train_speech_h"), float) or r.get("train_method") not in (None, NA, "missing")
                      for r in rows)
        cols += ["Method", "Speech h", "Speech vs SPIN"] if trained else []
        cols += ["Source" if source == "reported" else "Checkpoint"]
        out += [f"## {heading}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [r["model"], r["kind"]] + ([r["family"]] if wavlm else [])
            cells += [value_cell(r, "wer"), value_cell(r, "per"), value_cell(r, "mtwv"), str(r["qbe_layer"])]
            cells += [value_cell(r, LAST), str(r["qbe_last_layer"])] if LAST in metrics else []
            cells += [_cell(r[f"rel_{REL_KEY[m]}_vs_{k}"], 2, True) for k in kinds for m in metrics]
            if trained:
                ratio = r["train_speech_vs_spin"]
                cells += [str(r["train_method"]), _cell(r["train_speech_h"], 2),
                          f"{ratio:.2f}x" if isinstance(ratio, float) else NA]
            cells += [r["citation"] or NA]
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        notes = [f"{r['model']}: {r['notes']}" for r in rows if r["notes"]]
        scopes = sorted({f"{r['qbe_protocol']} / {r['qbe_scope']}" for r in rows if r["qbe_protocol"] != NA})
        out += [""] + ([f"QbE protocol / scope: {', '.join(scopes)}.", ""] if scopes else []) + [f"- {n}" for n in notes]
        out += [""] if notes else []
    out += ["WER and PER: mean ± sample sd over downstream seeds (n = seeds); MTWV [low, high]: 95% bootstrap "
            "interval over queries. Relative improvement, on the means: (base - new) / base for WER and PER, "
            "(new - base) / base for MTWV; positive = better. Reproduced rows are compared with reproduced "
            "baselines only." + (" Speech h: hours of speech through the trainable model during fine-tuning "
                                 "(SCORE: the student's view; LASER, SPIN: both views), from each checkpoint."
                                 if any(isinstance(r.get("train_speech_h"), float) for r in table) else ""), ""]
    return "\n".join(out)
