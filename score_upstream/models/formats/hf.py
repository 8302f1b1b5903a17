"""transformers ``HubertModel`` directories, read and written without going through fairseq.

A directory in ``save_pretrained`` layout (``config.json`` with ``model_type: hubert`` and
``model.safetensors``, a sharded ``model.safetensors.index.json`` or ``pytorch_model.bin``), such as a
local copy of ``facebook/hubert-base-ls960``. Weights of a ``HubertFor*`` head model (``hubert.``
prefix) are read too; the head is ignored.

Parameter names (fairseq/s3prl -> transformers; ``i`` = conv block, ``l`` = transformer layer)::

    feature_extractor.conv_layers.i.0.*      -> feature_extractor.conv_layers.i.conv.*
    feature_extractor.conv_layers.0.2.*      -> feature_extractor.conv_layers.0.layer_norm.*  (GroupNorm, "default" mode)
    feature_extractor.conv_layers.i.2.1.*    -> feature_extractor.conv_layers.i.layer_norm.*  ("layer_norm" mode)
    layer_norm.*                             -> feature_projection.layer_norm.*
    post_extract_proj.*                      -> feature_projection.projection.*
    mask_emb                                 -> masked_spec_embed
    encoder.pos_conv.0.weight_g / weight_v   -> encoder.pos_conv_embed.conv.parametrizations.weight.original0 / original1
    encoder.pos_conv.0.bias                  -> encoder.pos_conv_embed.conv.bias
    encoder.layer_norm.*                     -> encoder.layer_norm.*
    encoder.layers.l.self_attn.{q,k,v,out}_proj.* -> encoder.layers.l.attention.{q,k,v,out}_proj.*
    encoder.layers.l.self_attn_layer_norm.*  -> encoder.layers.l.layer_norm.*
    encoder.layers.l.fc1.* / fc2.*           -> encoder.layers.l.feed_forward.intermediate_dense.* / output_dense.*
    encoder.layers.l.final_layer_norm.*      -> encoder.layers.l.final_layer_norm.*

transformers has no place for HuBERT's pre-training head (``final_proj``, ``label_embs_concat``):
those go to ``fairseq_extra.safetensors`` beside the model, and the fairseq configs, label symbols and
extra metadata go to ``config.json`` under ``fairseq_model_cfg``/``fairseq_task_cfg``/
``fairseq_symbols``/``score_extra``, so s3prl -> hf -> s3prl is lossless. transformers ignores both.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
from pathlib import Path

import torch

from score_upstream.atomic import atomic_write_bytes
from score_upstream.models.formats import CheckpointError, Probe, RawHubert

logger = logging.getLogger(__name__)

NAME = "hf"
EXPECTS = "transformers HubertModel directory (config.json with model_type 'hubert' + model.safetensors)"
EXTRA_FILE = "fairseq_extra.safetensors"

_RULES = [  # (fairseq regex, transformers template)
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"feature_extractor\.conv_layers\.(\d+)\.2\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\.(weight|bias)", r"feature_projection.projection.\1"),
    (r"mask_emb", r"masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]


def fairseq_to_hf_name(name: str) -> str | None:
    """transformers name of a fairseq/s3prl HuBERT parameter; ``None`` if transformers has none."""
    for pat, repl in _RULES:
        if re.fullmatch(pat, name):
            return re.sub(pat, repl, name)
    return None


_HF_RULES = [  # (transformers regex, fairseq template); the conv norms are handled apart
    (r"feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"feature_projection\.layer_norm\.(weight|bias)", r"layer_norm.\1"),
    (r"feature_projection\.projection\.(weight|bias)", r"post_extract_proj.\1"),
    (r"masked_spec_embed", r"mask_emb"),
    (r"encoder\.pos_conv_embed\.conv\.(?:parametrizations\.weight\.original0|weight_g)", r"encoder.pos_conv.0.weight_g"),
    (r"encoder\.pos_conv_embed\.conv\.(?:parametrizations\.weight\.original1|weight_v)", r"encoder.pos_conv.0.weight_v"),
    (r"encoder\.pos_conv_embed\.conv\.bias", r"encoder.pos_conv.0.bias"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.attention\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.self_attn.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)", r"encoder.layers.\1.fc1.\2"),
    (r"encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)", r"encoder.layers.\1.fc2.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
]


def hf_to_fairseq_names(hf_names, extractor_mode: str) -> dict[str, str]:
    """Map transformers names back; names with no fairseq counterpart are left out.

    The conv front-end's norm sits at index ``2`` (GroupNorm, ``extractor_mode="default"``) or
    ``2.1`` (LayerNorm inside a transpose sandwich, ``"layer_norm"``) in fairseq.
    """
    out = {}
    for hf_name in hf_names:
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)", hf_name)
        if m:
            mid = "2" if extractor_mode == "default" else "2.1"
            out[hf_name] = f"feature_extractor.conv_layers.{m.group(1)}.{mid}.{m.group(2)}"
            continue
        for pat, repl in _HF_RULES:
            if re.fullmatch(pat, hf_name):
                out[hf_name] = re.sub(pat, repl, hf_name)
                break
    return out


# bounds on a conv front-end read from a checkpoint: far above any released model (7 layers, 512 channels,
# kernels <= 10), far below what would exhaust memory while the list is built or the network allocated
MAX_CONV_LAYERS = 64
MAX_CONV_VALUE = 65536


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """``"[(512,10,5)] + [(512,3,2)] * 4"`` -> list of ``(channels, kernel, stride)``, without eval.

    Lists are bounded while they are built (at most ``MAX_CONV_LAYERS`` layers, values in
    ``1..MAX_CONV_VALUE``), so ``[(1,1,1)] * 10**9`` is refused before it takes memory.

    Raises:
        CheckpointError: anything but list/tuple literals of ints combined with ``+`` and ``* int``, or a
            front-end outside the bounds.
    """

    def bounded(value):
        if isinstance(value, int) and value > MAX_CONV_VALUE:
            raise ValueError(f"value {value} above {MAX_CONV_VALUE}")
        if isinstance(value, (list, tuple)) and len(value) > MAX_CONV_LAYERS:
            raise ValueError(f"more than {MAX_CONV_LAYERS} layers")
        return value

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
            return bounded(node.value)
        if isinstance(node, (ast.List, ast.Tuple)):
            bounded(node.elts)
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            a, b = ev(node.left), ev(node.right)  # each bounded: their sum is small
            return bounded(a + b)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            a, b = ev(node.left), ev(node.right)
            if isinstance(a, int) and isinstance(b, int):
                return bounded(a * b)
            seq, n = (a, b) if isinstance(b, int) else (b, a)
            if not isinstance(n, int):
                raise ValueError("a list multiplied by a list")
            if len(seq) * n > MAX_CONV_LAYERS:  # checked before the list is built
                raise ValueError(f"more than {MAX_CONV_LAYERS} layers")
            return seq * n
        what = type(node.op).__name__ if isinstance(node, ast.BinOp) else type(node).__name__
        raise ValueError(f"{what} is not allowed: only int/list/tuple literals, + and *")

    try:
        layers = ev(ast.parse(str(spec)[:4096], mode="eval")) if len(str(spec)) <= 4096 else None
        if layers is None:
            raise ValueError("longer than 4096 characters")
        layers = [tuple(int(v) for v in t) for t in layers]
        if not layers or any(len(t) != 3 for t in layers):
            raise ValueError("not (dim, kernel, stride) triples")
        if any(v < 1 for t in layers for v in t):
            raise ValueError("dim, kernel and stride must be positive")
    except (ValueError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
        shown = str(spec) if len(str(spec)) <= 80 else str(spec)[:77] + "..."
        raise CheckpointError(
            f"model_cfg.conv_feature_layers={shown!r} is not a list of at most {MAX_CONV_LAYERS} "
            f"(dim, kernel, stride) tuples of integers 1..{MAX_CONV_VALUE} ({e})"
        ) from None
    return layers


def format_conv_layers(layers: list[tuple[int, int, int]]) -> str:
    """Inverse of :func:`parse_conv_layers`, in fairseq's run-length style."""
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j < len(layers) and layers[j] == layers[i]:
            j += 1
        d, k, s = layers[i]
        parts.append(f"[({d},{k},{s})]" + (f" * {j - i}" if j - i > 1 else ""))
        i = j
    return " + ".join(parts)


