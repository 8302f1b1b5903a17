"""The ``score-results`` figure: each metric with its uncertainty, and the relative improvements vs the vanilla model.

Top row, one panel per metric (WER, PER, MTWV of the reported layer, and of the last layer when the runs
have it): a bar per reproduced model with its error bar, the sd over downstream seeds for WER and PER and
the bootstrap interval over queries for MTWV. Bottom: the relative improvements vs the vanilla model of each
row's family (HuBERT or WavLM; %, on the means), reproduced and reported rows, as grouped bars.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from score_upstream.report.results import LAST, METRICS, REL_KEY, TASK_OF

_LABEL = {"wer": "WER % (ASR)", "per": "PER % (PR)", "mtwv": "MTWV (QbE)", LAST: "MTWV, last layer (QbE)"}


def error_bar(rec: dict, metric: str) -> tuple[float, float]:
    """(below, above) the bar: the sd over seeds for WER/PER (0 for one seed), the interval for MTWV."""
    value = rec[metric]
    if metric in ("wer", "per"):
        sd = rec[f"{metric}_sd"]
        return (sd, sd) if isinstance(sd, float) else (0.0, 0.0)
    low, high = rec[f"{metric}_low"], rec[f"{metric}_high"]
    if not isinstance(low, float):
        return 0.0, 0.0
    return max(value - low, 0.0), max(high - value, 0.0)  # a percentile interval need not hold the point


def _metric_panel(ax, rows: list[dict], metric: str) -> None:
    shown = [r for r in rows if isinstance(r[metric], float)]
    xs = range(len(shown))
    values = [r[metric] for r in shown]
    bars = list(zip(*(error_bar(r, metric) for r in shown))) or [[], []]
    ax.bar(xs, values, 0.6, yerr=bars, capsize=4, color=[f"C{i}" for i in xs], ecolor="black")
    for x, r in zip(xs, shown):
        rel = r.get(f"rel_{REL_KEY[metric]}_vs_{r.get('family', 'hubert')}")
        if isinstance(rel, float) and r["kind"] not in ("hubert", "wavlm"):
            ax.annotate(f"{rel:+.1f}%", (x, r[metric]), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(list(xs), [r["model"] for r in shown], fontsize=7, rotation=20)
    ax.set_title(_LABEL[metric], fontsize=8)
    ax.margins(y=0.15)
    if not shown:
        ax.text(0.5, 0.5, "missing", ha="center", transform=ax.transAxes)


def _relative_panel(ax, table: list[dict]) -> None:
    metrics = [*METRICS] + ([LAST] if any(isinstance(r[LAST], float) for r in table) else [])
    series = [
        (f"{r['model']} ({r['source']})", [r[f"rel_{REL_KEY[m]}_vs_{r.get('family', 'hubert')}"] for m in metrics])
        for r in table
        if r["kind"] not in ("hubert", "wavlm")
        and any(isinstance(r[f"rel_{REL_KEY[m]}_vs_{r.get('family', 'hubert')}"], float) for m in metrics)
    ]
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [t + (i - (len(series) - 1) / 2) * width for t in range(len(metrics))]
        ys = [v if isinstance(v, float) else 0.0 for v in values]
        bars = ax.bar(xs, ys, width, label=label)
        for bar, v in zip(bars, values):
            if isinstance(v, float):  # an empty slot is a missing / not reported value (see the table)
                ax.annotate(f"{v:+.2f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                            ha="center", va="bottom" if v >= 0 else "top", fontsize=7)
    if not series:
        ax.text(0.5, 0.5, "no relative improvement available (missing runs or baseline)", ha="center", transform=ax.transAxes)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(metrics)), [TASK_OF[m] for m in metrics])
    ax.set_ylabel("relative improvement vs the vanilla model (%)", fontsize=8)
    ax.margins(y=0.15)  # room for the value labels above and below the bars
    if series:
        ax.legend(fontsize=7)


def plot(table: list[dict], path: Path, title: str) -> Path:
    """Write the figure of ``table`` (records of :func:`score_upstream.report.results.build_table`) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reproduced = [r for r in table if r["source"] == "reproduced"]
    metrics = [*METRICS] + ([LAST] if any(isinstance(r[LAST], float) for r in reproduced) else [])
    fig = plt.figure(figsize=(2.6 * len(metrics) + 1, 7.5), dpi=120)
    grid = fig.add_gridspec(2, len(metrics), height_ratios=[1, 1.1])
    for i, metric in enumerate(metrics):
        _metric_panel(fig.add_subplot(grid[0, i]), reproduced, metric)
    _relative_panel(fig.add_subplot(grid[1, :]), table)
    fig.suptitle(textwrap.fill(title, 110) + "\nerror bars: sd over downstream seeds (WER, PER), "
                 "95% bootstrap interval over queries (MTWV)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
