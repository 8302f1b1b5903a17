"""What every trainer of this package shares: torchrun's environment, the device, the process group, the
run folder (one run per folder: its newest resumable state, the refusal of another run's folder,
``--overwrite``, the log cut at a resumed step) and the command-line wrapper (one error line, exit status 2).

Used by ``score-train`` (:mod:`score_upstream.training.train`) and ``score-pretrain``
(:mod:`score_upstream.pretrain.trainer`)::

    rank, world, local_rank = dist_env()
    check_out_dir(out_dir, "false", False, ("score_hubert.pt",), TrainError)   # refuses another run's folder
    device = setup_device("auto", local_rank, world)        # also joins the process group under torchrun
    path = latest_state(out_dir)                              # out_dir/state-000500.pt or None
    trim_log(out_dir / "train_log.csv", 500, HEADER)          # a resumed run's log ends at its state
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from score_upstream.training.config import ConfigError, config_changes

STATE_RE = r"state-(\d+)\.pt"  # resumable training states, as prune_checkpoints takes them
# files every trainer writes into its run folder, besides its final model(s): states, logs, the configs of
# each start (keep_config) and TensorBoard events
RUN_FILE_RES = (STATE_RE, r"train_log\.csv", r"valid_log\.csv", r"config\.yaml", r"config-\d{8}-\d{6}-\d+\.yaml")
TB_DIR = "tb"


def dist_env() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as torchrun sets them; ``(0, 1, 0)`` for a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def setup_device(device: str, local_rank: int, world: int) -> torch.device:
    """The config's ``device`` (auto | cpu | cuda | cuda:N) as a torch device; joins the process group when
    ``world > 1`` (NCCL on CUDA, Gloo on CPU).

    Raises:
        ConfigError: CUDA asked for where none is visible.
    """
    if device == "auto":
        dev = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {device!r} requested but no CUDA device is visible; use device=cpu")
    else:
        dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def latest_state(out: Path) -> Path | None:
    """The ``state-NNNNNN.pt`` of ``out`` with the largest step, or None."""
    if not out.is_dir():
        return None
    rx = re.compile(STATE_RE)
    found = sorted((int(m.group(1)), p) for p in out.glob("state-*.pt") if (m := rx.fullmatch(p.name)))
    return found[-1][1] if found else None


def run_files(out: Path, finals: tuple[str, ...]) -> list[Path]:
    """The files (and final-model directories) of ``out`` that a trainer wrote for a run, sorted by name.

    Args:
        finals: names of the trainer's final models (files or directories, e.g. ``score_hubert.pt``,
            ``score_hubert_hf``). Files of other names are never listed (a user's own files stay).
    """
    if not out.is_dir():
        return []
    rxs = [re.compile(r) for r in RUN_FILE_RES]
    found = [p for p in out.iterdir() if (p.is_file() and any(r.fullmatch(p.name) for r in rxs)) or p.name in finals]
    tb = out / TB_DIR
    if tb.is_dir():
        found += [p for p in tb.iterdir() if p.is_file() and p.name.startswith("events.out.tfevents.")]
    return sorted(found, key=lambda p: (p.parent != out, p.name))


def check_out_dir(out: Path, resume: str, overwrite: bool, finals: tuple[str, ...], error: type[Exception]) -> None:
    """Refuse to start a run in a folder that holds another run's files; one line naming the ways forward.

    A folder holds one run. Run files (:func:`run_files`) there are fine when ``overwrite`` deletes them
    first (:func:`clear_run`), or when ``resume`` is ``true``/``auto`` and this start continues them: from
    their newest state (the resume checks of the config follow), or from step 0 when a start left logs but
    no state and no final model. Reads only: call it before anything is written. Raises ``error``.
    """
    out = Path(out)
    if overwrite and resume == "true":
        raise error(f"{out}: --overwrite deletes the states that resume=true continues from; pass one of them")
    held = run_files(out, finals)
    if not held or overwrite:
        return
    has_state = latest_state(out) is not None
    if resume != "false" and (has_state or not any(p.name in finals for p in held)):
        return
    if has_state:
        forward = "continue that run with resume=true, delete its files with --overwrite, or choose another --out"
    else:
        forward = "it holds no state-NNNNNN.pt to resume from: delete its files with --overwrite, or choose another --out"
    raise error(f"{out} already holds another run ({describe_run_files(held)}); {forward}")


def describe_run_files(held: list[Path]) -> str:
    """``held`` (:func:`run_files`) in a few words: states first, then final models, logs, configs, events."""
    rx = re.compile(STATE_RE)
    states = sorted((p for p in held if rx.fullmatch(p.name)), key=lambda p: p.name)
    configs = [p for p in held if p.name.startswith("config")]
    events = [p for p in held if p.name.startswith("events.out.tfevents.")]
    rest = [p.name for p in held if p not in states and p not in configs and p not in events]
    parts = []
    if states:
        parts.append(", ".join(p.name for p in states) if len(states) <= 3
                     else f"{len(states)} states {states[0].name} .. {states[-1].name}")
    parts += sorted(rest, key=lambda n: n.endswith(".csv"))  # final models, then logs
    if configs:
        parts.append(f"{len(configs)} config file(s)")
    if events:
        parts.append("TensorBoard events")
    return ", ".join(parts)


def clear_run(out: Path, finals: tuple[str, ...]) -> list[Path]:
    """Delete the run files of ``out`` (:func:`run_files`: states, logs, configs, TensorBoard events, final
    models); other files stay. Returns what was deleted."""
    held = run_files(Path(out), finals)
    for p in held:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    tb = Path(out) / TB_DIR
    if tb.is_dir() and not any(tb.iterdir()):
        tb.rmdir()
    if held:
        logging.getLogger(__name__).info("--overwrite: deleted %d file(s) of the previous run in %s: %s", len(held), out,
                                         ", ".join(p.name for p in held))
    return held


def trim_log(path: Path, step: int, header: list[str]) -> None:
    """Keep the rows of the CSV log ``path`` up to ``step`` (a run resumed from an earlier state repeats the
    later updates) under ``header`` (columns it lacks stay empty); rewritten atomically, only if it changes."""
    from score_upstream.atomic import atomic_write_bytes

    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        old_header, rows = reader.fieldnames or [], list(reader)

    def within(row: dict) -> bool:
        try:
            return int(row.get("step") or 0) <= step
        except ValueError:
            return False

    kept = [r for r in rows if within(r)]
    if len(kept) == len(rows) and list(old_header) == list(header):
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\r\n")
    w.writeheader()
    w.writerows(kept)
    atomic_write_bytes(buf.getvalue().encode(), path)
    if len(kept) < len(rows):
        logging.getLogger(__name__).info("%s: dropped %d row(s) after step %d (this run resumes there)", path,
                                         len(rows) - len(kept), step)


def check_resume_config(path: Path, old: dict, new: dict, ignore: tuple[str, ...], allow: bool,
                        error: type[Exception]) -> None:
    """Refuse to resume ``path`` when a recipe key (one not in ``ignore``) differs between the checkpoint's
    config ``old`` and this run's ``new`` (plain dicts), naming the first and listing all; with ``allow`` only
    log them. Raises ``error``."""
    changed = config_changes(old, new, ignore=ignore)
    if not changed:
        return
    listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
    if not allow:
        raise error(f"{path}: resuming would change config key '{next(iter(changed))}' ({listing}); resume with "
                    "the recipe and overrides the run started with, or pass --allow-config-change")
    logging.getLogger(__name__).warning("resuming %s with changed config keys (--allow-config-change): %s", path, listing)


def keep_config(out: Path, text: str) -> Path:
    """Write this start's resolved config as ``out/config-<UTC time>-<n>.yaml`` (n counts starts within one
    second), so every start of a run is kept and the names sort in start order."""
    from score_upstream.atomic import atomic_write_bytes

    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    n = 0
    while (out / f"config-{stamp}-{n}.yaml").exists():
        n += 1
    return atomic_write_bytes(text.encode(), out / f"config-{stamp}-{n}.yaml")


def run_cli(prog: str, run: Callable[[], object], errors: tuple[type[BaseException], ...]) -> int:
    """Configure logging (INFO on rank 0), call ``run``; an expected error is one line and exit status 2."""
    logging.basicConfig(level=logging.INFO if dist_env()[0] == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        run()
    except errors as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
