"""Read a SPIN checkpoint (PyTorch-Lightning ``.ckpt`` of the SPIN repo) as a HuBERT.

Usage::

    from score_upstream.models.formats.spin import load_spin, read_spin
    raw = read_spin("spin_hubert_2048.ckpt", base="hubert_base_ls960.pt")   # -> RawHubert
    write_s3prl(raw, "exp/spin/spin_hubert.pt")                              # hubert_local format

    score-convert spin_hubert_2048.ckpt exp/spin/spin_hubert.pt --base hubert_base_ls960.pt

Layout read (Chang, Liu & Glass, Interspeech 2023; the Lightning checkpoint of their ``SpinModel``)::

    {"pytorch-lightning_version": "2.0.x", "epoch": int, "global_step": int,
     "state_dict": {"encoder.model.<s3prl HubertModel name>": Tensor,     # the HuBERT being adapted
                    "pred_head.*": Tensor, "loss_module.*": Tensor},      # SPIN's head and codebook
     "hyper_parameters": {"model": {"encoder": {"type": "HuBERT", "path_or_url": ..., ...}, ...}, ...},
     "optimizer_states"/"lr_schedulers"/"callbacks"/"loops": ... (ignored)}

SPIN stores weights only: the architecture (``model_cfg``/``task_cfg``) and the pre-training heads it
removed before training (``label_embs_concat``, ``final_proj``, needed by ``hubert_local``'s strict
load) come from the HuBERT it was initialised from: ``base`` (any format ``load_hubert`` reads), or
the hyper-parameters' ``model.encoder.path_or_url`` when that is a local file. Every SPIN encoder
weight must match the base's name and shape; SPIN's head and codebook are dropped.

The file is unpickled with ``weights_only=True``; Lightning's ``AttributeDict`` hyper-parameter
containers and ``pathlib`` paths are admitted as plain dicts/paths, any other global is refused.
"""

from __future__ import annotations

import logging
import os
import pathlib
import pickle
from pathlib import Path

import torch

from score_upstream.models.formats import CheckpointError, Probe, RawHubert, read_checkpoint

logger = logging.getLogger(__name__)

NAME = "spin"
EXPECTS = "SPIN PyTorch-Lightning .ckpt: state_dict with encoder.model.* HuBERT weights, pytorch-lightning_version"
LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")
ENCODER_PREFIX = "encoder.model."
# removed by SPIN (HubertModel.remove_pretraining_modules) and taken from the base instead
PRETRAINING_HEADS = ("label_embs_concat", "final_proj.", "target_glu.")


_ATTRIBUTE_DICTS = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
)
_PATHS = {
    "pathlib.PosixPath": pathlib.PosixPath,
    "pathlib.WindowsPath": pathlib.PureWindowsPath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath,
    "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
}
# Lightning's AttributeDict is a dict with attribute access: read back as a plain dict (torch's
# weights-only unpickler fills only exact dict types)
_ALLOWED = {**{name: dict for name in _ATTRIBUTE_DICTS}, **_PATHS}


def detect(p: Probe) -> bool:
    """A Lightning checkpoint whose ``state_dict`` holds ``encoder.model.*`` weights."""
    return (
        p.strings is not None
        and set(LIGHTNING_KEYS) <= p.strings
        and any(s.startswith(ENCODER_PREFIX) for s in p.strings)
    )


