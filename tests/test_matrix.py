"""Every model family x s3prl upstream x SUPERB task through ``run_superb.sh``, one test id per cell.

Cells are ``FAMILY-UPSTREAM-TASK`` (e.g. ``wavlm-auto-qbe``): families HuBERT and WavLM, upstreams our own
(``score_hubert``/``score_wavlm``), s3prl's stock one (``hubert_local``/``wavlm_local``), ``auto`` (chosen from
the checkpoint's content) and ``spin`` (a SPIN Lightning checkpoint converted by run_superb.sh; HuBERT only),
tasks ASR, PR and QbE. Models are tiny and random, in the formats users bring: s3prl's converted HuBERT, a
WavLM ``.pt`` made by ``score-convert`` from a transformers directory, a SPIN Lightning ``.ckpt``.

One ``run_superb.sh`` per family x upstream (a module-scoped fixture) runs the tasks of the cells selected in
this session, with one or two downstream updates and one seed, on a small cut of the tiny synthetic corpus;
the cells then read its outputs. When a task fails, the run is repeated for the tasks after it, so each cell
reports its own task. Hidden states are shared between the processes of a run, and between runs of the same
weights (``score_hubert`` and ``auto``), through ``SCORE_UPSTREAM_CACHE_DIR``. The table of cell -> outcome
-> seconds is printed at the end of the session.

The slow cells (``SLOW``; ``-m slow`` runs them) are ASR everywhere (the SUPERB BLSTM costs about a minute
per update on 2 cores) and every HuBERT cell but SPIN's PR (HuBERT's paths are also run by tests/test_recipes.py).
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import torch

from test_recipes import REPO, _env

TASKS = ("asr", "pr", "qbe")
COMBOS = (
    ("hubert", "score_hubert"), ("hubert", "hubert_local"), ("hubert", "auto"), ("hubert", "spin"),
    ("wavlm", "score_wavlm"), ("wavlm", "wavlm_local"), ("wavlm", "auto"),
)
# Default suite: WavLM through s3prl's own upstream and through auto (the paths of the QbE layer-count bug),
# and a SPIN checkpoint through run_superb.sh's conversion; HuBERT's recipes run in the default suite through
# tests/test_recipes.py (recipes called directly), and through run_superb.sh here with -m slow.
DEFAULT = {"wavlm-wavlm_local-pr", "wavlm-wavlm_local-qbe", "wavlm-auto-pr", "wavlm-auto-qbe", "hubert-spin-pr"}
SLOW = {f"{f}-{u}-{t}" for f, u in COMBOS for t in TASKS} - DEFAULT
LAST_HIDDEN_STATE = 12  # the tiny models have 12 layers: hidden states 0..12
RESULT_FILES = {"asr": "asr/seed0/result.json", "pr": "pr/seed0/result.json", "qbe": "qbe/qbe_result.json"}
TABLE_COLUMNS = {"asr": "wer", "pr": "per", "qbe": "mtwv"}
SAFE_SPIN_LOADING = hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
_LOG_LINE = re.compile(r"^\[(asr|pr|qbe|run_superb) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] ")


def _cells():
    for family, upstream in COMBOS:
        for task in TASKS:
            cell = f"{family}-{upstream}-{task}"
            marks = [pytest.mark.slow] if cell in SLOW else []
            if upstream == "spin":
                marks.append(pytest.mark.skipif(not SAFE_SPIN_LOADING, reason="SPIN conversion needs torch >= 2.6"))
            yield pytest.param((family, upstream), task, id=cell, marks=marks)


# ----------------------------------------------------------------------------------------- summary table


@dataclass
class MatrixTable:
    """Outcome and seconds per cell, printed as one table when the session ends."""

    rows: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    runs: dict[str, tuple[str, float]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"{'cell':<28} {'outcome':<8} {'task s':>7}"]
        out += [f"{cell:<28} {outcome:<8} {'' if s is None else f'{s:7.0f}'}" for cell, (outcome, s) in self.rows.items()]
        out += [f"run_superb.sh {combo} --tasks \"{tasks}\": {s:.0f} s" for combo, (tasks, s) in self.runs.items()]
        total = sum(s for _, s in self.runs.values())
        out.append(f"total run_superb.sh time: {total:.0f} s for {len(self.runs)} run(s)")
        return out


@pytest.fixture(scope="session")
def matrix_table(request):
    table = MatrixTable()

    def report():
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if not table.rows or reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            reporter.write_line("")
            reporter.write_sep("=", "SUPERB matrix: cell -> outcome, seconds")
            for line in table.lines():
                reporter.write_line(line)

    request.addfinalizer(report)
    return table


# ----------------------------------------------------------------------------------------- models and data


def _micro_librispeech(tiny_corpus: Path, root: Path, counts=(("train-clean-100", 4), ("dev-clean", 2), ("test-clean", 2))) -> Path:
    """The shortest utterances of each split of the tiny corpus, copied in LibriSpeech's layout (+ lexicon).

    The SUPERB ASR BLSTM's cost grows with frames per update; four 2-s utterances keep an update near a minute
    on 2 shared cores.
    """
    import soundfile as sf

    src = tiny_corpus / "LibriSpeech"
    for split, n in counts:
        flacs = sorted((src / split).rglob("*.flac"), key=lambda f: (sf.info(str(f)).frames, f.name))[:n]
        for flac in flacs:
            target = root / "LibriSpeech" / flac.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(flac, target)
            trans = flac.with_name(f"{flac.parent.parent.name}-{flac.parent.name}.trans.txt")
            line = next(x for x in trans.read_text().splitlines() if x.split(" ", 1)[0] == flac.stem)
            with open(target.with_name(trans.name), "a") as fh:
                fh.write(line + "\n")
    shutil.copyfile(tiny_corpus / "librispeech-lexicon.txt", root / "librispeech-lexicon.txt")
    return root


@pytest.fixture(scope="session")
def micro_corpus(tiny_corpus, tmp_path_factory) -> Path:
    return _micro_librispeech(tiny_corpus, tmp_path_factory.mktemp("micro"))


@pytest.fixture(scope="session")
def tiny_wavlm_pt(tmp_path_factory) -> Path:
    """A tiny random WavLM as users get one: a transformers ``WavLMModel`` directory, converted by
    ``score-convert DIR WAVLM.pt --to s3prl`` (the unilm ``.pt`` that ``wavlm_local`` reads)."""
    from score_upstream.models.wavlm import new_wavlm, save_hf, tiny_cfg

    root = tmp_path_factory.mktemp("wavlm")
    save_hf(new_wavlm(tiny_cfg(), seed=0), root / "hf")
    proc = subprocess.run(["score-convert", root / "hf", root / "WAVLM.pt", "--to", "s3prl"], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root / "WAVLM.pt"


@pytest.fixture(scope="session")
def tiny_spin_ckpt(tiny_hubert_ckpt, tmp_path_factory) -> Path:
    """A SPIN Lightning checkpoint whose encoder started from ``tiny_hubert_ckpt`` (its top two layers moved)."""
    from test_spin import make_spin

    path, _ = make_spin(tmp_path_factory.mktemp("spin"), tiny_hubert_ckpt)
    return path


@pytest.fixture(scope="session")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("feature-cache")


# ----------------------------------------------------------------------------------------- one run per combination


@dataclass
class Run:
    """What ``run_superb.sh`` left for one family x upstream: outputs, per-task errors and seconds."""

    expdir: Path
    table: Path
    errors: dict[str, str] = field(default_factory=dict)  # task (or "run") -> error lines and log tail
    seconds: dict[str, float] = field(default_factory=dict)  # task -> seconds between its first and next log line


def _task_seconds(stderr: str, end: float) -> dict[str, float]:
    """Seconds per task from the recipes' ``[task YYYY-MM-DD HH:MM:SS]`` log lines (1 s resolution)."""
    marks = []
    for line in stderr.splitlines():
        m = _LOG_LINE.match(line)
        if m and (not marks or marks[-1][0] != m[1]):
            marks.append((m[1], datetime.strptime(m[2], "%Y-%m-%d %H:%M:%S").timestamp()))
    marks.append(("end", end))
    return {task: t1 - t0 for (task, t0), (_, t1) in zip(marks, marks[1:]) if task in TASKS}


