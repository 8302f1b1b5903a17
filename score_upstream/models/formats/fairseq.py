"""Read a fairseq HuBERT checkpoint (e.g. ``hubert_base_ls960.pt``) without fairseq.

fairseq does not import on Python 3.11, and a fairseq ``.pt`` is a full pickle: loading it with
``weights_only=False`` would run whatever globals it names. This module unpickles it with an
allowlist instead. Allowed are exactly the things such a file is made of:

* tensors and storages (torch's own rebuild helpers), ``torch.Size``, dtypes;
* plain containers: ``collections.OrderedDict``/``defaultdict``, builtin types, ``_codecs.encode``
  (protocol-2 bytes), ``copyreg._reconstructor``;
* config objects: ``argparse.Namespace`` (pre-hydra ``args``), omegaconf containers and nodes
  (hydra-era ``cfg`` when pickled unconverted), ``typing.Any``;
* numpy scalars/arrays (``extra_state`` metrics);
* fairseq's ``Dictionary`` and logging meters, mapped to inert stand-ins that only store their state.

Any other global (``os.system``, ``builtins.eval``, an unknown class) stops the load with a
:class:`~score_upstream.models.formats.CheckpointError` naming the file and the global.

Layout read::

    {"cfg": {"model": {...}, "task": {...}, ...} | None,   # hydra era (dict or DictConfig)
     "args": Namespace | None,                            # before hydra
     "model": {name: Tensor},
     "task_state": {"dictionaries": [Dictionary, ...]},
     "criterion"/"optimizer_history"/"extra_state"/"last_optimizer_state": ... (ignored)}
"""

from __future__ import annotations

import _codecs
import _compat_pickle
import argparse
import collections
import copyreg
import logging
import pickle
import typing
from collections import OrderedDict
from pathlib import Path

import torch

from score_upstream.models.formats import CheckpointError, Probe, RawHubert

logger = logging.getLogger(__name__)

NAME = "fairseq"
EXPECTS = "fairseq checkpoint with keys cfg or args, model, task_state"
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


class FairseqObject:
    """Inert stand-in for a fairseq class: keeps the pickled state, runs no code of its own."""

    fairseq_name = "fairseq object"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<{self.fairseq_name}>"


class FairseqMetersDict(OrderedDict):
    """Stand-in for ``fairseq.logging.meters.MetersDict`` (an OrderedDict subclass)."""


def _standin(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (FairseqObject,), {"fairseq_name": qualname})


_FAIRSEQ_STANDINS: dict[tuple[str, str], type] = {
    ("fairseq.data.dictionary", "Dictionary"): _standin("fairseq.data.dictionary.Dictionary"),
    ("fairseq.logging.meters", "MetersDict"): FairseqMetersDict,
}
for _meter in ("AverageMeter", "SumMeter", "TimeMeter", "StopwatchMeter", "Meter"):
    _FAIRSEQ_STANDINS[("fairseq.logging.meters", _meter)] = _standin(f"fairseq.logging.meters.{_meter}")

_BUILTIN_TYPES = {"dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
                  "bytes", "bytearray", "slice", "object", "range"}

_ALLOWED: dict[tuple[str, str], object] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("_codecs", "encode"): _codecs.encode,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("typing", "Any"): typing.Any,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
}
for _name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
              "_rebuild_parameter_with_state", "_rebuild_device_tensor_from_numpy"):
    if hasattr(torch._utils, _name):
        _ALLOWED[("torch._utils", _name)] = getattr(torch._utils, _name)

_OMEGACONF = {
    "omegaconf.dictconfig": ("DictConfig",),
    "omegaconf.listconfig": ("ListConfig",),
    "omegaconf.base": ("ContainerMetadata", "Metadata"),
    "omegaconf.nodes": ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode"),
}
_NUMPY = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
}


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


def _resolve(module: str, name: str):
    key = (module, name)
    if key in _ALLOWED:
        return _ALLOWED[key]
    if key in _FAIRSEQ_STANDINS:
        return _FAIRSEQ_STANDINS[key]
    if module == "builtins" and name in _BUILTIN_TYPES:
        import builtins

        return getattr(builtins, name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if name in _OMEGACONF.get(module, ()):
        import importlib

        return getattr(importlib.import_module(module), name)
    if key in _NUMPY:
        import importlib

        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            alt = module.replace("numpy.core", "numpy._core") if "numpy.core" in module else module.replace("numpy._core", "numpy.core")
            return getattr(importlib.import_module(alt), name)
    raise RefusedGlobal(module, name)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # Protocol-2 pickles name Python 2 modules (``__builtin__.long``); map them as pickle itself does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        return _resolve(module, name)


class restricted_pickle:  # noqa: N801 - used as a module object by torch.load(pickle_module=...)
    """A stand-in for the ``pickle`` module whose ``Unpickler`` honours the allowlist."""

    Unpickler = _RestrictedUnpickler
    load = staticmethod(lambda f, **kw: _RestrictedUnpickler(f, **kw).load())
    UnpicklingError = pickle.UnpicklingError


def load_restricted(path: Path):
    """``torch.load`` through the allowlist; raises :class:`CheckpointError` on anything else."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except RefusedGlobal as e:
        raise CheckpointError(
            f"{path}: refusing to unpickle global '{e.qualname}'; a HuBERT checkpoint may hold only "
            "tensors and plain config (is this file from a source you trust?)"
        ) from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); expected {EXPECTS}") from None


def _plain(value):
    """Convert config objects (Namespace, DictConfig, stand-ins' dicts) to plain containers."""
    if isinstance(value, argparse.Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=False, enum_to_str=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return value.item()
    return value


def detect(p: Probe) -> bool:
    if p.is_dir:
        return False
    if p.strings is not None:
        return "model" in p.strings and ("cfg" in p.strings or "args" in p.strings)
    with open(p.path, "rb") as f:
        return f.read(len(LEGACY_TORCH_MAGIC)) == LEGACY_TORCH_MAGIC


def read(path: Path) -> RawHubert:
    state = load_restricted(path)
    if not isinstance(state, dict) or "model" not in state:
        found = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: found {found}; expected {EXPECTS}")
    cfg = _plain(state.get("cfg"))
    args = _plain(state.get("args"))
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        model_cfg, task_cfg = dict(cfg["model"]), dict(cfg.get("task") or {})
    elif isinstance(args, dict):
        model_cfg, task_cfg = dict(args), dict(args)  # pre-hydra: one flat namespace for everything
    else:
        raise CheckpointError(f"{path}: neither cfg.model nor args holds the model config; expected {EXPECTS}")
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: 'model' is not a dict of tensors; expected {EXPECTS}")
    if any(k.startswith("w2v_encoder.") for k in weights):
        raise CheckpointError(
            f"{path}: a fine-tuned (CTC) fairseq checkpoint (w2v_encoder.* weights); expected a pre-trained HuBERT"
        )
    model_name = model_cfg.get("_name") or model_cfg.get("arch")
    if model_name and "hubert" not in str(model_name):
        raise CheckpointError(f"{path}: fairseq model '{model_name}', expected a HuBERT ('hubert')")
    dictionaries = (state.get("task_state") or {}).get("dictionaries") or []
    symbols = [list(getattr(d, "symbols", [])) if d is not None else None for d in dictionaries] or [None]
    return RawHubert(
        model_cfg=model_cfg,
        task_cfg=task_cfg,
        symbols=symbols,
        state_dict={k: v for k, v in weights.items()},
        extra={},
        source_format=NAME,
        path=path,
    )
