"""Reading experiments: one model's SUPERB results from the folder the recipes leave, and published numbers.

:func:`read_experiment` turns an experiment folder into a :class:`ModelResult`; :func:`read_reported` reads
``results/reported.csv``. Nothing here compares or renders (``score_upstream.report.table``,
``score_upstream.report.render``, ``score_upstream.report.plot``); the metric definitions every report module
shares (:data:`METRICS`, :data:`LOWER_IS_BETTER`, the cell words ``missing``, ``not run``, ``n/a``) live here,
at the bottom of the imports.

Each ``EXPDIR`` is one model's experiment root, as ``recipes/{asr,pr,qbe}.sh`` and ``run_superb.sh`` lay it out::

    EXPDIR/model.json            {"name": "SCORE", "upstream": "score_hubert", "ckpt": "exp/score/score_hubert.pt",
                                  "kind": "score",          # kind: hubert | wavlm | score | laser | spin | other
                                  "family": "hubert"}       # hubert | wavlm (absent: wavlm for kind wavlm, else hubert)
    EXPDIR/asr/seed<S>/test-clean.log   stdout of `score-s3prl -m evaluate -t test-clean` (s3prl asr expert),
                                 one per downstream seed S:
                                     test-clean loss: 0.1021
                                     test-clean uer: 1.9012
                                     test-clean wer: 6.4213                    <- WER, already in %
                                 (+ s3prl's test-clean-noLM-hyp.ark / -ref.ark, used as a cross-check)
    EXPDIR/pr/seed<S>/test.log   stdout of `score-s3prl -m evaluate -t test` (s3prl ctc expert, libriphone):
                                     test loss: 0.2210
                                     test per: 0.0541                          <- PER as a fraction
                                 (+ test-hyp.ark / test-ref.ark)
    EXPDIR/qbe/qbe_result.json   {"layer": 12, "dev_mtwv": 0.081, "eval_mtwv": 0.0736,
                                  "protocol": "best-dev-layer" | "fixed-layer",
                                  "scope": "english-only" | "all-queries",
                                  "eval_mtwv_interval": [0.061, 0.087],       <- optional: bootstrap over queries
                                  "last_layer": {"layer": 12, "eval_mtwv": 0.0736,
                                                 "eval_mtwv_interval": [..]}}  <- optional
                                 (the recipe's spellings "superb-best-dev" and "english"/"all-languages"
                                 are read too)

WER and PER are the mean over the seed folders, with their sample standard deviation (ddof 1) and count
(``wer_sd``, ``wer_n``; sd ``n/a`` for one seed); a folder from before per-seed runs (``asr/test-clean.log``
directly) counts as one run. MTWV carries its bootstrap interval (``mtwv_low``/``mtwv_high``) and the last
layer's MTWV beside the reported one (``mtwv_last``, ``qbe_last_layer``). The last matching line of a log wins.
A task whose folder (``asr/``, ``pr/``, ``qbe/``) exists but holds no result is ``missing``; a task whose folder
does not exist was not run (:attr:`ModelResult.tasks`). Nothing is ever estimated. ``model.json`` absent: the
folder name is the model name and its kind is ``other``.

How each model was trained comes from its checkpoint (``ckpt`` of ``model.json``, a ``score-train`` output):
``train_method`` (score, laser, spin); ``train_speech_h``, the input audio drawn for the updates in hours
(the checkpoint's ``input_speech_hours``: the SCORE paper's accounting, SCORE 3,600 x 8 utterances ~101 h
vs SPIN 5,000 x 256 s ~356 h), with ``train_speech_vs_spin`` the ratio to the reproduced SPIN row's; and
``train_view_speech_h``, the audio of the views that went through the trainable model (``view_speech_hours``,
``processed_speech_hours`` in older checkpoints; SCORE: the student's view, LASER and SPIN: both views).
A checkpoint from before ``input_speech_hours`` existed has ``train_speech_h`` missing (its view hours are
a different quantity and never stand in for it); one converted from SPIN's release says ``spin (converted)``
with both hours missing: nothing is estimated.

Published numbers come from ``results/reported.csv`` (``--reported``), one row per (model, source), with
absolute metrics and/or the relative figures a paper quotes (:func:`read_reported`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from score_upstream.runs import MANIFEST, chosen_lr, manifest_runs

logger = logging.getLogger(__name__)

MISSING = "missing"  # the task ran (its folder exists) but left no number
NOT_RUN = "not run"  # no reproduced row ran the task
NOT_REPORTED = "not reported"
NA = "n/a"
KINDS = ("hubert", "wavlm", "score", "laser", "spin", "other")
FAMILIES = ("hubert", "wavlm")
VANILLA = ("hubert", "wavlm")  # the kinds that are a family's unmodified model (and its baseline)
OTHER_FAMILY = "n/a (other family)"
METRICS = ("wer", "per", "mtwv")
LAST = "mtwv_last"  # the last layer's MTWV, reported beside the protocol's layer
TASK_OF = {"wer": "ASR", "per": "PR", "mtwv": "QbE", LAST: "QbE last layer"}
REL_KEY = {"wer": "asr", "per": "pr", "mtwv": "qbe", LAST: "qbe_last"}  # rel_<key>_vs_<kind> columns
LOWER_IS_BETTER = {"wer": True, "per": True, "mtwv": False, LAST: False}
TASK_DIR = {"wer": "asr", "per": "pr", "mtwv": "qbe", LAST: "qbe"}  # EXPDIR/<folder> of each metric's task
_SEED_DIR = re.compile(r"^seed(\d+)$")
PROTOCOLS = {"best-dev-layer": "best-dev-layer", "superb-best-dev": "best-dev-layer", "fixed-layer": "fixed-layer"}
SCOPES = {"english-only": "english-only", "english": "english-only", "all-queries": "all-queries",
          "all-languages": "all-queries"}
_LINE = re.compile(r"^\s*(?P<split>[\w.-]+) (?P<key>\w+): (?P<value>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))\s*$")


class ResultsError(ValueError):
    """Bad ``score-results`` input (an experiment folder or the reported table)."""


@dataclass
class ModelResult:
    """One table row. Metrics in % for WER/PER (mean over seeds), raw MTWV; ``None`` = missing / not reported.

    ``runs`` holds each seed's value ({metric: {seed: value}}; seed None for a run without a seed folder),
    ``sd`` the standard deviation over seeds where there are two or more, ``intervals`` the bootstrap
    interval over queries of ``mtwv`` and ``mtwv_last``. ``tasks``: the metrics whose task folder exists
    (a task run, finished or not); ``expdir``, ``upstream`` and ``ckpt``: where a reproduced row came from.
    """

    name: str
    kind: str = "other"
    source: str = "reproduced"
    family: str = "hubert"
    wer: float | None = None
    per: float | None = None
    mtwv: float | None = None
    mtwv_last: float | None = None
    runs: dict[str, dict] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    qbe_layer: int | None = None
    qbe_last_layer: int | None = None
    qbe_protocol: str | None = None
    qbe_scope: str | None = None
    reported_rel: dict[str, float] = field(default_factory=dict)  # metric -> % vs HuBERT, as a paper states it
    citation: str = ""
    notes: list[str] = field(default_factory=list)
    train_method: str | None = None  # from the checkpoint's provenance (score-train)
    train_input_speech_hours: float | None = None  # input audio drawn for the updates (the paper's accounting)
    train_view_speech_hours: float | None = None  # audio of the views through the trainable model
    tasks: set[str] = field(default_factory=set)
    expdir: Path | None = None
    upstream: str | None = None
    ckpt: str | None = None
    ckpt_sha256: str | None = None
    lrs: dict[str, dict] = field(default_factory=dict)  # metric -> learning-rate sweep chosen on dev (runs.chosen_lr)


class Training(NamedTuple):
    """What a checkpoint says about its fine-tuning; None where it does not say."""

    method: str | None = None
    input_speech_hours: float | None = None  # input audio drawn for the updates (the SCORE paper's accounting)
    view_speech_hours: float | None = None  # audio of the views through the trainable model


def _hours(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_training(ckpt: str | Path | None) -> Training:
    """The method and the two speech quantities a ``score-train`` checkpoint records in its ``score`` entry.

    ``input_speech_hours``: input audio drawn for the updates (the paper's accounting); ``view_speech_hours``
    (``processed_speech_hours`` in older checkpoints): audio of the views through the trainable model. Each is
    None where the checkpoint is absent or does not say (SCORE checkpoints from before methods existed:
    method ``score``, hours None); the one never stands in for the other.
    """
    if not ckpt or not Path(ckpt).is_file():
        return Training()
    import torch

    try:
        raw = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # a checkpoint the table cannot read only loses these two cells
        logger.warning("%s: cannot read the training provenance (%s)", ckpt, e)
        return Training()
    info = raw.get("score") if isinstance(raw, dict) else None
    if isinstance(info, dict):
        method = info.get("method_name") or ("score" if "SCORE" in str(info.get("method", "")) else None)
        views = info.get("view_speech_hours", info.get("processed_speech_hours"))
        return Training(method, _hours(info.get("input_speech_hours")), _hours(views))
    if isinstance(raw, dict) and "spin" in raw:
        return Training("spin (converted)")
    return Training()


def parse_s3prl_log(path: str | Path, key: str, splits: tuple[str, ...] = ("test-clean", "test")) -> float | None:
    """Last value printed as ``<split> <key>: <value>`` (s3prl's ``log_records``) for a test split, or None."""
    path = Path(path)
    if not path.is_file():
        return None
    value = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():  # also splits tqdm's \r
        m = _LINE.match(line)
        if m and m["key"] == key and m["split"] in splits:
            value = float(m["value"])
    return value if value is not None and math.isfinite(value) else None


def error_rate_from_arks(hyp: Path, ref: Path, whitespace_split: bool = True) -> float | None:
    """Error rate in % from s3prl's ``<utt> <text>`` hyp/ref ark files (None if either is absent).

    ``whitespace_split=False`` reproduces the ctc expert's ``text.split(' ')`` token count.
    """
    import editdistance

    if not (hyp.is_file() and ref.is_file()):
        return None

    def read(p: Path) -> dict[str, str]:
        return dict((line.split(" ", 1) + [""])[:2] for line in p.read_text().split("\n") if line)

    hyps, refs = read(hyp), read(ref)
    split = str.split if whitespace_split else (lambda s: s.split(" "))
    errors = sum(editdistance.eval(split(hyps.get(u, "")), split(r)) for u, r in refs.items())
    total = sum(len(split(r)) for r in refs.values())
    return 100.0 * errors / total if total else None


def _cross_check(row: ModelResult, metric: str, value: float, arks: float | None) -> None:
    if arks is not None and abs(arks - value) > 1e-3 * max(1.0, abs(value)):
        row.notes.append(f"{metric.upper()} {value:.2f} in the log but {arks:.2f} from the hyp/ref arks")
        logger.warning("%s: %s", row.name, row.notes[-1])


def _interval(value) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"interval {value!r}: expected [low, high] with low <= high")
    return low, high


def read_qbe_result(path: Path) -> dict | None:
    """``qbe_result.json`` validated and normalised, or None (with a warning) if absent or malformed.

    Returns ``{"layer", "eval_mtwv", "dev_mtwv", "protocol", "scope", "interval", "last"}``; ``interval`` is
    None when the file has none, ``last`` None or ``{"layer", "eval_mtwv", "interval"}``.
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        out = {
            "layer": int(data["layer"]),
            "eval_mtwv": float(data["eval_mtwv"]),
            "dev_mtwv": None if data.get("dev_mtwv") is None else float(data["dev_mtwv"]),
            "protocol": PROTOCOLS[data["protocol"]],
            "scope": SCOPES[data["scope"]],
            "interval": _interval(data.get("eval_mtwv_interval")),
            "last": None,
        }
        last = data.get("last_layer")
        if last is not None:
            out["last"] = {"layer": int(last["layer"]), "eval_mtwv": float(last["eval_mtwv"]),
                           "interval": _interval(last.get("eval_mtwv_interval"))}
    except (ValueError, KeyError, TypeError) as e:
        logger.warning("%s: unreadable (%s: %s); QbE marked missing", path, type(e).__name__, e)
        return None
    return out if math.isfinite(out["eval_mtwv"]) else None


def read_runs(task_dir: Path, log_name: str, key: str) -> dict[int | None, tuple[float, Path]]:
    """Test metric of each downstream seed: ``task_dir/seed<S>/log_name`` -> {S: (value, run folder)}.

    The seeds are those of the last run, as ``task_dir/manifest.json`` lists them (``score_upstream.runs``; for a
    learning-rate sweep, the runs of the rate chosen on dev; seed folders of other runs beside them are named in a
    warning and left out). Without a manifest (a folder
    from before manifests) every seed folder counts, with a warning; without seed folders, ``task_dir/log_name``
    (a run from before per-seed runs) is one run, seed None. A seed folder whose log holds no test line (an
    unfinished run) is left out with a warning.
    """
    runs: dict[int | None, tuple[float, Path]] = {}
    listed = manifest_runs(task_dir)
    if listed is not None:
        seeded = sorted(listed.items())
    else:
        seeded = sorted((int(m.group(1)), p) for p in (task_dir.iterdir() if task_dir.is_dir() else [])
                        if p.is_dir() and (m := _SEED_DIR.match(p.name)))
        if seeded:
            logger.warning("%s: no %s (a folder from before run manifests); reading every seed folder: %s",
                           task_dir, MANIFEST, ", ".join(p.name for _, p in seeded))
    for seed, run in seeded or [(None, task_dir)]:
        value = parse_s3prl_log(run / log_name, key)
        if value is not None:
            runs[seed] = (value, run)
        elif seed is not None:
            logger.warning("%s: no test %s in %s; seed %d left out", task_dir, key, run / log_name, seed)
    return runs


def _set_runs(row: ModelResult, metric: str, values: dict) -> None:
    """Mean over seeds into the row, with the per-seed values and (from two seeds) the sd."""
    if not values:
        return
    row.runs[metric] = values
    setattr(row, metric, statistics.fmean(values.values()))
    if len(values) > 1:
        row.sd[metric] = statistics.stdev(values.values())


def empty_experiment(expdir: str | Path) -> str | None:
    """Why ``expdir`` holds no experiment (no model.json, no task folder), or None when it holds one.

    The message names the experiment folders inside it, for a parent folder given by mistake.
    """
    expdir = Path(expdir)
    if not expdir.is_dir() or (expdir / "model.json").is_file():
        return None
    folders = sorted(set(TASK_DIR.values()))
    if any((expdir / folder).is_dir() for folder in folders):
        return None
    inside = sorted(p.parent.name for p in expdir.glob("*/model.json"))
    where = (f"it holds {len(inside)}: pass {expdir}/{{{','.join(inside)}}}" if inside
             else "run_superb.sh or the recipes write them")
    return (f"{expdir}: no model.json and no {'/, '.join(folders)}/ folder; expected one experiment folder per "
            f"model ({where})")


def read_experiment(expdir: str | Path) -> ModelResult:
    """Collect one model's WER, PER and MTWV from ``expdir`` (layout in the module docstring)."""
    expdir = Path(expdir)
    if not expdir.is_dir():
        raise ResultsError(f"{expdir}: experiment folder not found; expected EXPDIR with model.json, asr/, pr/, qbe/")
    meta: dict = {}
    if (expdir / "model.json").is_file():
        try:
            meta = json.loads((expdir / "model.json").read_text())
        except ValueError as e:
            raise ResultsError(f"{expdir / 'model.json'}: not JSON ({e}); expected {{\"name\", \"upstream\", \"ckpt\", \"kind\"}}") from None
        if not isinstance(meta, dict) or meta.get("kind", "other") not in KINDS:
            raise ResultsError(f"{expdir / 'model.json'}: kind {meta.get('kind') if isinstance(meta, dict) else meta!r}, expected one of {KINDS}")
        if meta.get("family", "hubert") not in FAMILIES:
            raise ResultsError(f"{expdir / 'model.json'}: family {meta.get('family')!r}, expected one of {FAMILIES}")
    else:
        logger.warning("%s: no model.json; naming the row %r, kind 'other'", expdir, expdir.name)
    kind = meta.get("kind", "other")
    row = ModelResult(name=str(meta.get("name") or expdir.name), kind=kind, family=default_family(kind, meta.get("family")))
    row.citation = " ".join(str(meta[k]) for k in ("upstream", "ckpt") if meta.get(k))
    row.expdir, row.upstream, row.ckpt = expdir, meta.get("upstream"), meta.get("ckpt")
    row.ckpt_sha256 = meta.get("ckpt_sha256")
    row.tasks = {m for m, folder in TASK_DIR.items() if (expdir / folder).is_dir()}
    row.train_method, row.train_input_speech_hours, row.train_view_speech_hours = read_training(meta.get("ckpt"))

    wers = {}
    for seed, (wer, run) in read_runs(expdir / "asr", "test-clean.log", "wer").items():
        _cross_check(row, "wer", wer, error_rate_from_arks(run / "test-clean-noLM-hyp.ark", run / "test-clean-noLM-ref.ark"))
        wers[seed] = wer
    _set_runs(row, "wer", wers)
    if wers and (sweep := chosen_lr(expdir / "asr")):
        row.lrs["wer"] = sweep
    pers = {}
    for seed, (per, run) in read_runs(expdir / "pr", "test.log", "per").items():
        pers[seed] = 100.0 * per  # ctc's per is a fraction; the table is in %
        _cross_check(row, "per", pers[seed], error_rate_from_arks(run / "test-hyp.ark", run / "test-ref.ark", whitespace_split=False))
    _set_runs(row, "per", pers)
    if pers and (sweep := chosen_lr(expdir / "pr")):
        row.lrs["per"] = sweep
    qbe = read_qbe_result(expdir / "qbe" / "qbe_result.json")
    if qbe:
        row.mtwv, row.qbe_layer = qbe["eval_mtwv"], qbe["layer"]
        row.qbe_protocol, row.qbe_scope = qbe["protocol"], qbe["scope"]
        if qbe["interval"]:
            row.intervals["mtwv"] = qbe["interval"]
        if qbe["last"]:
            row.mtwv_last, row.qbe_last_layer = qbe["last"]["eval_mtwv"], qbe["last"]["layer"]
            if qbe["last"]["interval"]:
                row.intervals[LAST] = qbe["last"]["interval"]
    for metric, what in (("wer", "asr/seed<S>/test-clean.log"), ("per", "pr/seed<S>/test.log"), ("mtwv", "qbe/qbe_result.json")):
        if getattr(row, metric) is None and metric in row.tasks:
            logger.warning("%s: no %s result in %s; marked missing", expdir, TASK_OF[metric], expdir / what)
        elif getattr(row, metric) is None:
            logger.info("%s: no %s/ folder; %s not run", expdir, TASK_DIR[metric], TASK_OF[metric])
    return row


def default_family(kind: str, family: str | None) -> str:
    """The row's model family: as given, else ``wavlm`` for the vanilla WavLM kind and ``hubert`` otherwise."""
    return family or ("wavlm" if kind == "wavlm" else "hubert")


def read_reported(path: str | Path) -> list[ModelResult]:
    """Rows of ``reported.csv``: name, kind, wer, per, mtwv, rel_{asr,pr,qbe}_vs_hubert, qbe_protocol, qbe_scope,
    source, and optionally family."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ResultsError(f"{path}: cannot read the reported-numbers table ({e.strerror})") from None
    reader = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    need = {"name", "kind", "wer", "per", "mtwv", "rel_asr_vs_hubert", "rel_pr_vs_hubert", "rel_qbe_vs_hubert", "source"}
    if not reader.fieldnames or not need <= set(reader.fieldnames):
        raise ResultsError(f"{path}: columns {reader.fieldnames}, expected at least {sorted(need)}")
    rows = []
    for number, rec in enumerate(reader, 2):
        try:
            num = {k: float(rec[k]) if rec[k] and rec[k].strip() else None for k in need - {"name", "kind", "source"}}
        except ValueError as e:
            raise ResultsError(f"{path}: line {number}: {e}; expected numbers or empty cells") from None
        if rec["kind"] not in KINDS or not rec["source"] or (rec.get("family") or "hubert") not in FAMILIES:
            raise ResultsError(f"{path}: line {number}: kind {rec['kind']!r} (expected {KINDS}), family "
                               f"{rec.get('family')!r} (expected {FAMILIES} or empty) and a non-empty source")
        rel = {m: num[f"rel_{TASK_OF[m].lower()}_vs_hubert"] for m in METRICS}
        rows.append(ModelResult(
            name=rec["name"], kind=rec["kind"], source="reported", family=default_family(rec["kind"], rec.get("family")),
            wer=num["wer"], per=num["per"], mtwv=num["mtwv"],
            qbe_protocol=PROTOCOLS.get(rec.get("qbe_protocol") or "", None), qbe_scope=SCOPES.get(rec.get("qbe_scope") or "", None),
            reported_rel={m: v for m, v in rel.items() if v is not None}, citation=rec["source"],
        ))
    return rows



def qbe_mismatch(row: ModelResult, base: ModelResult, metric: str) -> str | None:
    """Why the MTWVs of two rows cannot be compared (QbE protocol or scope differ), or None when they can."""
    if metric == "mtwv" and (row.qbe_protocol, row.qbe_scope) != (base.qbe_protocol, base.qbe_scope):
        return "n/a (QbE protocol/scope differ)"
    if metric == LAST and row.qbe_scope != base.qbe_scope:
        return "n/a (QbE scope differs)"
    return None
