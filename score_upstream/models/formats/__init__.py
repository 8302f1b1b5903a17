"""HuBERT checkpoint formats: detection, a registry of readers, and the writers.

Formats read (auto-detected from the content, never from the file name):

============  ===============================================================================
``s3prl``     s3prl's converted ``.pt``: ``{task_cfg, model_cfg, model_weight, dictionaries_symbols}``
              (+ any extra plain keys, e.g. a SCORE checkpoint's ``score`` block); weights-only load.
``fairseq``   a fairseq ``.pt`` (``hubert_base_ls960.pt``): ``{cfg|args, model, task_state, ...}``,
              read by a restricted unpickler without fairseq (:mod:`score_upstream.models.formats.fairseq`).
``hf``        a transformers ``HubertModel`` directory: ``config.json`` + ``model.safetensors`` or
              ``pytorch_model.bin`` (:mod:`score_upstream.models.formats.hf`).
``spin``      a SPIN PyTorch-Lightning ``.ckpt`` (:mod:`score_upstream.models.formats.spin`).
``wavlm``     a WavLM ``.pt`` (unilm release = s3prl's ``wavlm_local`` input): ``{cfg, model}``
              (:mod:`score_upstream.models.formats.wavlm_pt`; read as ``RawWavLM``).
``wavlm_hf``  a transformers ``WavLMModel`` directory (:mod:`score_upstream.models.formats.wavlm_hf`).
============  ===============================================================================

Other modules add readers with :func:`register_reader` (a detector over a cheap :class:`Probe` of
the path and a reader returning :class:`RawHubert`).
"""

from __future__ import annotations

import logging
import os
import pickletools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)

S3PRL_KEYS = ("task_cfg", "model_cfg", "model_weight", "dictionaries_symbols")


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or not a HuBERT; the message is one line."""


@dataclass
class RawHubert:
    """A HuBERT checkpoint as plain data, in fairseq/s3prl parameter names.

    Attributes:
        model_cfg: plain dict of model config (fairseq ``cfg["model"]``).
        task_cfg: plain dict of task config (fairseq ``cfg["task"]``).
        symbols: one symbol list per label dictionary (``[None]`` when the file has none).
        state_dict: parameter name -> CPU tensor (s3prl ``HubertModel`` names).
        extra: extra top-level keys to carry along (plain data).
        source_format: name of the reader that produced it.
        path: the file or directory it came from (``None`` when built in memory).
    """

    model_cfg: dict
    task_cfg: dict
    symbols: list
    state_dict: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)
    source_format: str = ""
    path: Path | None = None


@dataclass
class Probe:
    """What detectors may look at without unpickling anything.

    Attributes:
        path: the path given.
        is_dir: whether it is a directory.
        strings: for a zip-format ``torch.save`` file, every string constant and global name in its
            pickle (dict keys, class names); ``None`` for directories and non-zip files.
    """

    path: Path
    is_dir: bool
    strings: frozenset[str] | None


@dataclass
class _Reader:
    name: str
    detect: Callable[[Probe], bool]
    read: Callable[[Path], RawHubert]
    expects: str


_READERS: list[_Reader] = []


def register_reader(name: str, detect: Callable[[Probe], bool], read: Callable[[Path], RawHubert], expects: str) -> None:
    """Add (or replace) a checkpoint reader; ``expects`` describes the format for error messages."""
    _READERS[:] = [r for r in _READERS if r.name != name]
    _READERS.append(_Reader(name, detect, read, expects))


def reader_names() -> list[str]:
    return [r.name for r in _READERS]


def pickle_strings(path: Path) -> frozenset[str] | None:
    """String constants and ``module name`` globals of a zip-format torch file's pickle, unexecuted."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                return None
            data = zf.read(names[0])
    except (zipfile.BadZipFile, OSError):
        return None
    found: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                found.add(arg)
    except Exception:  # a truncated pickle still gives its leading keys
        pass
    return frozenset(found)


def probe(path: str | os.PathLike) -> Probe:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; expected a HuBERT .pt file or a transformers directory")
    if path.is_dir():
        return Probe(path, True, None)
    return Probe(path, False, pickle_strings(path))


def detect_format(path: str | os.PathLike) -> str:
    """Name of the reader that claims ``path``.

    Raises:
        CheckpointError: missing path, or no reader recognises the content.
    """
    _ensure_builtin_readers()
    p = probe(path)
    for reader in _READERS:
        if reader.detect(p):
            return reader.name
    expected = "; ".join(f"{r.name}: {r.expects}" for r in _READERS)
    found = "a directory without a transformers config.json" if p.is_dir else (
        f"top-level strings {sorted(s for s in p.strings if s.isidentifier())[:8]}" if p.strings else "an unrecognised file"
    )
    raise CheckpointError(f"{p.path}: not a HuBERT checkpoint (nor a WavLM one) in any known format (found {found}); "
                          f"expected {expected}")


def read_checkpoint(path: str | os.PathLike) -> RawHubert:
    """Detect the format of ``path`` and read it as :class:`RawHubert`."""
    name = detect_format(path)
    reader = next(r for r in _READERS if r.name == name)
    raw = reader.read(Path(path))
    raw.source_format = raw.source_format or name
    raw.path = Path(path)
    return raw


def write_s3prl(raw: RawHubert, path: str | os.PathLike) -> Path:
    from score_upstream.models.formats.s3prl_format import write

    return write(raw, path)


def write_hf(raw: RawHubert, directory: str | os.PathLike) -> Path:
    from score_upstream.models.formats.hf import write

    return write(raw, directory)


_builtin_done = False


def _ensure_builtin_readers() -> None:
    global _builtin_done
    if _builtin_done:
        return
    _builtin_done = True
    from score_upstream.models.formats import fairseq, hf, s3prl_format, spin, wavlm_hf, wavlm_pt

    # Order matters only for files several detectors could claim: the s3prl keys are the most specific;
    # a WavLM .pt has fairseq's "cfg" and "model" keys and a WavLM directory transformers' config.json.
    for mod in (s3prl_format, spin, wavlm_pt, fairseq, wavlm_hf, hf):
        if mod.NAME not in reader_names():
            register_reader(mod.NAME, mod.detect, mod.read, mod.EXPECTS)