def _selected_tasks(session, combo: tuple[str, str]) -> list[str]:
    """The tasks of this combination whose cells this session runs (after -m / -k selection)."""
    chosen = {item.callspec.params["task"] for item in session.items
              if item.module.__name__ == __name__ and getattr(item, "callspec", None)
              and item.callspec.params.get("combo") == combo}
    return [t for t in TASKS if t in chosen]


@pytest.fixture(scope="session")
def matrix_runs() -> dict:
    return {}


@pytest.fixture
def combo(request, matrix_runs):
    """The run of this cell's family x upstream, made by the first of its cells (they are consecutive).

    A cache rather than a module-scoped parametrized fixture: pytest sets those up once per parameter set,
    i.e. once per cell here, since each cell carries its own marks."""
    key = request.param
    if key not in matrix_runs:
        matrix_runs[key] = _run_combo(request, *key)
    return matrix_runs[key]


def _run_combo(request, family: str, upstream: str) -> Run:
    tiny_corpus, micro_corpus, tiny_hubert_ckpt, tiny_wavlm_pt, feature_cache, tmp_path_factory, matrix_table = (
        request.getfixturevalue(name) for name in ("tiny_corpus", "micro_corpus", "tiny_hubert_ckpt", "tiny_wavlm_pt",
                                                   "feature_cache", "tmp_path_factory", "matrix_table"))
    tasks = _selected_tasks(request.session, (family, upstream))
    root = tmp_path_factory.mktemp(f"matrix-{family}-{upstream}")
    extra = []
    if upstream == "spin":
        ckpt = request.getfixturevalue("tiny_spin_ckpt")
        extra = ["--spin-base", tiny_hubert_ckpt]
    else:
        ckpt = tiny_hubert_ckpt if family == "hubert" else tiny_wavlm_pt
    env = _env()
    env.update(SCORE_UPSTREAM_CACHE_DIR=str(feature_cache), SCORE_UPSTREAM_CACHE_MB="256", OMP_NUM_THREADS="2")
    run = Run(root / "exp" / family, root / "results" / "superb.csv")
    left = list(tasks)
    while left:
        t0 = time.time()
        proc = subprocess.run(
            [REPO / "run_superb.sh", "--librispeech", micro_corpus / "LibriSpeech",
             "--quesst-root", tiny_corpus / "quesst14Database", "--lexicon", micro_corpus / "librispeech-lexicon.txt",
             "--model", f"{family}:{upstream}:{ckpt}", *extra, "--tasks", " ".join(left), "--exproot", root / "exp",
             "--out", root / "results", "--device", "cpu", "--asr-max-steps", "1", "--pr-max-steps", "2", "--seeds", "0"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
        end = time.time()
        matrix_table.runs[f"{family}-{upstream}" + (f" (again from {left[0]})" if left != tasks else "")] = (
            " ".join(left), end - t0)
        run.seconds.update(_task_seconds(proc.stderr, end))
        if proc.returncode == 0:
            break
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()][-5:]
        message = "\n".join(errors) + "\n--- stderr tail ---\n" + proc.stderr[-3000:]
        failed = next((t for t in left if not (run.expdir / RESULT_FILES[t]).is_file()), None)
        if failed is None:  # every task wrote its result: the run failed after them (the table)
            run.errors["run"] = message
            break
        run.errors[failed] = message
        left = left[left.index(failed) + 1:]
    return run


def _table_row(path: Path) -> dict:
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#")) if r["source"] == "reproduced"]
    assert len(rows) == 1, rows
    return rows[0]


@pytest.mark.parametrize("combo,task", list(_cells()), indirect=["combo"])
def test_cell(combo: Run, task: str, request, matrix_table):
    """run_superb.sh ran this task for this family and upstream, wrote its result and filled its table cell."""
    cell = request.node.callspec.id
    outcome = "FAIL"
    try:
        assert task not in combo.errors, f"{cell}: run_superb.sh stopped in {task}:\n{combo.errors[task]}"
        result = json.loads((combo.expdir / RESULT_FILES[task]).read_text())
        if task == "qbe":
            per_layer = result["dev_mtwv_per_layer"]
            assert sorted(map(int, per_layer)) == list(range(LAST_HIDDEN_STATE + 1))  # best-dev-layer: every state
            assert result["last_layer"]["layer"] == LAST_HIDDEN_STATE
            assert -10 < result["eval_mtwv"] <= 1 and result["protocol"] == "best-dev-layer"
        else:
            assert result["metric"] == {"asr": "wer", "pr": "per"}[task] and result["value"] >= 0
        assert "run" not in combo.errors, f"{cell}: run_superb.sh failed after its tasks:\n{combo.errors['run']}"
        row = _table_row(combo.table)
        assert row[TABLE_COLUMNS[task]] not in ("", "missing", "n/a"), row
        family = cell.split("-", 1)[0]
        assert row["family"] == family
        if task == "qbe":
            assert row["qbe_last_layer"] == str(LAST_HIDDEN_STATE)
        outcome = "pass"
    finally:
        matrix_table.rows[cell] = (outcome, combo.seconds.get(task))


# ----------------------------------------------------------------------------------------- the QbE layer count


@pytest.mark.compat_env
def test_shape_of_every_format(tiny_hubert_ckpt, tiny_wavlm_pt, tmp_path):
    """The family-aware loader reads family, format and depth of each format without building the network."""
    from score_upstream.models.hubert import load_hubert, save_hf as save_hubert_hf
    from score_upstream.models.loader import read_shape
    from score_upstream.models.wavlm import load_wavlm, save_hf as save_wavlm_hf

    save_hubert_hf(load_hubert(tiny_hubert_ckpt), tmp_path / "hubert_hf")
    save_wavlm_hf(load_wavlm(tiny_wavlm_pt), tmp_path / "wavlm_hf")
    expected = {tiny_hubert_ckpt: ("hubert", "s3prl"), tmp_path / "hubert_hf": ("hubert", "hf"),
                tiny_wavlm_pt: ("wavlm", "wavlm"), tmp_path / "wavlm_hf": ("wavlm", "wavlm_hf")}
    for path, (family, fmt) in expected.items():
        shape = read_shape(path)
        assert (shape.family, shape.source_format, shape.layers, shape.embed_dim) == (family, fmt, 12, 48), path
        assert shape.last_hidden_state == 12
    from score_upstream.models.formats import CheckpointError

    with pytest.raises(CheckpointError, match="a wavlm checkpoint .* expected a hubert one"):
        read_shape(tiny_wavlm_pt, family="hubert")
    raw = torch.load(tiny_wavlm_pt, map_location="cpu", weights_only=True)
    raw["model"] = {k: v for k, v in raw["model"].items() if not k.startswith("encoder.layers.11.")}
    torch.save(raw, tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match=r"encoder_layers=12 but its weights hold layers 0\.\.10 \(11\)"):
        read_shape(tmp_path / "cut.pt")


def test_qbe_recipe_last_layer_of_a_wavlm(tiny_corpus, tiny_wavlm_pt, tmp_path):
    """recipes/qbe.sh --upstream wavlm_local --layer last: the last layer (12) is read from the WavLM checkpoint."""
    from test_recipes import RECIPES, _run

    proc = _run([RECIPES / "qbe.sh", "--upstream", "wavlm_local", "--ckpt", tiny_wavlm_pt, "--layer", "last",
                 "--quesst-root", tiny_corpus / "quesst14Database", "--expdir", tmp_path, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "qbe" / "qbe_result.json").read_text())
    assert (result["layer"], result["protocol"], result["last_layer"]["layer"]) == (12, "fixed-layer", 12)
    assert sorted(p.name for p in (tmp_path / "qbe" / "dev").glob("layer*")) == ["layer12"]