def hf_config_from_fairseq(model_cfg: dict, task_cfg: dict) -> dict:
    """transformers ``HubertConfig`` kwargs for a fairseq HuBERT ``model_cfg``.

    Raises:
        CheckpointError: a variant transformers' HuBERT cannot express (conformer layers, deep pos-conv).
    """
    if model_cfg.get("layer_type", "transformer") != "transformer" or int(model_cfg.get("pos_conv_depth", 1)) != 1:
        raise CheckpointError(
            f"layer_type={model_cfg.get('layer_type')!r}, pos_conv_depth={model_cfg.get('pos_conv_depth', 1)}: "
            "transformers' HubertModel supports only transformer layers with a single positional conv"
        )
    conv = parse_conv_layers(model_cfg.get("conv_feature_layers", "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"))
    ln_first = bool(model_cfg.get("layer_norm_first", False))
    return {
        "hidden_size": int(model_cfg.get("encoder_embed_dim", 768)),
        "num_hidden_layers": int(model_cfg.get("encoder_layers", 12)),
        "num_attention_heads": int(model_cfg.get("encoder_attention_heads", 12)),
        "intermediate_size": int(model_cfg.get("encoder_ffn_embed_dim", 3072)),
        "hidden_act": str(model_cfg.get("activation_fn", "gelu")),
        "hidden_dropout": float(model_cfg.get("dropout", 0.1)),
        "attention_dropout": float(model_cfg.get("attention_dropout", 0.1)),
        "activation_dropout": float(model_cfg.get("activation_dropout", 0.0)),
        "feat_proj_dropout": float(model_cfg.get("dropout_input", 0.0)),
        "feat_proj_layer_norm": True,
        "layerdrop": float(model_cfg.get("encoder_layerdrop", 0.0)),
        "layer_norm_eps": 1e-5,
        "feat_extract_norm": "group" if model_cfg.get("extractor_mode", "default") == "default" else "layer",
        "feat_extract_activation": "gelu",
        "conv_dim": [c[0] for c in conv],
        "conv_kernel": [c[1] for c in conv],
        "conv_stride": [c[2] for c in conv],
        "conv_bias": bool(model_cfg.get("conv_bias", False)),
        "num_conv_pos_embeddings": int(model_cfg.get("conv_pos", 128)),
        "num_conv_pos_embedding_groups": int(model_cfg.get("conv_pos_groups", 16)),
        "do_stable_layer_norm": ln_first,
        "mask_time_prob": float(model_cfg.get("mask_prob", 0.65)),
        "mask_time_length": int(model_cfg.get("mask_length", 10)),
        "mask_feature_prob": float(model_cfg.get("mask_channel_prob", 0.0)),
        "mask_feature_length": int(model_cfg.get("mask_channel_length", 10)),
    }


