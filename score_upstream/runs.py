"""Which downstream runs of an ASR or PR task make its result: run manifests and the learning rate chosen on dev.

A task folder (``EXPDIR/pr``, ``EXPDIR/asr``) holds one run per downstream seed, and with a learning-rate sweep
(the recipes' ``--lrs``) one per (learning rate, seed)::

    EXPDIR/pr/seed<S>/            one learning rate (``--lr``, or ``--lrs`` of one value)
    EXPDIR/pr/lr<LR>/seed<S>/     a sweep: LR as given on the command line (``lr1e-3``)

When the last stage of every run is done, the recipe writes ``EXPDIR/<task>/manifest.json`` (:func:`write_manifest`).
For a sweep it chooses the learning rate by the dev metric alone, as SUPERB does: each run's best dev value (the
lowest ``dev per`` / ``dev-clean wer`` s3prl printed while training, the one its ``dev-best`` checkpoint holds), the
mean over seeds per learning rate, the lowest mean wins (a tie goes to the rate listed first). The test metric of
the chosen rate's seeds is what the tables report (:func:`manifest_runs`); the other rates' test logs are never
read. Everything here reads and writes small JSON and text files: no torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
from pathlib import Path

from score_upstream.atomic import atomic_write_bytes
from score_upstream.stages import StageError, earlier_keys, read_marker

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# the dev split s3prl evaluates while training, and the metric, per task (its log_records: "<split> <key>: <value>")
DEV = {"pr": ("dev", "per"), "asr": ("dev-clean", "wer")}
_DEV_LINE = re.compile(r"^(?P<split>\S+) (?P<key>[a-z]+): (?P<value>[-+0-9.eEinfa]+)\s*$")
_LR = re.compile(r"^(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


def check_lr(text: str) -> str:
    """``text`` when it is a positive decimal learning rate (``1e-3``, ``0.0005``); StageError otherwise."""
    if not _LR.match(text) or float(text) <= 0:
        raise StageError(f"learning rate {text!r}: expected a positive number such as 1e-3 or 0.0005")
    return text


def run_folder(task_dir: Path, seed: int, lr: str | None, sweep: bool) -> Path:
    """The folder of one downstream run: ``seed<S>``, or ``lr<LR>/seed<S>`` in a sweep."""
    return task_dir / f"lr{lr}" / f"seed{seed}" if sweep else task_dir / f"seed{seed}"


def best_dev(train_log: Path, task: str) -> float | None:
    """The best (lowest) dev value s3prl printed in a training log (``dev per: 0.41``), or None when it printed
    none (the run never reached an evaluation step)."""
    split, key = DEV[task]
    try:
        text = train_log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    values = [float(m["value"]) for line in text.splitlines()  # splitlines also splits tqdm's \r
              if (m := _DEV_LINE.match(line)) and m["split"] == split and m["key"] == key]
    values = [v for v in values if math.isfinite(v)]
    return min(values) if values else None


def choose_lr(task_dir: Path, task: str, seeds: list[int], lrs: list[str]) -> tuple[str, dict]:
    """The learning rate with the lowest mean best-dev value over ``seeds``, and ``{lr: {"mean", "runs"}}`` for all.

    Raises StageError naming the run whose training log holds no dev value.
    """
    dev = {}
    for lr in lrs:
        runs = {}
        for s in seeds:
            log = run_folder(task_dir, s, lr, True) / "train.log"
            value = best_dev(log, task)
            if value is None:
                split, key = DEV[task]
                raise StageError(f"{log}: no '{split} {key}' line; the run of lr {lr}, seed {s} never evaluated on "
                                 "dev, so no learning rate can be chosen (rerun its training, stage 2)")
            runs[str(s)] = value
        dev[lr] = {"mean": statistics.fmean(runs.values()), "runs": runs}
    chosen = min(lrs, key=lambda lr: (dev[lr]["mean"], lrs.index(lr)))
    return chosen, dev


def write_manifest(task_dir: Path, task: str, seeds: list[int], last_stage: int, lrs: list[str] | None = None) -> dict:
    """``TASK_DIR/manifest.json``: the runs of this run of the recipe, each with its last stage's key, and the
    settings of the first one's stage 2 (all but the seed). With two or more ``lrs`` (a sweep) it also chooses the
    learning rate on dev (:func:`choose_lr`) and records every rate's dev values; the runs listed are the chosen
    rate's. ``lrs`` of one value (or none) is a plain run in ``seed<S>`` folders."""
    lrs = [check_lr(lr) for lr in lrs or []]
    sweep = len(lrs) > 1
    data: dict = {"task": task, "seeds": seeds, "last_stage": last_stage}
    if lrs:
        data["lrs"] = lrs
    if sweep:
        chosen, dev = choose_lr(task_dir, task, seeds, lrs)
        data.update({"lr": chosen, "dev_metric": " ".join(DEV[task]), "dev": dev, "runs_in": f"lr{chosen}"})
    elif lrs:
        data["lr"] = lrs[0]
    keys, settings = {}, {}
    for s in seeds:
        folder = run_folder(task_dir, s, data.get("lr"), sweep)
        marker = read_marker(folder / f".stage{last_stage}.done")
        if not marker or not marker.get("key"):
            raise StageError(f"{folder}: no stage-{last_stage} marker; the run of seed {s} did not finish")
        keys[str(s)] = marker["key"]
        if not settings:
            train = read_marker(folder / ".stage2.done") or {}
            settings = {k: v for k, v in (train.get("inputs") or {}).items() if k != "seed"}
    data.update({"keys": keys, "settings": settings})
    atomic_write_bytes((json.dumps(data, indent=2) + "\n").encode(), task_dir / MANIFEST)
    if sweep:
        means = ", ".join(f"{lr}: {dev[lr]['mean']:.4f}" for lr in lrs)
        print(f"learning rate chosen on {data['dev_metric']} (mean over seeds {' '.join(map(str, seeds))}): "
              f"{chosen} ({means})")
    return data


