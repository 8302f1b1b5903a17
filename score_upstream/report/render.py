"""Writing the tables people read, and rendering the ``score-results`` page.

Every CSV and Markdown table the reports write goes through this module: :func:`write_csv` (the ``csv``
module, a ``#`` provenance header, strings quoted so that a ``,``, ``"`` or ``#`` in a name survives
``pandas.read_csv(path, comment="#")``), :func:`markdown_table` (cells with ``|``, ``\\`` and newlines
escaped) and :func:`write_text`, each written atomically (:mod:`score_upstream.atomic`). What made a file
(:func:`provenance`, :func:`header_lines`) is written with paths relative to the working directory
(:func:`display_path`): no Markdown the tools write holds an absolute path.

``superb.md`` (:func:`markdown`) opens with the summary (:func:`summary_table`: per model, each task's value
with its uncertainty and the paired difference to the baseline and to SPIN with its 95% interval and a
verdict), then the wide table of :func:`score_upstream.report.table.build_table` (the columns of
``superb.csv``), then the provenance: the command, versions, and each row's experiment folder and checkpoint.
The records and paired differences come from :mod:`score_upstream.report.table`; this module only formats.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from score_upstream.atomic import atomic_write_bytes
from score_upstream.report.experiments import LAST, METRICS, MISSING, NA, REL_KEY, TASK_OF
from score_upstream.report.provenance import display_path

VS = {"hubert": "HuBERT", "wavlm": "WavLM", "spin": "SPIN (same family)"}
LABEL = {"wer": "WER % (ASR)", "per": "PER % (PR)", "mtwv": "MTWV (QbE)", LAST: "MTWV last layer (QbE)"}
DIGITS = {"wer": 2, "per": 2, "mtwv": 3, LAST: 3}  # of the summary's values and differences


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


def value_cell(rec: dict, metric: str, digits: int | None = None) -> str:
    """``38.00 ± 0.50 (n=3)`` for WER/PER over several seeds (``(n=3, lr 1e-3)`` with the learning rate a sweep
    chose on dev), ``0.2500 [0.2100, 0.2900]`` for an MTWV with
    its bootstrap interval, the bare value otherwise (``digits``: 2 for WER/PER, 4 for MTWV by default)."""
    value = rec[metric]
    if metric in ("wer", "per"):
        sd = rec[f"{metric}_sd"]
        d = 2 if digits is None else digits
        lr = rec.get(f"{metric}_lr", NA)
        lr = "" if lr == NA else f"lr {lr}"  # the learning rate chosen on dev by a sweep
        if isinstance(sd, float):
            return _cell(value, d) + f" ± {sd:.{d}f} (n={rec[f'{metric}_n']}{', ' + lr if lr else ''})"
        return _cell(value, d) + (f" ({lr})" if lr else "")
    d = 4 if digits is None else digits
    low, high = rec[f"{metric}_low"], rec[f"{metric}_high"]
    return _cell(value, d) + (f" [{low:.{d}f}, {high:.{d}f}]" if isinstance(low, float) else "")


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())


def shown_metrics(records: list[dict]) -> list[str]:
    """The metrics a group of records has something for (a value, ``missing``, or a paper's relative figure);
    a task no row ran (``not run``) or no paper reported is left out."""
    return [m for m in (*METRICS, LAST) if any(
        isinstance(r[m], float) or r[m] == MISSING or isinstance(r.get(f"rel_{REL_KEY[m]}_vs_hubert"), float)
        for r in records)]


def difference_cell(diff, metric: str) -> str:
    """``**better** -2.00 [-3.24, -0.76]`` from a paired difference; a reason (``n/a (...)``) as it stands."""
    if isinstance(diff, str):
        return diff
    d = DIGITS[metric]
    verdict = diff.verdict if diff.verdict == "not shown" else f"**{diff.verdict}**"
    return f"{verdict} {diff.diff:+.{d}f} [{diff.low:+.{d}f}, {diff.high:+.{d}f}]"


def _against(comparisons: dict, role: str) -> str | None:
    names = sorted({c[role].against for c in comparisons.values() if role in c})
    if not names:
        return None
    return f"vs {names[0]}" if len(names) == 1 else ("vs its vanilla model" if role == "vanilla" else "vs SPIN")


def summary_table(table: list[dict], comparisons: dict) -> list[str]:
    """The compact table: per reproduced model, each task run with its value and uncertainty, then the paired
    difference to the vanilla model of its family and to its SPIN row (where one exists) with a verdict.

    Args:
        table: records of :func:`score_upstream.report.table.build_table`.
        comparisons: :func:`score_upstream.report.table.comparisons` of the same rows.
    """
    rows = [r for r in table if r["source"] == "reproduced"]
    metrics = shown_metrics(rows)
    roles = [(role, head) for role in ("vanilla", "spin") if (head := _against(comparisons, role))]
    bases = {(role, c.against) for cs in comparisons.values() for role, c in cs.items()}
    columns = ["Model"]
    for m in metrics:
        columns += [LABEL[m]] + [head for _, head in roles]
    lines = []
    for r in rows:
        cells = [r["model"]]
        for m in metrics:
            value = value_cell(r, m, DIGITS[m])
            if m == "mtwv" and isinstance(r["qbe_layer"], int):
                value += f" (layer {r['qbe_layer']})"
            cells.append(value)
            for role, _ in roles:
                mine = comparisons.get(r["model"], {}).get(role)
                if (role, r["model"]) in bases:
                    cells.append("baseline")
                elif mine is None:
                    cells.append("—")
                else:
                    why = MISSING if r[m] == MISSING else f"{NA} (no {mine.against} value)"
                    cells.append(difference_cell(mine.diffs.get(m, why), m))
        lines.append(cells)
    return markdown_table(columns, lines)


def error_rates(metrics: list[str]) -> str:
    """``WER and PER``, ``PER`` ...: the error rates among ``metrics``, as the notes name them."""
    return " and ".join(m.upper() for m in ("wer", "per") if m in metrics)


def summary_note(metrics: list[str]) -> str:
    """How to read the summary, naming only the metrics it shows."""
    rates, mtwv = error_rates(metrics), any(m in metrics for m in ("mtwv", LAST))
    value = "; ".join(([f"mean ± sd over downstream seeds (n) for {rates}"] if rates else [])
                      + (["MTWV [95% bootstrap interval over queries]"] if mtwv else []))
    how = ", ".join(([f"by downstream seed with a Student-t interval for {rates}"] if rates else [])
                    + (["by a paired bootstrap over queries for MTWV"] if mtwv else []))
    sides = ", ".join(([f"lower {rates}"] if rates else []) + (["higher MTWV"] if mtwv else []))
    return (f"Value: {value}. vs X: the paired difference model - X in the metric's unit, with its 95% interval: "
            f"{how} (the computation of `score_upstream.report.paired`). **better** / **worse**: the whole "
            f"interval lies on the improving ({sides}) / worsening side of zero; not shown: the interval holds "
            "zero, the data cannot tell. Tasks not run are left out.")


def _wide_table(rows: list[dict], source: str) -> tuple[list[str], bool]:
    """One section of the wide table (every column of ``superb.csv`` a reader needs) and whether it has training
    columns."""
    wavlm = any(r["family"] == "wavlm" for r in rows)
    kinds = ["hubert"] + (["wavlm"] if wavlm else []) + (["spin"] if any(r["kind"] == "spin" for r in rows) else [])
    metrics = shown_metrics(rows)
    cols = ["Model", "Kind"] + (["Family"] if wavlm else [])
    cols += [LABEL[m] for m in metrics if m != LAST] + (["QbE layer"] if "mtwv" in metrics else [])
    cols += ["MTWV last layer", "Last layer"] if LAST in metrics else []
    cols += [f"{TASK_OF[m]} vs {VS[k]}" for k in kinds for m in metrics]
    trained = any(isinstance(r.get("train_speech_h"), float) or isinstance(r.get("train_view_speech_h"), float)
                  or r.get("train_method") not in (None, NA, MISSING) for r in rows)
    cols += ["Method", "Speech h", "Speech vs SPIN", "View h through model"] if trained else []
    cols += ["Source"] if source == "reported" else []
    lines = []
    for r in rows:
        cells = [r["model"], r["kind"]] + ([r["family"]] if wavlm else [])
        cells += [value_cell(r, m) for m in metrics if m != LAST] + ([str(r["qbe_layer"])] if "mtwv" in metrics else [])
        cells += [value_cell(r, LAST), str(r["qbe_last_layer"])] if LAST in metrics else []
        cells += [_cell(r[f"rel_{REL_KEY[m]}_vs_{k}"], 2, True) for k in kinds for m in metrics]
        if trained:
            ratio = r["train_speech_vs_spin"]
            cells += [str(r["train_method"]), _cell(r["train_speech_h"], 2),
                      f"{ratio:.2f}x" if isinstance(ratio, float) else NA, _cell(r.get("train_view_speech_h"), 2)]
        cells += [r["citation"] or NA] if source == "reported" else []
        lines.append(cells)
    return markdown_table(cols, lines), trained


def sources_table(sources: list[dict]) -> list[str]:
    """Where each reproduced row came from: experiment folder, upstream, checkpoint (paths relative to the
    working directory) and the checkpoint's SHA-256 where ``model.json`` records it."""
    lines = [[s["model"], display_path(s["expdir"]) if s.get("expdir") else NA, s.get("upstream") or NA,
              display_path(s["ckpt"]) if s.get("ckpt") else NA, (s.get("sha256") or NA)[:16]] for s in sources]
    return markdown_table(["Model", "Experiment folder", "Upstream", "Checkpoint", "SHA-256 (first 16)"], lines)


def markdown(table: list[dict], header: list[str], title: str, banner: str = "", comparisons: dict | None = None,
             sources: list[dict] | None = None, figure: str | None = None) -> str:
    """``superb.md``: title and banner, the summary (with ``comparisons``), the figure, the wide tables
    (reproduced, reported; rows grouped by family, columns only for what some row has), then the provenance
    footer: ``header`` (what made it) and ``sources`` (:func:`sources_table`)."""
    out = provenance_block(title, [banner] if banner else [])
    reproduced = [r for r in table if r["source"] == "reproduced"]
    if header or sources:
        out += ["Made by `score-results`; the command, versions and checkpoints are under Provenance at the end.", ""]
    if reproduced and comparisons is not None:
        out += ["## Summary", "", *summary_table(table, comparisons), "", summary_note(shown_metrics(reproduced)), ""]
    if figure:
        out += [f"![Each task per model, and the paired differences against the baseline]({figure})", ""]
    trained_any, shown = False, []
    for source, heading in (("reproduced", "All columns: reproduced by this project"), ("reported", "Reported by papers")):
        rows = [r for r in table if r["source"] == source]
        if not rows:
            continue
        lines, trained = _wide_table(rows, source)
        trained_any |= trained
        shown += [m for m in shown_metrics(rows) if m not in shown]
        out += [f"## {heading}", "", *lines]
        notes = [f"{_one_line(r['model'])}: {_one_line(r['notes'])}" for r in rows if r["notes"]]
        scopes = sorted({f"{r['qbe_protocol']} / {r['qbe_scope']}" for r in rows if r["qbe_protocol"] != NA})
        out += [""] + ([f"QbE protocol / scope: {', '.join(scopes)}.", ""] if scopes else []) + [f"- {n}" for n in notes]
        out += [""] if notes else []
    rates = error_rates(shown)
    swept = any(r.get(f"{m}_lr", NA) != NA for r in table for m in ("wer", "per"))
    out += [(f"{rates}: mean ± sample sd over downstream seeds (n = seeds); " if rates else "")
            + ("lr X: the downstream learning rate chosen on dev from a sweep (lowest mean over seeds of the best "
               "dev value; every rate's mean in superb.csv's wer_lr_dev / per_lr_dev), the test value is that "
               "rate's. " if swept else "")
            + ("MTWV [low, high]: 95% bootstrap interval over queries. " if "mtwv" in shown or LAST in shown else "")
            + "Relative improvement, on the means: "
            + (f"(base - new) / base for {rates}, " if rates else "") + "(new - base) / base for MTWV; positive = "
            "better; it says nothing about noise (the summary's paired intervals do). Reproduced rows are "
            "compared with reproduced baselines only."
            + (" Speech h counts the input audio drawn for the fine-tuning updates, as the "
               "SCORE paper does (SCORE 3,600 x 8 utterances ~101 h vs SPIN 5,000 x 256 s "
               "~356 h); View h through model is the audio of the views that went through the "
               "trainable model (SCORE: the student's view; LASER, SPIN: both views); both from "
               "each checkpoint, missing where it does not record them." if trained_any else ""), ""]
    if header or sources:
        out += ["## Provenance", "", *(f"> {line}  " for line in _lines(header)), ""]
        out += [*sources_table(sources), ""] if sources else []
    return "\n".join(out)
