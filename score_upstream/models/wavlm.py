"""WavLM as this project holds it: s3prl's own model class plus its flat config, in one bundle.

Usage::

    from score_upstream.models.wavlm import load_wavlm, new_wavlm, save_hf, save_s3prl, tiny_cfg

    bundle = load_wavlm("WavLM-Base+.pt")              # unilm/s3prl .pt or transformers WavLMModel dir
    save_s3prl(bundle, "exp/wavlm_base_plus.pt")        # loads with s3prl's stock `wavlm_local`
    tiny = new_wavlm(tiny_cfg(), seed=0)                # real architecture, tiny widths, for tests

The network is s3prl's ``s3prl.upstream.wavlm.WavLM.WavLM`` (Chen et al., "WavLM: Large-Scale
Self-Supervised Pre-Training for Full Stack Speech Processing", IEEE JSTSP 2022), built from the same
flat ``cfg`` the released checkpoints carry, so what this project loads, trains and saves agrees with
``wavlm_local`` by construction. It differs from HuBERT by the gated relative position bias: layer 0
holds a bucketed ``relative_attention_bias`` embedding and computes the bias once for the (padded)
sequence length; every layer scales it per query frame and head by a gate computed from its own input
(``grep_linear``, ``grep_a``) and passes the *ungated* bias on to the next layer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from score_upstream.models.formats import CheckpointError, read_checkpoint
from score_upstream.models.formats.wavlm_pt import RawWavLM
from score_upstream.models.hubert import BASE_CONV_LAYERS, TINY_CONV_LAYERS

logger = logging.getLogger(__name__)

__all__ = ["WavLMBundle", "base_plus_cfg", "build_wavlm", "load_wavlm", "new_wavlm", "save_hf", "save_s3prl",
           "tiny_cfg"]


@dataclass
class WavLMBundle:
    """A WavLM network with what is needed to write it back in any supported format.

    Attributes:
        model: s3prl's ``WavLM`` (unilm parameter names).
        cfg: flat plain-dict config (``encoder_layers``, ``num_buckets``, ``normalize``...).
        extra: additional top-level checkpoint keys (e.g. SCORE training config and provenance).
        source_format: the format it was read from: ``"wavlm"``, ``"wavlm_hf"`` or ``"new"``.
    """

    model: torch.nn.Module
    cfg: dict
    extra: dict = field(default_factory=dict)
    source_format: str = "new"
    family = "wavlm"

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    @property
    def normalize(self) -> bool:
        """Whether the waveform is layer-normalised before the network (``cfg.normalize``)."""
        return bool(self.cfg.get("normalize", False))

    def rebuild(self) -> torch.nn.Module:
        """A fresh network of the same architecture (random weights), e.g. for a frozen copy."""
        return build_wavlm(self.cfg)


def tiny_cfg(**overrides: Any) -> dict:
    """A small WavLM config: real architecture (12 post-LN layers, gated relative position bias,
    downsample 320), tiny widths.

    Embedding 48, FFN 96, 4 heads, 32-channel conv front-end with Base's kernel/stride pattern, 16-tap
    positional conv in 4 groups; 32 position buckets up to distance 40 (so a one-second input, 49
    frames, reaches the logarithmic and the clipped buckets); other fields as :func:`base_plus_cfg`.
    """
    cfg = base_plus_cfg(
        encoder_embed_dim=48, encoder_ffn_embed_dim=96, encoder_attention_heads=4,
        conv_feature_layers=TINY_CONV_LAYERS, conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=40,
    )
    cfg.update(overrides)
    return cfg


def base_plus_cfg(**overrides: Any) -> dict:
    """WavLM Base+'s architecture (95M parameters: 768-dim, 12 post-LN layers, 3072 FFN, 12 heads, 512-channel
    GroupNorm conv front-end, 128-tap positional conv in 16 groups, 320 buckets up to distance 800, gated
    bias; WavLM Base has the same), e.g. for a random-weight model of the real size. Fields used only in
    pre-training (dropouts, masking, layer drop) take HuBERT Base's values; a loaded checkpoint brings its own."""
    cfg = {
        "extractor_mode": "default", "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072,
        "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
        "conv_feature_layers": BASE_CONV_LAYERS, "conv_bias": False, "feature_grad_mult": 0.1, "normalize": False,
        "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.05,
        "dropout_input": 0.1, "dropout_features": 0.1, "mask_length": 10, "mask_prob": 0.8,
        "mask_selection": "static", "mask_other": 0.0, "no_mask_overlap": False, "mask_min_space": 1,
        "mask_channel_length": 10, "mask_channel_prob": 0.0, "mask_channel_selection": "static",
        "mask_channel_other": 0.0, "no_mask_channel_overlap": False, "mask_channel_min_space": 1,
        "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True, "num_buckets": 320,
        "max_distance": 800, "gru_rel_pos": True,
    }
    cfg.update(overrides)
    return cfg


