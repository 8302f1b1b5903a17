"""s3prl's converted HuBERT format (what ``hubert_local`` loads), read and written.

A ``torch.save``d dict::

    {
        "task_cfg": {...},               # plain dict, fairseq cfg["task"]
        "model_cfg": {...},              # plain dict, fairseq cfg["model"]
        "model_weight": {name: Tensor},  # s3prl/fairseq parameter names
        "dictionaries_symbols": [[...]], # one symbol list per label dictionary
        # any further plain keys, e.g. "score": {...} and "score_format_version": 1 in a SCORE checkpoint
    }

Everything in it is tensors and plain containers, so it loads with ``torch.load(weights_only=True)``
(s3prl's own loader uses torch's default, which is weights-only since torch 2.6).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import torch

from score_upstream.atomic import atomic_save
from score_upstream.models.formats import S3PRL_KEYS, CheckpointError, Probe, RawHubert

logger = logging.getLogger(__name__)

NAME = "s3prl"
EXPECTS = "s3prl converted .pt with keys " + ", ".join(S3PRL_KEYS)
PLAIN_TYPES = (str, int, float, bool, type(None))


def detect(p: Probe) -> bool:
    return p.strings is not None and set(S3PRL_KEYS) <= p.strings


def read(path: Path) -> RawHubert:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"global '{m.group(1)}'" if m else (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"{path}: refusing to unpickle {what}; s3prl's converted format holds only tensors and plain "
            "config and loads with weights_only=True"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read as a torch file ({type(e).__name__}: {e}); expected {EXPECTS}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, expected a dict with keys {', '.join(S3PRL_KEYS)}")
    missing = [k for k in S3PRL_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: key(s) {missing} missing; expected {EXPECTS}")
    for key in ("task_cfg", "model_cfg", "model_weight"):
        if not isinstance(state[key], dict):
            raise CheckpointError(f"{path}: '{key}' is a {type(state[key]).__name__}, expected a dict")
    bad = [k for k, v in state["model_weight"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: model_weight entries {bad[:3]} are not tensors")
    symbols = state["dictionaries_symbols"]
    if not isinstance(symbols, (list, tuple)):
        raise CheckpointError(f"{path}: 'dictionaries_symbols' is a {type(symbols).__name__}, expected a list of symbol lists")
    extra = {k: v for k, v in state.items() if k not in S3PRL_KEYS}
    return RawHubert(
        model_cfg=dict(state["model_cfg"]),
        task_cfg=dict(state["task_cfg"]),
        symbols=[list(s) if s is not None else None for s in symbols],
        state_dict=dict(state["model_weight"]),
        extra=extra,
        source_format=NAME,
        path=path,
    )


def check_plain(value, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``value`` is tensors/str/numbers/bool/None in lists, tuples, dicts."""
    if isinstance(value, torch.Tensor) or isinstance(value, PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, PLAIN_TYPES):
                raise CheckpointError(f"{where}: key {k!r} of type {type(k).__name__} is not plain data")
            check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(
        f"{where}: value of type {type(value).__module__}.{type(value).__name__} is not plain data; "
        "checkpoints hold only tensors, str, numbers, bool, None, lists and dicts"
    )


def to_state(raw: RawHubert) -> dict:
    """The dict :func:`write` saves (checked to be weights-only loadable)."""
    clash = [k for k in raw.extra if k in S3PRL_KEYS]
    if clash:
        raise CheckpointError(f"extra keys {clash} would overwrite s3prl's own keys; rename them")
    state = {
        "task_cfg": dict(raw.task_cfg),
        "model_cfg": dict(raw.model_cfg),
        "model_weight": {k: v.detach().cpu().contiguous() for k, v in raw.state_dict.items()},
        "dictionaries_symbols": [list(s) if s is not None else None for s in raw.symbols],
    }
    state.update(raw.extra)
    check_plain({k: v for k, v in state.items() if k != "model_weight"}, "checkpoint")
    return state


def write(raw: RawHubert, path: str | os.PathLike) -> Path:
    """Save ``raw`` in s3prl's converted format, atomically."""
    path = Path(path)
    out = atomic_save(to_state(raw), path)
    logger.info("wrote s3prl converted HuBERT %s (%d tensors)", path, len(raw.state_dict))
    return out
