"""What every trainer of this package shares: torchrun's environment, the device, the process group, the
newest resumable state in a run folder and the command-line wrapper (one error line, exit status 2).

Used by ``score-train`` (:mod:`score_upstream.training.train`) and ``score-pretrain``
(:mod:`score_upstream.pretrain.trainer`)::

    rank, world, local_rank = dist_env()
    device = setup_device("auto", local_rank, world)        # also joins the process group under torchrun
    path = latest_state(out_dir)                              # out_dir/state-000500.pt or None
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from score_upstream.training.config import ConfigError, config_changes

STATE_RE = r"state-(\d+)\.pt"  # resumable training states, as prune_checkpoints takes them


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
