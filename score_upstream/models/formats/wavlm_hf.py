"""transformers ``WavLMModel`` directories, read and written without loading transformers' model code.

A ``save_pretrained`` directory (``config.json`` with ``model_type: wavlm`` and ``model.safetensors``, a
sharded index or ``pytorch_model.bin``), such as a local copy of ``microsoft/wavlm-base-plus``. Weights
of a ``WavLMFor*`` head model (``wavlm.`` prefix) are read too; the head is ignored.

Parameter names are HuBERT's (:mod:`score_upstream.models.formats.hf`) plus the gated relative
position bias (``l`` = transformer layer)::

    encoder.layers.0.self_attn.relative_attention_bias.weight -> encoder.layers.0.attention.rel_attn_embed.weight
    encoder.layers.l.self_attn.grep_linear.*                  -> encoder.layers.l.attention.gru_rel_pos_linear.*
    encoder.layers.l.self_attn.grep_a                         -> encoder.layers.l.attention.gru_rel_pos_const

transformers' WavLM always has the gated bias (``relative_position_embedding`` and ``gru_rel_pos``, as
every released WavLM) and always a feature projection; other variants are refused when writing. The
flat WavLM config and the extra metadata go to ``config.json`` under ``wavlm_cfg``/``score_extra``, and
``mask_emb`` (absent from transformers when masking is off) to ``fairseq_extra.safetensors``, so
``.pt -> hf -> .pt`` is lossless.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from score_upstream.models.formats import CheckpointError, Probe
from score_upstream.models.formats.hf import (fairseq_cfgs_from_hf, fairseq_to_hf_name,
                                              hf_config_from_fairseq, hf_to_fairseq_names, read_renamed_state,
                                              write_directory)
from score_upstream.models.formats.wavlm_pt import RawWavLM

logger = logging.getLogger(__name__)

NAME = "wavlm_hf"
EXPECTS = "transformers WavLMModel directory (config.json with model_type 'wavlm' + model.safetensors)"

_BIAS_RULES = [  # (s3prl regex, transformers template), both ways
    (r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.weight", r"encoder.layers.\1.attention.rel_attn_embed.weight"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_linear\.(weight|bias)", r"encoder.layers.\1.attention.gru_rel_pos_linear.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a", r"encoder.layers.\1.attention.gru_rel_pos_const"),
]
_HF_BIAS_RULES = [
    (r"encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.weight", r"encoder.layers.\1.self_attn.relative_attention_bias.weight"),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(weight|bias)", r"encoder.layers.\1.self_attn.grep_linear.\2"),
    (r"encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const", r"encoder.layers.\1.self_attn.grep_a"),
]


def full_cfg(cfg: dict) -> dict:
    """``cfg`` over s3prl's ``WavLMConfig`` defaults (what s3prl builds from a partial config)."""
    from s3prl.upstream.wavlm.WavLM import WavLMConfig

    return {**WavLMConfig().__dict__, **cfg}


def wavlm_to_hf_name(name: str) -> str | None:
    """transformers name of an s3prl WavLM parameter; ``None`` if transformers has none."""
    for pat, repl in _BIAS_RULES:
        if re.fullmatch(pat, name):
            return re.sub(pat, repl, name)
    return fairseq_to_hf_name(name)


def hf_to_wavlm_names(hf_names, extractor_mode: str) -> dict[str, str]:
    out = hf_to_fairseq_names(hf_names, extractor_mode)
    for hf_name in hf_names:
        for pat, repl in _HF_BIAS_RULES:
            if re.fullmatch(pat, hf_name):
                out[hf_name] = re.sub(pat, repl, hf_name)
    return out


def hf_config(cfg: dict) -> dict:
    """transformers ``WavLMConfig`` kwargs for a flat WavLM config.

    Raises:
        CheckpointError: a WavLM transformers cannot express (no gated relative position bias).
    """
    cfg = full_cfg(cfg)
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise CheckpointError(
            f"relative_position_embedding={cfg['relative_position_embedding']}, gru_rel_pos={cfg['gru_rel_pos']}: "
            "transformers' WavLMModel always uses the gated relative position bias; write --to s3prl instead"
        )
    kwargs = hf_config_from_fairseq(cfg, {})
    kwargs.pop("feat_proj_layer_norm")
    kwargs.update(num_buckets=int(cfg["num_buckets"]), max_bucket_distance=int(cfg["max_distance"]))
    return kwargs


def cfg_from_hf(cfg: dict, normalize: bool | None) -> dict:
    """A flat WavLM config for a transformers config without our saved ``wavlm_cfg``."""
    model_cfg, task_cfg = fairseq_cfgs_from_hf(cfg)
    for key in ("_name", "label_rate"):
        model_cfg.pop(key, None)
    model_cfg.update(
        relative_position_embedding=True, gru_rel_pos=True,
        num_buckets=int(cfg.get("num_buckets", 320)), max_distance=int(cfg.get("max_bucket_distance", 800)),
        normalize=task_cfg["normalize"] if normalize is None else bool(normalize),
    )
    return model_cfg


def detect(p: Probe) -> bool:
    if not (p.is_dir and (p.path / "config.json").is_file()):
        return False
    try:
        return json.loads((p.path / "config.json").read_text()).get("model_type") == "wavlm"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def read(path: Path) -> RawWavLM:
    cfg = json.loads((path / "config.json").read_text())
    if "wavlm_cfg" in cfg:
        wcfg = dict(cfg["wavlm_cfg"])
    else:
        pre = path / "preprocessor_config.json"
        normalize = json.loads(pre.read_text()).get("do_normalize") if pre.is_file() else None
        wcfg = cfg_from_hf(cfg, normalize)
    state = read_renamed_state(path, "wavlm.", hf_to_wavlm_names, wcfg.get("extractor_mode", "default"),
                               "WavLMModel", EXPECTS)
    return RawWavLM(wcfg, state, dict(cfg.get("score_extra", {})), NAME, path)


def write(raw: RawWavLM, directory: str | os.PathLike) -> Path:
    """Write ``raw`` as a transformers ``WavLMModel`` directory, each file atomically."""
    from transformers import WavLMConfig

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory; expected a directory to write into")
    kwargs = hf_config(raw.cfg)
    if "post_extract_proj.weight" not in raw.state_dict:
        raise CheckpointError("CNN width equals the model width (no post_extract_proj): transformers' WavLMModel "
                              "always has a feature projection; write --to s3prl instead")
    try:
        json.dumps([raw.cfg, raw.extra])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: config or extra metadata is not JSON-serialisable ({e})") from None
    hf_state, extra_state = {}, {}
    masking = kwargs["mask_time_prob"] > 0 or kwargs["mask_feature_prob"] > 0
    for name, t in raw.state_dict.items():
        hf_name = wavlm_to_hf_name(name)
        t = t.detach().cpu().contiguous()
        if hf_name is None or (hf_name == "masked_spec_embed" and not masking):
            extra_state[name] = t
        else:
            hf_state[hf_name] = t
    cfg = WavLMConfig(**kwargs, architectures=["WavLMModel"]).to_dict()
    cfg["wavlm_cfg"] = raw.cfg
    if raw.extra:
        cfg["score_extra"] = raw.extra
    return write_directory(directory, hf_state, extra_state, cfg, 16000, bool(full_cfg(raw.cfg)["normalize"]),
                           "WavLMModel")