def fairseq_cfgs_from_hf(cfg: dict) -> tuple[dict, dict]:
    """(model_cfg, task_cfg) for a transformers HuBERT config without our saved fairseq configs."""
    conv = list(zip(cfg.get("conv_dim", [512] * 7), cfg.get("conv_kernel", [10, 3, 3, 3, 3, 2, 2]), cfg.get("conv_stride", [5, 2, 2, 2, 2, 2, 2])))
    layer_mode = cfg.get("feat_extract_norm", "group") == "layer"
    model_cfg = {
        "_name": "hubert",
        "label_rate": 50.0,
        "extractor_mode": "layer_norm" if layer_mode else "default",
        "encoder_layers": cfg.get("num_hidden_layers", 12),
        "encoder_embed_dim": cfg.get("hidden_size", 768),
        "encoder_ffn_embed_dim": cfg.get("intermediate_size", 3072),
        "encoder_attention_heads": cfg.get("num_attention_heads", 12),
        "activation_fn": cfg.get("hidden_act", "gelu"),
        "dropout": cfg.get("hidden_dropout", 0.1),
        "attention_dropout": cfg.get("attention_dropout", 0.1),
        "activation_dropout": cfg.get("activation_dropout", 0.0),
        "dropout_input": cfg.get("feat_proj_dropout", 0.0),
        "encoder_layerdrop": cfg.get("layerdrop", 0.0),
        "layer_norm_first": bool(cfg.get("do_stable_layer_norm", False)),
        "conv_feature_layers": format_conv_layers([tuple(c) for c in conv]),
        "conv_bias": bool(cfg.get("conv_bias", False)),
        "conv_pos": cfg.get("num_conv_pos_embeddings", 128),
        "conv_pos_groups": cfg.get("num_conv_pos_embedding_groups", 16),
        "mask_prob": cfg.get("mask_time_prob", 0.05),
        "mask_length": cfg.get("mask_time_length", 10),
        "mask_channel_prob": cfg.get("mask_feature_prob", 0.0),
        "mask_channel_length": cfg.get("mask_feature_length", 10),
    }
    # fairseq's recipes normalise the waveform exactly for the layer-norm (Large/X-Large) front-end.
    task_cfg = {"_name": "hubert_pretraining", "label_rate": 50.0, "sample_rate": 16000, "normalize": layer_mode}
    return model_cfg, task_cfg


def detect(p: Probe) -> bool:
    return p.is_dir and (p.path / "config.json").is_file()


