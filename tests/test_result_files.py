"""Every CSV, JSON and Markdown table the project writes parses back with a library.

Each writer runs on small inputs holding a name with a comma, a quote, a pipe and a hash; every CSV is then
read with the ``csv`` module (each row has the header's field count) and with pandas (the columns are the
header, no column shifted into the index), every JSON with ``json.load``, and every Markdown table has as
many cells per row as its header (a ``|`` inside a cell is escaped).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from score_upstream.report import paired, results
from score_upstream.report.render import markdown_cell, markdown_table, write_csv
from test_paired import _experiment
from test_qbe_bootstrap import _write_case
from test_results import REPORTED, make_expdir, make_seeded

pytestmark = pytest.mark.compat_env  # the files must read back with the oldest supported pandas too

NAME = 'A, "quoted" | piped # model'  # a model name that breaks hand-made CSV and Markdown
BANNER = "DEMO | numbers\non two lines"


def read_csv_checked(path: Path, comment: bool = True) -> list[dict]:
    """Rows of a CSV written under ``#`` lines, after checking it with ``csv`` and with pandas."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    body = "".join(lines[next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines)):])
    rows = list(csv.reader(io.StringIO(body)))
    header, records = rows[0], rows[1:]
    for number, row in enumerate(records, 2):
        assert len(row) == len(header), f"{path}: data line {number} has {len(row)} fields, header {len(header)}"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, **({"comment": "#"} if comment else {}))
    assert list(frame.columns) == [h or f"Unnamed: {i}" for i, h in enumerate(header)], path
    assert isinstance(frame.index, pd.RangeIndex), path
    assert frame.values.tolist() == records, f"{path}: pandas and the csv module read different values"
    return [dict(zip(header, row)) for row in records]


def _split_cells(line: str) -> list[str]:
    """Cells of a Markdown table line, split at unescaped pipes, then unescaped."""
    assert line.startswith("| ") and line.endswith(" |"), line
    cells, cell, chars = [], "", iter(line[2:-2])
    for ch in chars:
        if ch == "\\":
            cell += ch + next(chars)
        elif ch == "|":
            cells.append(cell)
            cell = ""
        else:
            cell += ch
    cells.append(cell)
    return [re.sub(r"\\(.)", r"\1", c.strip()) for c in cells]


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of ``text`` as rows of cells (header first, the rule left out), each row checked
    to have the header's cell count."""
    tables, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            assert re.fullmatch(r"\|(---\|)+", block[1]), block[1]
            rows = [_split_cells(b) for b in block[:1] + block[2:]]
            width = block[1].count("---")
            assert all(len(r) == width for r in rows), [len(r) for r in rows]
            tables.append(rows)
            block = []
    assert tables, "no Markdown table found"
    return tables


def test_the_writers_escape_what_would_break_a_row(tmp_path):
    odd = {"model": 'x,"y"|z#w\nnext line', "value": 0.123456789, "n": 3, "note": None}
    path = write_csv([odd, {**odd, "model": "plain"}], tmp_path / "t.csv", ["made by a test", "two\nlines"])
    assert path.read_text().splitlines()[:2] == ["# made by a test", "# two"]
    rows = read_csv_checked(path)
    assert rows[0]["model"] == odd["model"] and float(rows[0]["value"]) == 0.123457
    frame = pd.read_csv(path, comment="#")
    assert list(frame["model"]) == [odd["model"], "plain"] and list(frame["n"]) == [3, 3]
    lines = markdown_table(["name", "a|b"], [[odd["model"], "back\\slash"], ["plain", 1]])
    [table] = markdown_tables("\n".join(lines))
    assert table == [["name", "a|b"], ['x,"y"|z#w<br>next line', "back\\slash"], ["plain", "1"]]
    assert markdown_cell("a\\|b") == "a\\\\\\|b"  # an escaped pipe in the text stays text
    with pytest.raises(ValueError, match="2 cells, expected 3"):
        markdown_table(["a", "b", "c"], [[1, 2]])


def test_score_results_files(tmp_path):
    ckpt = tmp_path / "trained.pt"
    torch.save({"score": {"method_name": "score", "input_speech_hours": 1.5, "view_speech_hours": 1.5}}, ckpt)
    base = make_seeded(tmp_path, "HuBERT", "hubert", {0: 40.0, 1: 42.0}, {0: 0.5, 1: 0.52}, 0.4, [0.3, 0.5],
                       last=(0.2, [0.15, 0.26]))
    new = make_seeded(tmp_path, NAME, "score", {0: 38.0, 1: 39.0}, {0: 0.45}, 0.42, [0.33, 0.52], last=(0.3, [0.2, 0.4]))
    meta = json.loads((new / "model.json").read_text())
    (new / "model.json").write_text(json.dumps({**meta, "ckpt": str(ckpt), "upstream": "score|hubert, v1"}))
    out = tmp_path / "out"
    assert results.main([str(base), str(new), "--out", str(out), "--reported", str(REPORTED), "--banner", BANNER]) == 0

    rows = read_csv_checked(out / "superb.csv")
    assert [r["model"] for r in rows][:2] == ["HuBERT", NAME] and rows[1]["citation"].startswith("score|hubert, v1")
    assert rows[1]["train_speech_h"] == "1.5"
    md = (out / "superb.md").read_text()
    assert "> DEMO | numbers  \n> on two lines  " in md
    summary, reproduced, reported, sources = markdown_tables(md)
    assert [r[0] for r in summary[1:]] == [r[0] for r in reproduced[1:]] == ["HuBERT", NAME]
    assert reproduced[0][-4:] == ["Method", "Speech h", "Speech vs SPIN", "View h through model"]
    assert sources[2][:3] == [NAME, os.path.relpath(new), "score|hubert, v1"]  # paths relative to the working dir
    assert len(reported) > 2


