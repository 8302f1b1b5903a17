"""HuBERT as this project holds it: s3prl's own model class plus its configs, in one bundle.

Usage::

    from score_upstream.models.hubert import load_hubert, new_hubert, save_hf, save_s3prl, tiny_model_cfg

    bundle = load_hubert("hubert_base_ls960.pt")        # fairseq .pt, s3prl .pt or transformers dir
    save_s3prl(bundle, "exp/hubert_base.pt")             # loads with s3prl's stock `hubert_local`
    tiny = new_hubert(tiny_model_cfg(), seed=0)          # real architecture, tiny widths, for tests

The network is s3prl's ``s3prl.upstream.hubert.hubert_model.HubertModel`` (a fairseq-free copy of
fairseq's model), built from the same ``model_cfg``/``task_cfg`` dictionaries s3prl's converted
checkpoints carry, so what this project loads, trains and saves agrees with ``hubert_local`` by
construction. Importing this module imports those s3prl model files only, never ``s3prl.hub``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from score_upstream.models.formats import CheckpointError, RawHubert, read_checkpoint, write_hf, write_s3prl

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "HubertBundle",
    "build_model",
    "load_hubert",
    "new_hubert",
    "cluster_symbols",
    "small_model_cfg",
    "save_hf",
    "save_s3prl",
    "tiny_model_cfg",
    "tiny_task_cfg",
    "to_raw",
]

# Seven conv blocks with HuBERT Base's kernels/strides (5*2*2*2*2*2*2 = 320), narrow channels.
TINY_CONV_LAYERS = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"
SMALL_CONV_LAYERS = "[(128,10,5)] + [(128,3,2)] * 4 + [(128,2,2)] * 2"
BASE_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
# the pre-training prediction head's parameter-name prefixes: tied to the label set, so a checkpoint may
# lack them (a fine-tuned or converted model) and a new HuBERT iteration starts them fresh
PREDICTION_HEAD = ("label_embs_concat", "final_proj.")


@dataclass
class HubertBundle:
    """A HuBERT network with everything needed to write it back in any supported format.

    Attributes:
        model: s3prl's ``HubertModel`` (fairseq parameter names).
        model_cfg: plain-dict model config (fairseq ``cfg["model"]`` keys, e.g. ``encoder_layers``).
        task_cfg: plain-dict task config (``sample_rate``, ``normalize``, ``label_rate``...).
        symbols: one list of label symbols per target dictionary (``[None]`` when absent).
        extra: additional top-level checkpoint keys (e.g. SCORE training config and provenance).
        source_format: the format it was read from: ``"fairseq"``, ``"s3prl"``, ``"hf"`` or ``"new"``.
    """

    model: torch.nn.Module
    model_cfg: dict
    task_cfg: dict
    symbols: list = field(default_factory=lambda: [None])
    extra: dict = field(default_factory=dict)
    source_format: str = "new"
    family = "hubert"

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    def rebuild(self) -> torch.nn.Module:
        """A fresh network of the same architecture (random weights), e.g. for a frozen copy."""
        return build_model(self.model_cfg, self.task_cfg, self.symbols)

    @property
    def normalize(self) -> bool:
        """Whether the waveform is layer-normalised before the network (``task_cfg.normalize``)."""
        return bool(self.task_cfg.get("normalize", False))


def tiny_model_cfg(**overrides: Any) -> dict:
    """A small HuBERT ``model_cfg``: real architecture (12 post-LN layers, downsample 320), tiny widths.

    Embedding 48, FFN 96, 4 heads, 32-channel conv front-end with Base's kernel/stride pattern,
    16-tap positional conv in 4 groups; dropout rates as in HuBERT Base. Keys in ``overrides``
    replace defaults (any ``HubertConfig`` field).
    """
    cfg = {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": "default",
        "encoder_layers": 12,
        "encoder_embed_dim": 48,
        "encoder_ffn_embed_dim": 96,
        "encoder_attention_heads": 4,
        "activation_fn": "gelu",
        "layer_type": "transformer",
        "dropout": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.05,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "final_dim": 16,
        "untie_final_proj": False,
        "layer_norm_first": False,
        "conv_feature_layers": TINY_CONV_LAYERS,
        "conv_bias": False,
        "logit_temp": 0.1,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.8,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_min_space": 1,
        "mask_channel_length": 10,
        "mask_channel_prob": 0.0,
        "mask_channel_selection": "static",
        "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False,
        "mask_channel_min_space": 1,
        "conv_pos": 16,
        "conv_pos_groups": 4,
        "latent_temp": [2.0, 0.5, 0.999995],
        "skip_masked": False,
        "skip_nomask": False,
    }
    cfg.update(overrides)
    return cfg


def base_model_cfg(**overrides: Any) -> dict:
    """HuBERT Base's ``model_cfg`` (95M parameters: 768-dim, 12 layers, 3072 FFN, 12 heads, 512-channel
    conv front-end, 128-tap positional conv in 16 groups, 256-dim projection), e.g. for a random-weight
    model of the real size where no checkpoint can be downloaded (throughput does not depend on weights).
    """
    cfg = tiny_model_cfg(
        encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
        conv_feature_layers=BASE_CONV_LAYERS, conv_pos=128, conv_pos_groups=16, final_dim=256,
    )
    cfg.update(overrides)
    return cfg


def small_model_cfg(**overrides: Any) -> dict:
    """A small HuBERT worth pre-training on CPU (3.1M parameters): 6 layers, 192-dim, FFN 768, 4 heads,
    128-channel conv front-end with Base's kernels/strides, 32-tap positional conv in 8 groups,
    64-dim projection. Pre-training settings that let it learn from a few hours of speech (measured; recipes/README.md, Pre-training):
    mask_prob 0.65 and feature_grad_mult 1.0.
    """
    cfg = tiny_model_cfg(
        encoder_layers=6, encoder_embed_dim=192, encoder_ffn_embed_dim=768, encoder_attention_heads=4,
        conv_feature_layers=SMALL_CONV_LAYERS, conv_pos=32, conv_pos_groups=8, final_dim=64,
        mask_prob=0.65, feature_grad_mult=1.0,
    )
    cfg.update(overrides)
    return cfg


def tiny_task_cfg(**overrides: Any) -> dict:
    """The ``task_cfg`` HuBERT Base was pre-trained with (16 kHz, no waveform normalisation, 50 Hz labels)."""
    cfg = {
        "_name": "hubert_pretraining",
        "label_rate": 50.0,
        "sample_rate": 16000,
        "normalize": False,
        "enable_padding": False,
        "max_sample_size": 250000,
        "min_sample_size": 32000,
        "random_crop": True,
        "pad_audio": False,
    }
    cfg.update(overrides)
    return cfg


def cluster_symbols(num_clusters: int = 8) -> list[list[str]]:
    """A fairseq label dictionary for ``num_clusters`` k-means units: 4 specials, then ``"0"`` ... (index = unit + 4)."""
    return [["<s>", "<pad>", "</s>", "<unk>"] + [str(i) for i in range(num_clusters)]]


def build_model(model_cfg: dict, task_cfg: dict, symbols: list) -> torch.nn.Module:
    """Instantiate s3prl's ``HubertModel`` from plain-dict configs (unknown keys are ignored, as s3prl does).

    Raises:
        CheckpointError: the config cannot build a HuBERT (a field of the wrong type or value).
    """
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig
    from s3prl.upstream.utils import merge_with_parent

    from score_upstream.models.formats.hf import parse_conv_layers

    # s3prl evaluates this string with eval(); refuse anything that is not a plain list literal first.
    parse_conv_layers(model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    try:
        mcfg = merge_with_parent(HubertConfig, dict(model_cfg))
        tcfg = merge_with_parent(HubertPretrainingConfig, dict(task_cfg))
        return HubertModel(mcfg, tcfg, symbols)
    except (TypeError, ValueError, AssertionError, KeyError) as e:
        raise CheckpointError(f"model_cfg/task_cfg cannot build a HuBERT ({type(e).__name__}: {e})") from None


def new_hubert(model_cfg: dict, task_cfg: dict | None = None, seed: int = 0, symbols: list | None = None) -> HubertBundle:
    """A freshly initialised HuBERT, identical for identical ``(model_cfg, task_cfg, seed)``.

    s3prl's modules draw their initial weights from the global generator; it is forked and seeded
    here so the caller's random state is left untouched.
    """
    task_cfg = dict(task_cfg) if task_cfg is not None else tiny_task_cfg(label_rate=model_cfg.get("label_rate", 50.0))
    symbols = symbols if symbols is not None else cluster_symbols()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(model_cfg, task_cfg, symbols)
        if hasattr(model, "label_embs_concat"):
            torch.nn.init.uniform_(model.label_embs_concat)
    return HubertBundle(model, dict(model_cfg), task_cfg, symbols, {}, "new")


def bundle_from_raw(raw: RawHubert) -> HubertBundle:
    """Build the model a :class:`RawHubert` describes and load its weights (eval mode, CPU)."""
    model = build_model(raw.model_cfg, raw.task_cfg, raw.symbols)
    result = model.load_state_dict(raw.state_dict, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(PREDICTION_HEAD)]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{raw.path}: weights do not match the HuBERT its config describes "
            f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {result.unexpected_keys[:4]}{'...' if len(result.unexpected_keys) > 4 else ''}); "
            "expected a pre-trained HuBERT checkpoint"
        )
    if result.missing_keys:
        logger.info("%s: no pre-training head (%s); kept at initial values", raw.path, ", ".join(result.missing_keys))
    model.eval()
    return HubertBundle(model, raw.model_cfg, raw.task_cfg, raw.symbols, raw.extra, raw.source_format)


def load_hubert(path: str | os.PathLike) -> HubertBundle:
    """Read HuBERT from a fairseq ``.pt``, an s3prl converted ``.pt`` or a transformers directory.

    The format is detected from the content. The model is returned in eval mode on the CPU.

    Raises:
        CheckpointError: one line naming the file, what was expected and what was found.
    """
    raw = read_checkpoint(path)
    if getattr(raw, "family", "hubert") != "hubert":
        raise CheckpointError(f"{path}: a {raw.family} checkpoint ({raw.source_format} format); expected a HuBERT "
                              "(score_upstream.models.loader.load_model reads both)")
    return bundle_from_raw(raw)


def to_raw(bundle: HubertBundle) -> RawHubert:
    """The bundle as plain data (CPU tensors, plain-dict configs) for the format writers."""
    state = {k: v.detach().cpu().clone() for k, v in bundle.model.state_dict().items()}
    return RawHubert(
        model_cfg=dict(bundle.model_cfg),
        task_cfg=dict(bundle.task_cfg),
        symbols=[list(s) if s is not None else None for s in bundle.symbols],
        state_dict=state,
        extra=dict(bundle.extra),
        source_format=bundle.source_format,
        path=None,
    )


def save_s3prl(bundle: HubertBundle, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write s3prl's converted format atomically; it loads with ``weights_only=True`` and ``hubert_local``.

    Args:
        bundle: the model and its configs.
        path: target ``.pt`` file.
        extra: more top-level keys (plain data) merged over ``bundle.extra``, e.g. SCORE provenance.
    """
    raw = to_raw(bundle)
    if extra:
        raw.extra.update(extra)
    return write_s3prl(raw, path)


def save_hf(bundle: HubertBundle, directory: str | os.PathLike) -> Path:
    """Write a transformers ``HubertModel`` directory (``config.json`` + ``model.safetensors``)."""
    return write_hf(to_raw(bundle), directory)


def describe(bundle: HubertBundle) -> dict:
    """A short plain summary (for logs and the converter's output)."""
    n = sum(p.numel() for p in bundle.model.parameters())
    return {
        "format": bundle.source_format,
        "layers": bundle.num_layers,
        "embed_dim": bundle.model_cfg.get("encoder_embed_dim"),
        "parameters": n,
        "normalize": bundle.normalize,
        "extra_keys": sorted(bundle.extra),
    }