def load_lightning(path: str | os.PathLike) -> dict:
    """``torch.load`` a Lightning ``.ckpt`` safely (weights-only plus the admitted globals above).

    Raises:
        CheckpointError: unreadable file, or a global outside the allowlist (named in the message).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: SPIN checkpoint not found; expected a PyTorch-Lightning .ckpt file")
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        raise CheckpointError(
            f"{path}: reading a SPIN checkpoint safely needs torch >= 2.6 (get_unsafe_globals_in_checkpoint, "
            f"named safe globals); this environment has torch {torch.__version__}: convert it where torch is newer"
        )
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read as a torch file ({type(e).__name__}: {e}); expected {EXPECTS}") from None
    refused = [g for g in needed if g not in _ALLOWED]
    if refused:
        raise CheckpointError(
            f"{path}: holds objects of {', '.join(refused[:4])}, which a SPIN checkpoint does not need; "
            "refusing to unpickle them (expected tensors and plain hyper-parameters)"
        )
    try:
        with torch.serialization.safe_globals([(_ALLOWED[g], g) for g in needed]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot load ({first}); expected {EXPECTS}") from None
    if not isinstance(state, dict) or not all(k in state for k in LIGHTNING_KEYS):
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: found {keys}, expected a Lightning checkpoint with keys {', '.join(LIGHTNING_KEYS)}")
    return state


def _plain(value):
    """Hyper-parameters as JSON-like data (AttributeDict -> dict, paths -> str, tensors -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def encoder_config(hparams: dict) -> dict:
    """``hyper_parameters["model"]["encoder"]`` (``{}`` when absent)."""
    model = hparams.get("model") if isinstance(hparams, dict) else None
    encoder = model.get("encoder") if isinstance(model, dict) else None
    return dict(encoder) if isinstance(encoder, dict) else {}


def split_state_dict(state_dict: dict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``(HuBERT weights with the encoder.model. prefix stripped, names of everything else)``."""
    weights = {k[len(ENCODER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIX)}
    others = sorted(k for k in state_dict if not k.startswith(ENCODER_PREFIX))
    return weights, others


def _base_source(path: Path, base, hparams: dict) -> Path:
    if base is not None:
        return Path(base)
    stored = encoder_config(hparams).get("path_or_url")
    if isinstance(stored, str) and not stored.startswith(("http://", "https://")) and Path(stored).exists():
        logger.info("%s: using the base HuBERT named in its hyper-parameters: %s", path, stored)
        return Path(stored)
    raise CheckpointError(
        f"{path}: a SPIN checkpoint stores weights only; pass the HuBERT it was initialised from "
        "(score-convert ... --base hubert_base_ls960.pt, any format load_hubert reads)"
    )


def read_spin(path: str | os.PathLike, base: str | os.PathLike | RawHubert | None = None) -> RawHubert:
    """Convert a SPIN ``.ckpt`` into a HuBERT :class:`RawHubert` (configs and heads from ``base``).

    Args:
        path: the SPIN Lightning checkpoint.
        base: the HuBERT SPIN started from (path in any supported format, or an already read
            :class:`RawHubert`); default: the hyper-parameters' ``path_or_url`` if it is a local file.

    Returns:
        RawHubert with the base's ``model_cfg``/``task_cfg``/symbols, the base's weights overwritten by
        SPIN's encoder weights, and ``extra["spin"]`` recording the source checkpoint.

    Raises:
        CheckpointError: not a SPIN HuBERT checkpoint, no base, or weights that do not fit the base.
    """
    path = Path(path)
    ckpt = load_lightning(path)
    hparams = _plain(ckpt.get("hyper_parameters") or {})
    enc = encoder_config(hparams)
    if enc.get("type", "HuBERT") != "HuBERT":
        raise CheckpointError(f"{path}: SPIN encoder type {enc.get('type')!r}; only HuBERT-based SPIN checkpoints convert")
    state_dict = ckpt["state_dict"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state_dict).__name__}, expected a dict of tensors")
    weights, others = split_state_dict(state_dict)
    if not weights:
        raise CheckpointError(f"{path}: no '{ENCODER_PREFIX}*' weights in state_dict; expected a SPIN HuBERT checkpoint")

    base_raw = base if isinstance(base, RawHubert) else read_checkpoint(_base_source(path, base, hparams))
    where = base_raw.path or "the base HuBERT"
    base_state = base_raw.state_dict
    unknown = [k for k in weights if k not in base_state]
    missing = [k for k in base_state if k not in weights and not k.startswith(PRETRAINING_HEADS)]
    reshaped = [k for k in weights if k in base_state and weights[k].shape != base_state[k].shape]
    if unknown or missing or reshaped:
        detail = "; ".join(
            f"{label} {names[:3]}{'...' if len(names) > 3 else ''}"
            for label, names in (("unknown to the base:", unknown), ("absent from SPIN:", missing), ("other shape:", reshaped))
            if names
        )
        raise CheckpointError(f"{path}: encoder weights do not fit {where} ({detail}); pass the base SPIN started from")

    merged = {k: v.detach().cpu().clone() for k, v in base_state.items()}
    for k, v in weights.items():
        merged[k] = v.detach().cpu().to(base_state[k].dtype).clone()
    logger.info("%s: %d HuBERT tensors taken, %d SPIN head/codebook tensors dropped", path, len(weights), len(others))
    spin_info = {
        "checkpoint": path.name,
        "global_step": int(ckpt.get("global_step", -1)),
        "epoch": int(ckpt.get("epoch", -1)),
        "pytorch_lightning_version": str(ckpt.get("pytorch-lightning_version")),
        "base": str(base_raw.path) if base_raw.path else None,
        "dropped": others,
        "hyper_parameters": hparams,
    }
    return RawHubert(
        model_cfg=dict(base_raw.model_cfg),
        task_cfg=dict(base_raw.task_cfg),
        symbols=[list(s) if s is not None else None for s in base_raw.symbols],
        state_dict=merged,
        extra={**base_raw.extra, "spin": spin_info},
        source_format=NAME,
        path=path,
    )


def read(path: Path) -> RawHubert:
    """Registry entry point: SPIN with the base taken from its hyper-parameters (see :func:`read_spin`)."""
    return read_spin(path)


def load_spin(path: str | os.PathLike, base: str | os.PathLike | RawHubert | None = None):
    """:func:`read_spin` as a ready :class:`~score_upstream.models.hubert.HubertBundle` (eval mode, CPU)."""
    from score_upstream.models.hubert import bundle_from_raw

    return bundle_from_raw(read_spin(path, base))