def read_renamed_state(path: Path, prefix: str, rename, extractor_mode: str, model: str, expects: str) -> dict:
    """A transformers directory's weights under the original (fairseq / unilm) names, with the extra file merged.

    Args:
        prefix: the wrapper prefix a task model adds (``"hubert."``, ``"wavlm."``), dropped where present.
        rename: ``(weights, extractor_mode) -> {transformers name: original name}``.
        model, expects: for the error naming weights that are not ``model`` parameters.
    """
    weights = _read_weights(path)
    if any(k.startswith(prefix) for k in weights):
        weights = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    names = rename(weights, extractor_mode)
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise CheckpointError(f"{path}: weights {unknown[:3]} are not {model} parameters; expected {expects}")
    state = {names[k]: v for k, v in weights.items()}
    if (path / EXTRA_FILE).is_file():
        from safetensors.torch import load_file

        state.update(load_file(str(path / EXTRA_FILE)))
    return state


def _read_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single, index, binf = directory / "model.safetensors", directory / "model.safetensors.index.json", directory / "pytorch_model.bin"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for shard in shards:
            out.update(load_file(str(directory / shard)))
        return out
    if binf.is_file():
        try:
            return torch.load(binf, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{binf}: not a weights-only torch state dict ({type(e).__name__}); expected HubertModel weights") from None
    raise CheckpointError(f"{directory}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin; expected {EXPECTS}")


def read(path: Path) -> RawHubert:
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path / 'config.json'}: unreadable JSON ({e}); expected {EXPECTS}") from None
    model_type = cfg.get("model_type")
    if model_type != "hubert":
        raise CheckpointError(
            f"{path}: config.json has model_type {model_type!r} (architectures {cfg.get('architectures')}); expected {EXPECTS}"
        )
    if "fairseq_model_cfg" in cfg:
        model_cfg, task_cfg = dict(cfg["fairseq_model_cfg"]), dict(cfg["fairseq_task_cfg"])
        symbols = cfg.get("fairseq_symbols", [None])
    else:
        model_cfg, task_cfg = fairseq_cfgs_from_hf(cfg)
        symbols = [None]
    state = read_renamed_state(path, "hubert.", hf_to_fairseq_names, model_cfg.get("extractor_mode", "default"),
                               "HubertModel", EXPECTS)
    return RawHubert(model_cfg, task_cfg, symbols, state, dict(cfg.get("score_extra", {})), NAME, path)


def write(raw: RawHubert, directory: str | os.PathLike) -> Path:
    """Write ``raw`` as a transformers ``HubertModel`` directory, each file atomically."""
    from transformers import HubertConfig

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory}: exists and is not a directory; expected a directory to write into")
    kwargs = hf_config_from_fairseq(raw.model_cfg, raw.task_cfg)
    try:
        json.dumps([raw.model_cfg, raw.task_cfg, raw.symbols, raw.extra])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{directory}: config or extra metadata is not JSON-serialisable ({e})") from None
    config = HubertConfig(**kwargs, architectures=["HubertModel"])
    hf_state, extra_state = {}, {}
    for name, t in raw.state_dict.items():
        hf_name = fairseq_to_hf_name(name)
        t = t.detach().cpu().contiguous()
        if hf_name is None or (hf_name == "masked_spec_embed" and kwargs["mask_time_prob"] <= 0 and kwargs["mask_feature_prob"] <= 0):
            extra_state[name] = t
        else:
            hf_state[hf_name] = t
    cfg = config.to_dict()
    cfg.update(fairseq_model_cfg=raw.model_cfg, fairseq_task_cfg=raw.task_cfg, fairseq_symbols=raw.symbols)
    if raw.extra:
        cfg["score_extra"] = raw.extra
    return write_directory(directory, hf_state, extra_state, cfg, int(raw.task_cfg.get("sample_rate", 16000)),
                           bool(raw.task_cfg.get("normalize", False)), "HubertModel")


def write_directory(directory: Path, hf_state: dict, extra_state: dict, cfg: dict, sample_rate: int,
                    normalize: bool, model: str) -> Path:
    """The files of a transformers model directory, each atomically: ``model.safetensors``, the extra
    tensors transformers has no place for (or none), ``config.json`` and ``preprocessor_config.json``."""
    from safetensors.torch import save

    preprocessor = {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": sample_rate,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": normalize,
        "return_attention_mask": True,
    }
    atomic_write_bytes(save(hf_state, metadata={"format": "pt"}), directory / "model.safetensors")
    if extra_state:
        atomic_write_bytes(save(extra_state, metadata={"format": "pt"}), directory / EXTRA_FILE)
    else:
        (directory / EXTRA_FILE).unlink(missing_ok=True)
    atomic_write_bytes((json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode(), directory / "config.json")
    atomic_write_bytes((json.dumps(preprocessor, indent=2) + "\n").encode(), directory / "preprocessor_config.json")
    logger.info("wrote transformers %s %s (%d tensors + %d extra)", model, directory, len(hf_state), len(extra_state))
    return directory