def build_wavlm(cfg: dict) -> torch.nn.Module:
    """Instantiate s3prl's ``WavLM`` from a flat plain-dict config.

    Raises:
        CheckpointError: the config cannot build a WavLM (a field of the wrong type or value).
    """
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    from score_upstream.models.formats.hf import parse_conv_layers

    # s3prl evaluates this string with eval(); refuse anything that is not a plain list literal first.
    parse_conv_layers(cfg.get("conv_feature_layers", BASE_CONV_LAYERS))
    log = logging.getLogger("s3prl.upstream.wavlm.WavLM")
    level = log.level
    log.setLevel(max(level, logging.WARNING))  # s3prl logs the whole config at INFO on every build
    try:
        return WavLM(WavLMConfig(dict(cfg)))
    except (TypeError, ValueError, AssertionError, KeyError, AttributeError) as e:
        raise CheckpointError(f"WavLM cfg cannot build a WavLM ({type(e).__name__}: {e})") from None
    finally:
        log.setLevel(level)


def new_wavlm(cfg: dict, seed: int = 0) -> WavLMBundle:
    """A freshly initialised WavLM, identical for identical ``(cfg, seed)``; the caller's RNG is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_wavlm(cfg)
    return WavLMBundle(model, dict(cfg), {}, "new")


def bundle_from_raw(raw: RawWavLM) -> WavLMBundle:
    """Build the model a :class:`RawWavLM` describes and load its weights exactly (eval mode, CPU)."""
    model = build_wavlm(raw.cfg)
    own = model.state_dict()
    reshaped = [k for k, v in raw.state_dict.items() if k in own and own[k].shape != v.shape]
    if reshaped:
        k = reshaped[0]
        raise CheckpointError(
            f"{raw.path}: weights do not match the WavLM its cfg describes ({len(reshaped)} of other shape, e.g. "
            f"{k} {tuple(raw.state_dict[k].shape)} vs {tuple(own[k].shape)}); expected a pre-trained WavLM checkpoint"
        )
    result = model.load_state_dict(raw.state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        miss, unexp = result.missing_keys, result.unexpected_keys
        raise CheckpointError(
            f"{raw.path}: weights do not match the WavLM its cfg describes (missing {miss[:4]}"
            f"{'...' if len(miss) > 4 else ''}, unexpected {unexp[:4]}{'...' if len(unexp) > 4 else ''}); "
            "expected a pre-trained WavLM checkpoint"
        )
    model.eval()
    return WavLMBundle(model, dict(raw.cfg), dict(raw.extra), raw.source_format)


def load_wavlm(path: str | os.PathLike) -> WavLMBundle:
    """Read WavLM from a unilm/s3prl ``.pt`` or a transformers ``WavLMModel`` directory (eval mode, CPU).

    Raises:
        CheckpointError: one line naming the file, what was expected and what was found (also for a
            valid HuBERT checkpoint).
    """
    raw = read_checkpoint(path)
    if not isinstance(raw, RawWavLM):
        raise CheckpointError(f"{path}: a HuBERT checkpoint ({raw.source_format} format); expected a WavLM")
    return bundle_from_raw(raw)


def to_raw(bundle: WavLMBundle) -> RawWavLM:
    """The bundle as plain data (CPU tensors, plain-dict config) for the format writers."""
    state = {k: v.detach().cpu().clone() for k, v in bundle.model.state_dict().items()}
    return RawWavLM(dict(bundle.cfg), state, dict(bundle.extra), bundle.source_format, None)


def save_s3prl(bundle: WavLMBundle, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the unilm/s3prl ``.pt`` atomically; it loads with ``weights_only=True`` and ``wavlm_local``."""
    from score_upstream.models.formats.wavlm_pt import write

    raw = to_raw(bundle)
    if extra:
        raw.extra.update(extra)
    return write(raw, path)


def save_hf(bundle: WavLMBundle, directory: str | os.PathLike) -> Path:
    """Write a transformers ``WavLMModel`` directory (``config.json`` + ``model.safetensors``)."""
    from score_upstream.models.formats.wavlm_hf import write

    return write(to_raw(bundle), directory)


def describe(bundle: WavLMBundle) -> dict:
    """A short plain summary (for logs and the converter's output)."""
    return {
        "family": "wavlm",
        "format": bundle.source_format,
        "layers": bundle.num_layers,
        "embed_dim": bundle.cfg.get("encoder_embed_dim"),
        "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "normalize": bundle.normalize,
        "extra_keys": sorted(bundle.extra),
    }