def read_manifest(task_dir: str | os.PathLike, warn: bool = True) -> dict | None:
    """``TASK_DIR/manifest.json`` as written by :func:`write_manifest`; None when absent or unreadable (warned
    unless ``warn`` is false: a second reader of a manifest :func:`manifest_runs` already warned about)."""
    path = Path(task_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["seeds"] = [int(s) for s in data["seeds"]]
        data["last_stage"] = int(data.get("last_stage", 4))
        if not isinstance(data.get("keys", {}), dict) or not isinstance(data.get("runs_in", ""), str):
            raise TypeError("'keys' must be an object and 'runs_in' a folder name")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        if warn:
            logger.warning("%s: unreadable (%s: %s); reading every seed folder", path, type(e).__name__, e)
        return None
    return data


def manifest_runs(task_dir: str | os.PathLike) -> dict[int, Path] | None:
    """``{seed: run folder}`` of the last run in ``task_dir`` (its ``manifest.json``; for a sweep, the folders of
    the learning rate chosen on dev), or None when there is no manifest.

    Seed folders beside them that the manifest does not list, and listed runs redone since (their marker holds
    another key) or made before the data preparation was redone, are named in one warning each and left out.
    """
    task_dir = Path(task_dir)
    data = read_manifest(task_dir)
    if data is None:
        return None
    seeds, keys, last = data["seeds"], data.get("keys", {}), data["last_stage"]
    base = task_dir / data["runs_in"] if data.get("runs_in") else task_dir
    if base.parent != task_dir and base != task_dir:
        logger.warning("%s: 'runs_in' %r is not a folder of it; reading every seed folder", task_dir / MANIFEST,
                       data["runs_in"])
        return None
    on_disk = sorted(int(p.name[4:]) for p in base.glob("seed*") if p.is_dir() and p.name[4:].isdigit())
    strays = [s for s in on_disk if s not in seeds]
    if strays:
        logger.warning("%s: seed folders %s are not from the last run (manifest.json lists seeds %s); left out",
                       base, ", ".join(f"seed{s}" for s in strays), " ".join(map(str, seeds)))
    # the stages all runs share (data preparation), as they are now
    shared = {k: v for k, v in earlier_keys(task_dir, None, last).items() if v != "missing"}
    kept = {}
    for s in seeds:
        marker = read_marker(base / f"seed{s}" / f".stage{last}.done") or {}
        made_from = marker.get("inputs") or {}
        if str(s) in keys and marker.get("key") != keys[str(s)]:
            logger.warning("%s: seed%d was redone or removed after manifest.json was written; left out", base, s)
        elif any(k in made_from and made_from[k] != v for k, v in shared.items()):
            logger.warning("%s: seed%d was made before the data preparation was redone; left out", base, s)
        else:
            kept[s] = base / f"seed{s}"
    return kept


def chosen_lr(task_dir: str | os.PathLike) -> dict | None:
    """``{"lr", "lrs", "dev_metric", "dev"}`` of a sweep's manifest (the rate chosen on dev and every rate's mean
    dev value), or None when the last run was not a sweep. Read after :func:`manifest_runs`, which warned about
    an unreadable manifest already."""
    data = read_manifest(task_dir, warn=False)
    if not data or len(data.get("lrs") or []) < 2 or "dev" not in data:
        return None
    return {k: data[k] for k in ("lr", "lrs", "dev_metric", "dev")}