def test_paired_files(tmp_path):
    gt, _, scores, targets = _write_case(tmp_path)
    base = _experiment(tmp_path, "HuBERT", "hubert", {0: 0.40, 1: 0.41, 2: 0.42}, scores, gt)
    new = _experiment(tmp_path, NAME, "score", {0: 0.35, 1: 0.36, 2: 0.38}, scores + 2.0 * targets, gt)
    out = tmp_path / "out"
    assert paired.main([str(base), str(new), "--groundtruth", str(gt), "--out", str(out), "--banner", BANNER]) == 0
    rows = read_csv_checked(out / "paired.csv")
    assert [(r["model"], r["metric"], r["method"]) for r in rows][0] == (NAME, "per", "seeds (n=3, t)")
    assert list(rows[0]) == paired.CSV_FIELDS
    [table] = markdown_tables((out / "paired.md").read_text())
    assert [r[0] for r in table[1:]] == [NAME] * 3 and table[1][-1] == "seeds (n=3, t)"
    for expdir in (base, new):  # the QbE protocol's report beside them
        result = json.load(open(expdir / "qbe" / "qbe_result.json", encoding="utf-8"))
        assert result["layer"] == 2 and result["last_layer"]["layer"] == 6


def test_invariance_files(tmp_path):
    from score_upstream.report.invariance import summarise, table_rows, write_report

    rng = np.random.default_rng(0)
    other = rng.uniform(0.5, 1.0, size=(4, 3))
    summaries = {NAME: summarise(0.5 * other, other, bootstrap=20), "B": summarise(0.8 * other, other, bootstrap=20)}
    md = write_report(table_rows(summaries, 4), tmp_path, [BANNER], "Invariance | test", "setting line")
    rows = read_csv_checked(tmp_path / "invariance.csv")
    assert len(rows) == 2 * 3 and rows[0]["model"] == NAME and float(rows[0]["ratio"]) == pytest.approx(0.5)
    [table] = markdown_tables(md.read_text())
    assert table[0] == ["layer", NAME, "B"] and len(table) == 1 + 3
    assert (tmp_path / "invariance.png").stat().st_size > 1000


def test_qbe_stdlist_round_trips_odd_names(tmp_path):
    from score_upstream.qbe.stdlist import read_stdlist, write_stdlist

    queries, docs = ['q, "1" | <a> & b', "q2"], ["d,1", 'd "2"', "d<3>&"]
    scores = torch.tensor([[2.5, -0.1, 0.3], [0.0, 1.0, -1.0]])
    path = write_stdlist(tmp_path / "benchmark.stdlist.xml", queries, docs, scores)
    root = ET.parse(path).getroot()
    assert [t.get("termid") for t in root] == queries and [t.get("file") for t in root[0]] == docs
    trials = read_stdlist(path)
    assert trials.queries == queries and trials.documents == docs
    np.testing.assert_allclose(trials.scores, scores.flatten().numpy(), atol=1e-4)


def test_pretrained_package_json(tmp_path, tiny_hubert_ckpt):
    from score_upstream.pretrained import package

    state = torch.load(tiny_hubert_ckpt, map_location="cpu", weights_only=True)
    state["pretrain"] = {"recipe": NAME, "steps": 3, "config": {"lr": 5e-4}}
    src = tmp_path / "hubert.pt"
    torch.save(state, src)
    dst = package(src, tmp_path / "packaged.pt", recipe=f"recipes/pretrain/run.sh --name '{NAME}'")
    summary = json.load(open(dst.with_suffix(".json"), encoding="utf-8"))
    assert summary["pretrain"] == {"recipe": NAME, "steps": 3} and NAME in summary["package"]["recipe"]


def test_bucket_lengths_csv(tmp_path):
    import soundfile as sf

    from score_upstream.s3prl.superb.lengths import write_lengths

    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1" / "2"
    chapter.mkdir(parents=True)
    for i, stem in enumerate(["1-2-0000", "1-2-0001,x"]):
        sf.write(str(chapter / f"{stem}.flac"), np.zeros(1600 * (i + 1), dtype=np.float32), 16000)
    [path] = write_lengths(tmp_path / "LibriSpeech", tmp_path / "len", ["test-clean"])
    rows = read_csv_checked(path, comment=False)  # read as s3prl does, without comment lines
    assert [(r["file_path"], r["length"]) for r in rows] == [("test-clean/1/2/1-2-0001,x.flac", "3200"),
                                                              ("test-clean/1/2/1-2-0000.flac", "1600")]
