"""The ``score-results`` page on experiment folders laid out as the demo leaves them: a summary whose verdicts
are the paired intervals', tasks not run left out everywhere, one colour per model, no absolute path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from score_upstream import runs
from score_upstream.qbe import twv
from score_upstream.qbe.twv import read_ground_truth
from score_upstream.s3prl.superb.qbe import protocol
from score_upstream.report import paired, plot, results, table
from score_upstream.report.provenance import header_lines
from test_result_files import markdown_tables
from test_twv import write_groundtruth, write_stdlist

PER = {  # per seed, as the ctc expert prints it (a fraction); SCORE clearly better, SPIN clearly worse
    "HuBERT": {0: 0.400, 1: 0.412, 2: 0.405},
    "SCORE": {0: 0.380, 1: 0.394, 2: 0.383},
    "LASER": {0: 0.395, 1: 0.420, 2: 0.398},
    "SPIN": {0: 0.428, 1: 0.441, 2: 0.436},
}
KIND = {"HuBERT": "hubert", "SCORE": "score", "LASER": "laser", "SPIN": "spin"}
# how much each model lifts the true hits' scores at the reported layer (2) and at the last one (6)
LIFT = {"HuBERT": (0.0, 0.0), "SCORE": (0.1, 1.5), "LASER": (0.05, 1.0), "SPIN": (0.0, -0.8)}
HOURS = {"SCORE": (0.87, 0.87), "LASER": (0.86, 1.72), "SPIN": (0.86, 1.72)}  # input drawn, views through the model
ABSOLUTE = re.compile(r"(?:^|[\s`(\[=>|'\"])(/[\w.-]+)+")  # a path from the root, wherever a token starts


def demo_folders(root: Path, n_queries: int = 30, seed: int = 0) -> tuple[list[Path], Path]:
    """Four experiment folders as ``run_superb.sh --demo`` leaves them, and the QUESST eval ground truth.

    Each has ``model.json`` naming a ``score-train``-style checkpoint, ``pr/seed{0,1,2}/test.log`` with their
    stage markers and the run manifest, and ``qbe/`` with the dev and eval ``benchmark.stdlist.xml`` and
    ``score.out`` of layers 2 and 6 and ``qbe_result.json`` (the QbE protocol's own report); no ``asr/``.
    """
    rng = np.random.default_rng(seed)
    queries, docs = [f"q_{i}" for i in range(n_queries)], [f"d_{j}" for j in range(n_queries + 5)]
    targets = np.zeros((len(queries), len(docs)), dtype=bool)
    for i in range(len(queries)):
        targets[i, [i, (7 * i + 3) % len(docs)]] = True
    gt = write_groundtruth(root / "gt", queries, docs, [(queries[i], docs[j]) for i, j in zip(*np.nonzero(targets))],
                           name="quesst14_eval")
    common = rng.normal(size=targets.shape) + 1.5 * targets  # what every model finds: the same speech
    dirs = []
    for name, pers in PER.items():
        d = root / name
        for s, per in pers.items():
            (d / "pr" / f"seed{s}").mkdir(parents=True)
            (d / "pr" / f"seed{s}" / "test.log").write_text(f"test loss: 1.1\ntest per: {per}\n")
            (d / "pr" / f"seed{s}" / ".stage4.done").write_text(json.dumps({"key": f"k{s}", "inputs": {}}))
        runs.write_manifest(d / "pr", "pr", sorted(pers), 4)
        for layer, lift in zip((2, 6), LIFT[name]):
            scores = common + lift * targets + 0.4 * rng.normal(size=targets.shape)
            trials = {(q, doc): (float(scores[i, j]), False) for i, q in enumerate(queries) for j, doc in enumerate(docs)}
            for split in ("dev", "eval"):
                write_stdlist(d / "qbe" / split / f"layer{layer}", trials)
                twv.write_score_out(twv.score_twv(d / "qbe" / split / f"layer{layer}", gt), d / "qbe" / split / f"layer{layer}")
        protocol.report(d / "qbe", 2, "best-dev-layer", "english-only", gt, last=6, resamples=200)
        ckpt = root / "ckpts" / f"{name}.pt"
        ckpt.parent.mkdir(exist_ok=True)
        input_h, view_h = HOURS.get(name, (None, None))
        info = {"method_name": KIND[name], "input_speech_hours": input_h, "view_speech_hours": view_h}
        torch.save({"score": info} if name in HOURS else {"model": {}}, ckpt)
        meta = {"name": name, "kind": KIND[name], "upstream": "score_hubert", "ckpt": str(ckpt), "ckpt_sha256": "ab" * 32}
        (d / "model.json").write_text(json.dumps(meta))
        dirs.append(d)
    return dirs, gt


@pytest.fixture
def demo(tmp_path, monkeypatch):
    """The demo's folders, ``score-results`` run on them from a working directory beside them."""
    dirs, gt = demo_folders(tmp_path / "exp")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = work / "results"
    argv = [str(d) for d in dirs] + ["--groundtruth", str(gt), "--out", str(out), "--no-reported",
                                     "--banner", "DEMO numbers"]
    assert results.main(argv) == 0
    return dirs, gt, out


def summary(md: str) -> list[dict]:
    """The summary table of ``superb.md`` as records keyed by its header cells (repeated ones numbered)."""
    first = markdown_tables(md.split("## Summary", 1)[1])[0]
    header = [f"{h}#{first[0][:i].count(h)}" if first[0].count(h) > 1 else h for i, h in enumerate(first[0])]
    return [dict(zip(header, row)) for row in first[1:]]


def test_run_without_asr_has_no_asr_column_panel_or_missing_cell(demo):
    dirs, gt, out = demo
    md = (out / "superb.md").read_text()
    assert "ASR" not in md and "WER" not in md
    assert not [cell for t in markdown_tables(md) for row in t for cell in row if "missing" in cell]
    csv = pd.read_csv(out / "superb.csv", comment="#")
    assert set(csv["wer"]) == {"not run"} and set(csv["rel_asr_vs_hubert"]) == {"not run"}
    rows = [results.read_experiment(d) for d in dirs]
    fig = plot.figure(results.build_table(rows), table.comparisons(rows, read_ground_truth(gt)), "t")
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 6 and not any("WER" in t or "ASR" in t for t in titles)  # PR, QbE, QbE last x 2
    assert not any(t.get_text() == "missing" for ax in fig.axes for t in ax.texts)


def test_summary_verdicts_are_the_paired_intervals(demo):
    dirs, gt, out = demo
    md = (out / "superb.md").read_text()
    assert md.index("## Summary") < md.index("## All columns") < md.index("## Provenance")
    records = {r["Model"]: r for r in summary(md)}
    assert list(records) == ["HuBERT", "SCORE", "LASER", "SPIN"]
    assert records["HuBERT"]["vs HuBERT#0"] == "baseline" and records["SPIN"]["vs SPIN#0"] == "baseline"
    assert records["HuBERT"]["vs SPIN#0"] == "—"
    assert records["SCORE"]["PER % (PR)"] == "38.57 ± 0.74 (n=3)"
    columns = {"per": 0, "mtwv": 1, "mtwv_last": 2}  # the n-th "vs" column of each task
    seen = set()
    for base_dir, head in ((dirs[0], "vs HuBERT"), (dirs[3], "vs SPIN")):
        for new_dir in dirs[1:]:
            if new_dir == base_dir:
                continue
            name, diffs = paired.compare_models(base_dir, new_dir, gt)
            assert [d.metric for d in diffs] == ["per", "mtwv", "mtwv_last"]
            for d in diffs:
                cell = records[name.name][f"{head}#{columns[d.metric]}"]
                verdict = "better" if d.better == "yes" else d.better
                low, high = (-d.high, -d.low) if d.metric == "per" else (d.low, d.high)  # the improving side > 0
                assert verdict == ("better" if low > 0 else "worse" if high < 0 else "not shown")
                digits = 2 if d.metric == "per" else 3
                assert cell == (verdict if verdict == "not shown" else f"**{verdict}**") + (
                    f" {d.diff:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}]")
                seen.add(verdict)
    assert seen == {"better", "worse", "not shown"}  # the fake folders exercise every verdict


def test_a_model_has_one_colour_in_every_axis(demo):
    from matplotlib.container import BarContainer, ErrorbarContainer
    from matplotlib.colors import to_hex

    dirs, gt, _ = demo
    rows = [results.read_experiment(d) for d in dirs]
    comparisons = table.comparisons(rows, read_ground_truth(gt))
    fig = plot.figure(results.build_table(rows), comparisons, "t")
    colours: dict[str, set] = {}
    drawn = 0
    for ax in fig.axes:
        assert ax.get_legend() is None  # the legend is the figure's, once
        for c in ax.containers:
            if isinstance(c, BarContainer):
                colour = c.patches[0].get_facecolor()
            elif isinstance(c, ErrorbarContainer) and c.lines[0] is not None:  # not a bar's own error bar
                colour = c.lines[0].get_color()
                d = comparisons[c.get_label()]["vanilla"].diffs[next(m for m in ("per", "mtwv", "mtwv_last")
                                                                    if ax.get_title().startswith(plot.TASK_OF[m] + ":"))]
                line = c.lines[0]
                assert line.get_ydata()[0] == pytest.approx(d.diff)  # the point and whiskers are the paired interval
                whiskers = c.lines[2][0].get_segments()[0]
                assert (whiskers[0][1], whiskers[1][1]) == pytest.approx((min(d.low, d.diff), max(d.high, d.diff)))
            else:
                continue
            colours.setdefault(c.get_label(), set()).add(to_hex(colour))
            drawn += 1
    assert drawn == 4 * 3 + 3 * 3  # a bar per model and task, a difference per fine-tuned model and task
    assert {k: len(v) for k, v in colours.items()} == {"HuBERT": 1, "SCORE": 1, "LASER": 1, "SPIN": 1}
    assert len({next(iter(v)) for v in colours.values()}) == 4
    [legend] = fig.legends
    legend_colours = {t.get_text(): to_hex(h.get_facecolor()) for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert legend_colours == {k: next(iter(v)) for k, v in colours.items()}


def test_no_absolute_path_in_any_markdown_the_tools_write(demo, tmp_path):
    dirs, gt, out = demo
    assert paired.main([str(dirs[0]), *map(str, dirs[1:]), "--groundtruth", str(gt), "--out", str(out)]) == 0
    for name in ("superb.md", "paired.md"):
        md = (out / name).read_text()
        assert str(tmp_path) not in md and not ABSOLUTE.search(md), (name, ABSOLUTE.search(md))
    md = (out / "superb.md").read_text()
    assert "`score-results ../exp/HuBERT ../exp/SCORE" in md and "--groundtruth ../exp/gt " in md
    sources = markdown_tables(md.split("## Provenance", 1)[1])[0]
    assert sources[0] == ["Model", "Experiment folder", "Upstream", "Checkpoint", "SHA-256 (first 16)"]
    assert sources[1] == ["HuBERT", "../exp/HuBERT", "score_hubert", "../exp/ckpts/HuBERT.pt", "ab" * 8]
    line = header_lines("score-invariance", [f"--model=HuBERT={dirs[0]}", "--split", str(tmp_path / "x y")])[0]
    assert "--model=HuBERT=../exp/HuBERT --split '../x y'" in line and str(tmp_path) not in line


def test_page_head_and_figure_file(demo):
    _, _, out = demo
    md = (out / "superb.md").read_text()
    head = md.split("## Summary")[0]
    assert head.startswith("# ") and "> DEMO numbers  " in head and "Generated by" not in head
    assert "![" in md and "(superb.png)" in md
    from matplotlib.image import imread

    height, width, _ = imread(out / "superb.png").shape
    assert 500 < width <= 1100 and height < width  # legible at the width a README shows


def test_one_seed_and_no_ground_truth_say_why(tmp_path):
    dirs, _ = demo_folders(tmp_path / "exp")
    for d in dirs[1:]:  # SCORE, LASER, SPIN: only seed 0 survives
        runs.write_manifest(d / "pr", "pr", [0], 4)
    rows = [results.read_experiment(d) for d in dirs]
    found = table.comparisons(rows, None)
    assert found["SCORE"]["vanilla"].diffs == {"per": paired.FEW_SEEDS, "mtwv": paired.NO_GROUNDTRUTH,
                                               "mtwv_last": paired.NO_GROUNDTRUTH}
    assert set(found) == {"SCORE", "LASER", "SPIN"} and "spin" not in found["SPIN"]
    fig = plot.figure(results.build_table(rows), found, "t")
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("fewer than 2 seeds" in t for t in texts) and any("no --groundtruth" in t for t in texts)
    assert np.isfinite([ax.get_ylim() for ax in fig.axes]).all()
