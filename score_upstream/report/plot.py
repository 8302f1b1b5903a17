"""The ``score-results`` figure: the summary table of ``superb.md``, drawn.

Top row, one panel per task that was run (WER, PER, MTWV of the reported layer, and of the last layer when
the runs have it): a bar per reproduced model with its uncertainty, the sd over downstream seeds for WER
and PER and the 95% bootstrap interval over queries for MTWV. Bottom row, under each: the paired
difference of every fine-tuned model to the vanilla model of its family, with its 95% interval
(:func:`score_upstream.report.paired.differences`, the summary's "vs" column), around a zero line; the
improving half is shaded, the verdict is written above each interval and the marker is filled when the
interval excludes zero. So what the eye sees is what the statistics say. Each model keeps one colour in
every panel (:func:`model_colours`), named once in the legend on top.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from score_upstream.report.experiments import LOWER_IS_BETTER, TASK_OF
from score_upstream.report.paired import Difference
from score_upstream.report.render import LABEL, error_rates, shown_metrics

UNIT = {"wer": "points", "per": "points", "mtwv": "MTWV", "mtwv_last": "MTWV"}


def model_colours(names: list[str]) -> dict[str, str]:
    """One Matplotlib colour per model, in table order (``C0``, ``C1``, ...; the cycle repeats after 10)."""
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


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


def _long(rows: list[dict]) -> bool:
    """Whether the model names need slanted tick labels."""
    return max(len(r["model"]) for r in rows) > 8


def _value_panel(ax, rows: list[dict], metric: str, colours: dict[str, str]) -> None:
    for x, r in enumerate(rows):
        if isinstance(r[metric], float):
            below, above = error_bar(r, metric)
            ax.bar(x, r[metric], 0.7, yerr=[[below], [above]], capsize=3, color=colours[r["model"]],
                   ecolor="black", error_kw={"linewidth": 0.9}, label=r["model"])
        else:  # the task ran for others but left no number here
            ax.text(x, 0, f" {r[metric]}", rotation=90, ha="center", va="bottom", fontsize=7, color="grey")
    side = "lower" if LOWER_IS_BETTER[metric] else "higher"
    ax.set_title(f"{LABEL[metric]}\n{side} is better", fontsize=8)
    ax.set_xticks(range(len(rows)), [""] * len(rows))
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.12)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def _difference_panel(ax, rows: list[dict], metric: str, comparisons: dict, colours: dict[str, str]) -> None:
    bases = {c["vanilla"].against for c in comparisons.values() if "vanilla" in c}
    extent, reasons = 0.0, []
    for x, r in enumerate(rows):
        comparison = comparisons.get(r["model"], {}).get("vanilla")
        d = comparison.diffs.get(metric) if comparison else None
        if isinstance(d, Difference):
            filled = d.verdict != "not shown"
            ax.errorbar([x], [d.diff], yerr=[[max(d.diff - d.low, 0.0)], [max(d.high - d.diff, 0.0)]], fmt="o",
                        color=colours[r["model"]], mfc=colours[r["model"]] if filled else "white", mew=1.5,
                        markersize=6, capsize=4, elinewidth=1.5, label=r["model"])
            if filled:  # an interval across zero says "not shown" by itself (and its marker is hollow)
                ax.annotate(d.verdict, (x, max(d.high, d.diff)), xytext=(0, 3), textcoords="offset points",
                            ha="center", va="bottom", fontsize=7, fontweight="bold")
            extent = max(extent, abs(d.low), abs(d.high), abs(d.diff))
        elif r["model"] in bases:
            ax.text(x, 0, "baseline", ha="center", va="bottom", fontsize=7, color="grey")
        elif isinstance(d, str):  # why there is no paired difference, e.g. n/a (no --groundtruth): said once below
            ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
            reasons += [d] if d not in reasons else []
    if reasons:
        ax.text(0.5, 0.3, "\n".join(textwrap.fill(w, 40) for w in reasons), transform=ax.transAxes, ha="center",
                va="center", fontsize=6.5, color="grey")
    lim = 1.35 * extent if extent > 0 else 1.0
    ax.set_ylim(-lim, lim)
    ax.axhline(0, color="black", linewidth=0.8)
    better_low = LOWER_IS_BETTER[metric]
    ax.axhspan(-lim if better_low else 0, 0 if better_low else lim, color="tab:green", alpha=0.08, zorder=0)
    ax.text(0.02, 0.03 if better_low else 0.97, "better", transform=ax.transAxes, fontsize=7, color="darkgreen",
            va="bottom" if better_low else "top")
    against = sorted(bases)
    ax.set_title(f"{TASK_OF[metric]}: vs {against[0] if len(against) == 1 else 'vanilla'}, paired",
                 fontsize=8)
    ax.set_ylabel(f"difference ({UNIT[metric]})", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["model"] for r in rows], fontsize=7, rotation=30 if _long(rows) else 0,
                  ha="right" if _long(rows) else "center")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def figure(table: list[dict], comparisons: dict, title: str):
    """The Matplotlib figure of ``table`` (records of :func:`score_upstream.report.table.build_table`) and
    ``comparisons`` (:func:`score_upstream.report.table.comparisons`); the caller closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in table if r["source"] == "reproduced"]
    metrics = shown_metrics(rows)
    colours = model_colours([r["model"] for r in rows])
    paired = any(c for c in comparisons.values())
    n_rows = 2 if paired else 1
    title = textwrap.fill(title, 100)
    # heights in inches: title lines, the legend, each row's panel (+ its title and tick labels), the caption
    head = 0.2 * (title.count("\n") + 1) + 0.75
    foot = 0.8 + (0.3 if rows and _long(rows) else 0.0)  # tick labels (slanted ones are taller) and the caption
    width, height = max(2.5 * len(metrics), 4.0) + 0.6, head + 2.75 * n_rows + foot - 0.4
    fig = plt.figure(figsize=(width, height), dpi=110)
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    if not rows or not metrics:
        fig.text(0.5, 0.5, "no reproduced run to draw (see the tables)", ha="center")
        return fig
    grid = fig.add_gridspec(n_rows, len(metrics), left=0.6 / width, right=1 - 0.15 / width, top=1 - head / height,
                            bottom=foot / height, hspace=0.6 / 2.0, wspace=0.6 / 1.9)
    for i, metric in enumerate(metrics):
        top = fig.add_subplot(grid[0, i])
        _value_panel(top, rows, metric, colours)
        if paired:  # the names once, under the lower row; the legend on top gives the colours
            _difference_panel(fig.add_subplot(grid[1, i], sharex=top), rows, metric, comparisons, colours)
            top.tick_params(labelbottom=False)
        else:
            top.set_xticks(range(len(rows)), [r["model"] for r in rows], fontsize=7, rotation=30 if _long(rows) else 0,
                           ha="right" if _long(rows) else "center")
    rates, mtwv = error_rates(metrics), any(m in metrics for m in ("mtwv", "mtwv_last"))
    caption = ("Bars: " + ", ".join(([f"mean ± sd over downstream seeds ({rates})"] if rates else [])
                                    + (["95% bootstrap interval over queries (MTWV)"] if mtwv else [])) + "."
               + (" Points: paired difference model - baseline with its 95% interval ("
                  + "; ".join((["seeds: Student t"] if rates else []) + (["MTWV: paired bootstrap over queries"] if mtwv else []))
                  + "); filled and named when the interval excludes zero." if paired else ""))
    caption = textwrap.fill(caption, int(17 * width))
    fig.legend([Patch(color=colours[r["model"]]) for r in rows], [r["model"] for r in rows], loc="upper center",
               bbox_to_anchor=(0.5, 1 - (head - 0.75 + 0.12) / height), ncol=min(len(rows), 6), fontsize=8,
               frameon=False)
    fig.text(0.5, 0.04 / height, caption, ha="center", va="bottom", fontsize=6.5)
    return fig


def plot(table: list[dict], comparisons: dict, path: Path, title: str) -> Path:
    """Write :func:`figure` of ``table`` and ``comparisons`` to ``path`` (PNG)."""
    import matplotlib.pyplot as plt

    fig = figure(table, comparisons, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
