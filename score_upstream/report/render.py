"""Writing the tables people read, and rendering the ``score-results`` table.

Every CSV and Markdown table the reports write goes through this module: :func:`write_csv` (the ``csv``
module, a ``#`` provenance header, strings quoted so that a ``,``, ``"`` or ``#`` in a name survives
``pandas.read_csv(path, comment="#")``), :func:`markdown_table` (cells with ``|``, ``\\`` and newlines
escaped) and :func:`write_text`, each written atomically (:mod:`score_upstream.atomic`). The
``score-results`` records come from :func:`score_upstream.report.results.build_table`; :func:`markdown` only
formats them.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from score_upstream.atomic import atomic_write_bytes
from score_upstream.report.results import LAST, METRICS, NA, REL_KEY, TASK_OF

VS = {"hubert": "HuBERT", "wavlm": "WavLM", "spin": "SPIN (same family)"}


def _cell(value, digits: int, percent: bool = False) -> str:
    if isinstance(value, str) or value is None:
        return value or NA
    return f"{value:+.{digits}f}%" if percent else f"{value:.{digits}f}"


def _lines(header: Iterable[str]) -> list[str]:
    """Header entries split at their line breaks (a banner may hold several lines)."""
    return [line for h in header for line in str(h).splitlines() or [""]]


def write_text(text: str, path: str | Path) -> Path:
    """``text`` as UTF-8 to ``path``, atomically (a Markdown report, a log people read)."""
    return atomic_write_bytes(text.encode("utf-8"), path)


def write_csv(table: Sequence[dict], path: str | Path, header: Iterable[str] = (),
              fieldnames: Sequence[str] | None = None) -> Path:
    """CSV through the ``csv`` module, with ``#`` comment lines on top (``header``), written atomically.

    Read it back with ``pandas.read_csv(path, comment="#")`` or ``csv.reader`` after the ``#`` lines.
    Strings are quoted and numbers bare (``csv.QUOTE_NONNUMERIC``), so a ``,``, ``"``, ``#`` or line break in a
    name stays inside its field; floats keep 6 significant digits.

    Args:
        table: one dict per row; every row has the keys of ``fieldnames``.
        path: output file.
        header: provenance lines (what made the file), each written as ``# line``.
        fieldnames: column order; default the keys of the first row (``["model"]`` for an empty table).
    """
    fields = list(fieldnames) if fieldnames is not None else list(table[0]) if table else ["model"]
    buf = io.StringIO()
    buf.write("".join(f"# {line}\n" for line in _lines(header)))
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
    writer.writeheader()
    for rec in table:
        writer.writerow({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in rec.items()})
    return write_text(buf.getvalue(), path)


def markdown_cell(value) -> str:
    """One Markdown table cell: ``\\`` and ``|`` escaped, line breaks as ``<br>``."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return "<br>".join(text.splitlines())


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """Lines of a Markdown table: the header, the ``|---|`` rule, one line per row (cells escaped).

    Raises:
        ValueError: a row whose cell count differs from ``columns``.
    """
    out = ["| " + " | ".join(markdown_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        row = list(row)
        if len(row) != len(columns):
            raise ValueError(f"Markdown row {row!r} has {len(row)} cells, expected {len(columns)} ({list(columns)})")
        out.append("| " + " | ".join(markdown_cell(c) for c in row) + " |")
    return out


def provenance_block(title: str, header: Iterable[str]) -> list[str]:
    """``# title``, then each header line as a quoted Markdown line: the top of every Markdown report."""
    return [f"# {' '.join(str(title).splitlines())}", "", *(f"> {line}  " for line in _lines(header)), ""]


def value_cell(rec: dict, metric: str) -> str:
    """``38.00 ± 0.50 (n=3)`` for WER/PER over several seeds, ``0.2500 [0.2100, 0.2900]`` for an MTWV with
    its bootstrap interval, the bare value otherwise."""
    value = rec[metric]
    if metric in ("wer", "per"):
        sd = rec[f"{metric}_sd"]
        return _cell(value, 2) + (f" ± {sd:.2f} (n={rec[f'{metric}_n']})" if isinstance(sd, float) else "")
    low, high = rec[f"{metric}_low"], rec[f"{metric}_high"]
    return _cell(value, 4) + (f" [{low:.4f}, {high:.4f}]" if isinstance(low, float) else "")


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def markdown(table: list[dict], header: list[str], title: str) -> str:
    """Two markdown tables (reproduced, reported), rows grouped by family; family and vs-WavLM columns only
    where a WavLM-based row exists, vs-SPIN columns only where a SPIN row exists, last-layer QbE columns only
    where a row has the last layer's MTWV, training columns only where a row was fine-tuned by us."""
    out = provenance_block(title, header)
    trained_any = False
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
        trained = any(isinstance(r.get("train_speech_h"), float) or isinstance(r.get("train_view_speech_h"), float)
                      or r.get("train_method") not in (None, NA, "missing") for r in rows)
        trained_any |= trained
        cols += ["Method", "Speech h", "Speech vs SPIN", "View h through model"] if trained else []
        cols += ["Source" if source == "reported" else "Checkpoint"]
        lines = []
        for r in rows:
            cells = [r["model"], r["kind"]] + ([r["family"]] if wavlm else [])
            cells += [value_cell(r, "wer"), value_cell(r, "per"), value_cell(r, "mtwv"), str(r["qbe_layer"])]
            cells += [value_cell(r, LAST), str(r["qbe_last_layer"])] if LAST in metrics else []
            cells += [_cell(r[f"rel_{REL_KEY[m]}_vs_{k}"], 2, True) for k in kinds for m in metrics]
            if trained:
                ratio = r["train_speech_vs_spin"]
                cells += [str(r["train_method"]), _cell(r["train_speech_h"], 2),
                          f"{ratio:.2f}x" if isinstance(ratio, float) else NA, _cell(r.get("train_view_speech_h"), 2)]
            cells += [r["citation"] or NA]
            lines.append(cells)
        out += [f"## {heading}", "", *markdown_table(cols, lines)]
        notes = [f"{_one_line(r['model'])}: {_one_line(r['notes'])}" for r in rows if r["notes"]]
        scopes = sorted({f"{r['qbe_protocol']} / {r['qbe_scope']}" for r in rows if r["qbe_protocol"] != NA})
        out += [""] + ([f"QbE protocol / scope: {', '.join(scopes)}.", ""] if scopes else []) + [f"- {n}" for n in notes]
        out += [""] if notes else []
    out += ["WER and PER: mean ± sample sd over downstream seeds (n = seeds); MTWV [low, high]: 95% bootstrap "
            "interval over queries. Relative improvement, on the means: (base - new) / base for WER and PER, "
            "(new - base) / base for MTWV; positive = better. Reproduced rows are compared with reproduced "
            "baselines only." + (" Speech h counts the input audio drawn for the fine-tuning updates, as the "
                                 "SCORE paper does (SCORE 3,600 x 8 utterances ~101 h vs SPIN 5,000 x 256 s "
                                 "~356 h); View h through model is the audio of the views that went through the "
                                 "trainable model (SCORE: the student's view; LASER, SPIN: both views); both from "
                                 "each checkpoint, missing where it does not record them." if trained_any else ""), ""]
    return "\n".join(out)
