"""WavLM ``.pt`` checkpoints: microsoft/unilm's release layout, which is also s3prl's ``wavlm_local`` input.

Layout read and written (Chen et al., "WavLM", IEEE JSTSP 2022; the released ``WavLM-Base+.pt``)::

    {"cfg": {"encoder_layers": 12, "encoder_embed_dim": 768, ..., "relative_position_embedding": True,
             "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True, "normalize": False, ...},
     "model": {"encoder.layers.0.self_attn.relative_attention_bias.weight": Tensor,   # layer 0 only
               "encoder.layers.l.self_attn.grep_linear.weight"/"grep_a": Tensor,      # gated bias, every layer
               ... fairseq wav2vec 2.0 names otherwise ...},
     ...}                                      # any further keys (e.g. a SCORE checkpoint's "score" block)

``cfg`` is one flat dict (s3prl's ``WavLMConfig`` fields, the task's ``normalize`` included), unlike
fairseq's ``cfg.model``/``cfg.task``. s3prl's ``wavlm_local`` loads the file with ``torch.load``'s
weights-only default and ``WavLM.load_state_dict(..., strict=True)``: what :func:`write` saves holds
only tensors and plain data and exactly the network's parameters.

Reading goes through the same allowlist unpickler as fairseq files
(:func:`score_upstream.models.formats.fairseq.load_restricted`), so a release pickled with config
objects still reads, and a file naming any other global is refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from score_upstream.atomic import atomic_save
from score_upstream.models.formats import CheckpointError, Probe

logger = logging.getLogger(__name__)

NAME = "wavlm"
EXPECTS = "WavLM .pt (microsoft/unilm release or s3prl wavlm_local input) with keys cfg (flat WavLM config) and model"
KEYS = ("cfg", "model")
# a WavLM cfg or state dict names at least one of these; fairseq's wav2vec 2.0/HuBERT never do
MARKERS = ("relative_position_embedding", "gru_rel_pos", "max_distance")
WEIGHT_MARKERS = ("self_attn.relative_attention_bias.weight", "self_attn.grep_linear.weight", "self_attn.grep_a")


@dataclass
class RawWavLM:
    """A WavLM checkpoint as plain data, in unilm/s3prl parameter names.

    Attributes:
        cfg: flat WavLM config (s3prl ``WavLMConfig`` fields, ``normalize`` included).
        state_dict: parameter name -> CPU tensor (s3prl ``WavLM`` names).
        extra: additional top-level keys to carry along (plain data).
        source_format: name of the reader that produced it.
        path: the file or directory it came from (``None`` when built in memory).
    """

    cfg: dict
    state_dict: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)
    source_format: str = ""
    path: Path | None = None
    family = "wavlm"


def detect(p: Probe) -> bool:
    if p.strings is None or not set(KEYS) <= p.strings:
        return False
    return any(m in p.strings for m in MARKERS) or any(s.endswith(WEIGHT_MARKERS) for s in p.strings)


def read(path: Path) -> RawWavLM:
    from score_upstream.models.formats.fairseq import _plain, load_restricted
    from score_upstream.models.formats.s3prl_format import check_plain

    state = load_restricted(path)
    if not isinstance(state, dict) or not all(k in state for k in KEYS):
        found = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: found {found}; expected {EXPECTS}")
    cfg = _plain(state["cfg"])
    if not isinstance(cfg, dict) or isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{path}: 'cfg' is not a flat WavLM config (found {type(cfg).__name__}"
                              f"{' with a model section' if isinstance(cfg, dict) else ''}); expected {EXPECTS}")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'model' is not a dict of tensors; expected {EXPECTS}")
    extra = {}
    for k, v in state.items():
        if k in KEYS:
            continue
        try:
            check_plain(_plain(v), str(k))
            extra[str(k)] = _plain(v)
        except CheckpointError:
            logger.info("%s: dropped top-level key %r (not plain data)", path, k)
    return RawWavLM(dict(cfg), dict(weights), extra, NAME, path)


def to_state(raw: RawWavLM) -> dict:
    """The dict :func:`write` saves (checked to be weights-only loadable)."""
    from score_upstream.models.formats.s3prl_format import check_plain

    clash = [k for k in raw.extra if k in KEYS]
    if clash:
        raise CheckpointError(f"extra keys {clash} would overwrite WavLM's own keys; rename them")
    state = {"cfg": dict(raw.cfg), "model": {k: v.detach().cpu().contiguous() for k, v in raw.state_dict.items()}}
    state.update(raw.extra)
    check_plain({k: v for k, v in state.items() if k != "model"}, "checkpoint")
    return state


def write(raw: RawWavLM, path: str | os.PathLike) -> Path:
    """Save ``raw`` as a WavLM ``.pt`` that s3prl's ``wavlm_local`` loads, atomically."""
    path = Path(path)
    out = atomic_save(to_state(raw), path)
    logger.info("wrote WavLM %s (%d tensors)", path, len(raw.state_dict))
    return out
