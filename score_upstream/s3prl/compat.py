"""Make s3prl 0.4.x import and run with torch/torchaudio 2.3 to 2.11 and huggingface_hub 0.x to 1.x+, in-process.

How to use (our entry points do this; call it yourself before importing s3prl in your own code)::

    import score_upstream.s3prl.compat as compat
    compat.apply()          # idempotent; then `import s3prl.hub` and s3prl's runner work
    compat.applied_shims()  # what it had to patch in this environment

Nothing installed is edited: attributes are set on the already-imported ``torchaudio`` and
``huggingface_hub`` modules, a ``torchaudio.sox_effects`` module is placed in ``sys.modules``, and
``argparse.Namespace`` is added to torch's weights-only allowlist. Each shim is installed only where the
installed libraries lack what s3prl uses ("Applied when", below the table), so in an older
environment (torchaudio < 2.9 with a working sox, huggingface_hub < 1.0, torch < 2.6) s3prl runs on the
libraries' own code. :func:`apply` logs one debug line naming the versions and the shims it applied.

=====================================  ======================================================  ==================================================
shim                                   s3prl code that needs it                               why
=====================================  ======================================================  ==================================================
``torchaudio.set_audio_backend``       ``run_downstream.main``; module level in               removed in torchaudio 2.9; the call only picked a
(no-op)                                ``upstream/byol_s/byol_a/common.py`` (imported by      backend. Without it ``import s3prl.hub`` fails.
                                       ``s3prl.hub``), ``dataio/dataset/load_audio.py``,
                                       ``util/audio_info.py``, several upstream ``audio.py``
``torchaudio.load`` (soundfile)        ``downstream/asr/dataset.py`` (``_load_wav``),          2.9+ routes ``load`` through torchcodec, which is
                                       ``downstream/ctc/data.py``, ``runner.inference``        not installed; soundfile reads flac/wav
``torchaudio.info`` / ``save``         ``util/audio_info.py``, upstream/pretrain utilities    ``info`` removed in 2.9; ``save`` needs torchcodec
``torchaudio.sox_effects``             ``downstream/quesst14_dtw/dataset.py`` (QbE: channels,  module removed in 2.9; ``upstream/mos_prediction``
``apply_effects_file/_tensor``         rate, gain), ``upstream/mos_prediction/expert.py``     is imported by ``s3prl.hub`` so the import alone
                                       (import only), sws2013/quesst14_embedding/speech       fails. We implement channels, rate, gain [-n],
                                       commands/voxceleb datasets                             norm, reverse, pad, trim; others raise clearly
``huggingface_hub.HfFolder``,          ``downstream/runner.py`` and ``run_downstream.py``     removed in huggingface_hub 1.0; only used for
``Repository`` (placeholders)          import them at module level                            ``--hub huggingface`` / ``--push_to_hf_hub``, so
                                                                                              they raise a clear error only when used
``argparse.Namespace`` on torch's      ``run_downstream.get_downstream_args`` (``-e``) and    torch 2.6+ ``torch.load`` is weights-only by default;
weights-only allowlist                 ``Runner.__init__`` (``init_ckpt``) load runner        runner checkpoints hold ``Args`` (a Namespace), so
                                       checkpoints ``states-*.ckpt``                          evaluate/resume failed
``--device cpu`` when no CUDA          ``run_downstream`` (``--device`` defaults to cuda)     applied by :func:`default_device_args` in our CLI
``ctc.data.load_dataset`` reads        ``downstream/ctc/expert.py`` ``get_dataloader``         it ``pop``s ``num_workers`` from the expert's own
``num_workers`` without removing it                                                           corpus dict, so every later loader (dev, test,
                                                                                              evaluate) silently used 12 workers
``ctc/data.py`` reads audio through    ``downstream/ctc/data.py`` ``collect_audio_batch``      it decodes every file of every batch in every epoch
a cache in memory                      (superb/pr/audio_cache.py; only when                    (~8 ms of a ~45 ms demo PR update); same bytes
                                       ``$SCORE_UPSTREAM_CACHE_MB`` > 0)                       returned, so the same results
``hf_hubert`` / ``hf_wav2vec2``         ``s3prl.hub`` imports both experts, which import        ~3.5 s of every process that imports ``s3prl.hub``
experts load on first use              ``transformers`` at module level                       (a SUPERB run starts dozens); the two upstreams
                                                                                              work as before, ``transformers`` loads when one
                                                                                              of them is built or an attribute is read
=====================================  ======================================================  ==================================================

Applied when: ``set_audio_backend`` / ``get_audio_backend`` are absent; torchaudio I/O when
``torchaudio.info`` is absent (torchaudio 2.9+; there ``load``/``save`` need torchcodec);
``sox_effects`` when the module does not import or sox is not among ``torchaudio.list_audio_backends()``
(torchaudio's PyPI wheels have not bundled libsox since 2.1, so its effects fail at call time without a
system libsox); ``HfFolder``/``Repository`` when absent; the allowlist entry when ``torch.load`` is
weights-only by default (torch 2.6+); the ``ctc`` fix whenever s3prl's ``load_dataset`` is unpatched; the ``ctc`` audio cache when
``$SCORE_UPSTREAM_CACHE_MB`` > 0;
the deferred ``hf_*`` experts when ``s3prl.hub`` has not been imported yet.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import types

import numpy as np
import soundfile as sf
import torch

logger = logging.getLogger(__name__)

_applied: list[str] | None = None


class CompatError(RuntimeError):
    """A feature of s3prl's runtime this compatibility layer does not provide."""


# --------------------------------------------------------------------------- torchaudio I/O
class AudioMetaData:
    """What ``torchaudio.info`` returned (the fields s3prl reads)."""

    def __init__(self, sample_rate: int, num_frames: int, num_channels: int, bits_per_sample: int, encoding: str):
        self.sample_rate, self.num_frames, self.num_channels = sample_rate, num_frames, num_channels
        self.bits_per_sample, self.encoding = bits_per_sample, encoding

    def __repr__(self) -> str:
        return (f"AudioMetaData(sample_rate={self.sample_rate}, num_frames={self.num_frames}, "
                f"num_channels={self.num_channels}, bits_per_sample={self.bits_per_sample}, encoding={self.encoding})")


def _src(filepath):
    return filepath if hasattr(filepath, "read") else os.fspath(filepath)


def load(filepath, frame_offset: int = 0, num_frames: int = -1, normalize: bool = True,
         channels_first: bool = True, format=None, buffer_size: int = 4096, backend=None):
    """``torchaudio.load`` through soundfile: ``(Tensor[C, T] float32, sample_rate)``."""
    stop = None if num_frames is None or num_frames < 0 else frame_offset + num_frames
    try:
        data, sr = sf.read(_src(filepath), start=frame_offset, stop=stop, dtype="float32" if normalize else "int16",
                           always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError
        raise RuntimeError(f"{filepath}: cannot decode audio ({e})") from None
    wav = torch.from_numpy(np.ascontiguousarray(data.T if channels_first else data))
    return wav, sr


def info(filepath, format=None, buffer_size: int = 4096, backend=None) -> AudioMetaData:
    """``torchaudio.info`` through soundfile."""
    try:
        i = sf.info(_src(filepath))
    except Exception as e:
        raise RuntimeError(f"{filepath}: cannot read audio header ({e})") from None
    bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "PCM_S8": 8, "PCM_U8": 8, "FLOAT": 32, "DOUBLE": 64}.get(i.subtype, 0)
    return AudioMetaData(i.samplerate, i.frames, i.channels, bits, i.subtype)


def save(filepath, src: torch.Tensor, sample_rate: int, channels_first: bool = True, format=None,
         encoding=None, bits_per_sample=None, buffer_size: int = 4096, backend=None, compression=None) -> None:
    """``torchaudio.save`` through soundfile (16-bit PCM unless ``bits_per_sample`` says otherwise)."""
    data = src.detach().cpu().numpy()
    if data.ndim == 2 and channels_first:
        data = data.T
    subtype = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}.get(bits_per_sample or 16, "PCM_16")
    sf.write(_src(filepath), data, sample_rate, subtype=subtype, format=format)


# --------------------------------------------------------------------------- sox effects
def _db(value: str, effect: list) -> float:
    try:
        return float(value)
    except ValueError:
        raise CompatError(f"sox effect {effect}: {value!r} is not a number of dB") from None


def _seconds(value: str, sr: int) -> int:
    value = str(value)
    return int(value[:-1]) if value.endswith("s") else int(round(float(value) * sr))


def apply_effects_tensor(tensor: torch.Tensor, sample_rate: int, effects: list, channels_first: bool = True):
    """A subset of sox effects in torch: ``channels N``, ``rate R``, ``gain [-n] [dB]``, ``norm [dB]``,
    ``reverse``, ``pad BEFORE AFTER`` (seconds), ``trim START [DURATION]`` (seconds).

    Args:
        tensor: ``(C, T)`` if ``channels_first`` else ``(T, C)``.
        sample_rate: input rate in Hz.
        effects: list of ``[name, arg, ...]`` string lists, applied in order.

    Returns:
        ``(Tensor, sample_rate)`` in the same layout.

    Raises:
        CompatError: an effect outside the subset (e.g. ``vad``, ``silence``).
    """
    import torchaudio.functional as AF

    wav = tensor.to(torch.float32)
    wav = wav if channels_first else wav.t()
    sr = int(sample_rate)
    for effect in effects:
        name, args = effect[0], [str(a) for a in effect[1:]]
        if name == "channels":
            n = int(args[0])
            if n == 1:
                wav = wav.mean(dim=0, keepdim=True)
            elif n != wav.shape[0]:
                wav = wav.mean(dim=0, keepdim=True).expand(n, -1).clone()
        elif name == "rate":
            new_sr = int(float(args[0].rstrip("k")) * (1000 if args[0].endswith("k") else 1))
            if new_sr != sr:
                wav = AF.resample(wav, sr, new_sr)
                sr = new_sr
        elif name in ("gain", "norm"):
            normalize = name == "norm" or "-n" in args
            levels = [a for a in args if not a.startswith("-") or a.lstrip("-").replace(".", "", 1).isdigit()]
            level = _db(levels[-1], effect) if levels else 0.0
            if normalize:
                peak = wav.abs().max()
                wav = wav / peak * 10 ** (level / 20) if peak > 0 else wav
            else:
                wav = wav * 10 ** (level / 20)
        elif name == "reverse":
            wav = wav.flip(-1)
        elif name == "pad":
            before = _seconds(args[0], sr) if args else 0
            after = _seconds(args[1], sr) if len(args) > 1 else 0
            wav = torch.nn.functional.pad(wav, (before, after))
        elif name == "trim":
            start = _seconds(args[0], sr)
            stop = start + _seconds(args[1], sr) if len(args) > 1 else wav.shape[-1]
            wav = wav[:, start:stop]
        else:
            raise CompatError(
                f"sox effect {effect} is not provided by score_upstream.s3prl.compat (torchaudio 2.9+ removed sox); "
                "supported: channels, rate, gain, norm, reverse, pad, trim"
            )
    return (wav if channels_first else wav.t()), sr


def apply_effects_file(path, effects: list, normalize: bool = True, channels_first: bool = True, format=None):
    """Read ``path`` (soundfile) and apply :func:`apply_effects_tensor`."""
    wav, sr = load(path)
    return apply_effects_tensor(wav, sr, effects, channels_first=True) if channels_first else \
        apply_effects_tensor(wav.t(), sr, effects, channels_first=False)


# --------------------------------------------------------------------------- huggingface_hub
class _RemovedMeta(type):
    def __getattr__(cls, name):
        raise CompatError(cls._message())


class _Removed(metaclass=_RemovedMeta):
    _name = "?"

    @classmethod
    def _message(cls) -> str:
        return (f"huggingface_hub.{cls._name} was removed in huggingface_hub 1.0; s3prl uses it only for "
                "--hub huggingface / --push_to_hf_hub, which this project does not support")

    def __init__(self, *args, **kwargs):
        raise CompatError(self._message())


def _removed(name: str) -> type:
    return _RemovedMeta(name, (_Removed,), {"_name": name})


# --------------------------------------------------------------------------- s3prl's ctc downstream
def _patch_ctc_load_dataset() -> bool:
    """Give ``ctc``'s ``load_dataset`` a copy of the corpus config, so its ``pop`` changes nothing.

    ``ctc/expert.py`` binds ``load_dataset`` with ``from .data import ...`` at import time, so the data
    module is patched before the expert is imported (and the expert too if it already was).
    Returns False when it already was patched.
    """
    import s3prl.downstream.ctc.data as ctc_data

    original = ctc_data.load_dataset
    if getattr(original, "_score_copy_corpus", False):
        return False

    def load_dataset(split, tokenizer, corpus):
        return original(split, tokenizer, dict(corpus))

    load_dataset._score_copy_corpus = True
    ctc_data.load_dataset = load_dataset
    expert = sys.modules.get("s3prl.downstream.ctc.expert")
    if expert is not None:
        expert.load_dataset = load_dataset
    return True


# --------------------------------------------------------------------------- s3prl's transformers upstreams
DEFERRED_EXPERTS = ("s3prl.upstream.hf_hubert.expert", "s3prl.upstream.hf_wav2vec2.expert")


def _real_module(name: str) -> types.ModuleType:
    """The real module ``name``, imported now if its placeholder is still in ``sys.modules``."""
    mod = sys.modules.get(name)
    if mod is None or getattr(mod, "_score_deferred", False):
        sys.modules.pop(name, None)
        mod = importlib.import_module(name)
    return mod


def _deferred_module(name: str) -> types.ModuleType:
    """A placeholder for ``name`` whose ``UpstreamExpert`` and other attributes import the real module."""
    mod = types.ModuleType(name, f"placeholder: {name} is imported on first use (score_upstream.s3prl.compat)")
    mod._score_deferred = True

    class UpstreamExpert:
        """Builds the real module's ``UpstreamExpert`` (the module is imported then)."""

        def __new__(cls, *args, **kwargs):
            return _real_module(name).UpstreamExpert(*args, **kwargs)

    def __getattr__(attr: str):
        if attr.startswith("__"):  # the import system and inspect probe __path__, __file__...: not a use
            raise AttributeError(attr)
        return getattr(_real_module(name), attr)

    mod.UpstreamExpert = UpstreamExpert
    mod.__getattr__ = __getattr__
    return mod


def _defer_hf_experts() -> bool:
    """Place the placeholders of :data:`DEFERRED_EXPERTS` before ``s3prl.hub`` imports them.

    Returns False when ``s3prl.hub`` or an expert was already imported (nothing to gain then).
    """
    if "s3prl.hub" in sys.modules or any(n in sys.modules for n in DEFERRED_EXPERTS):
        return False
    for name in DEFERRED_EXPERTS:
        sys.modules[name] = _deferred_module(name)
    return True


# --------------------------------------------------------------------------- entry points
def default_device_args(argv: list[str]) -> list[str]:
    """``argv`` plus ``--device cpu`` when CUDA is absent and the user chose no device.

    s3prl's ``run_downstream`` defaults ``--device`` to ``cuda`` and fails without a GPU.
    """
    if torch.cuda.is_available() or any(a == "--device" or a.startswith("--device=") for a in argv):
        return list(argv)
    return list(argv) + ["--device", "cpu"]


def _sox_works(torchaudio) -> bool:
    """True when ``torchaudio.sox_effects`` imports and torchaudio found a libsox to run it."""
    try:
        import torchaudio.sox_effects  # noqa: F401  (removed in torchaudio 2.9)

        return "sox" in torchaudio.list_audio_backends()
    except (ImportError, AttributeError, RuntimeError, OSError):
        return False


def _weights_only_by_default() -> bool:
    return torch.torch_version.TorchVersion(torch.__version__) >= (2, 6)


def _install_sox_effects(torchaudio) -> None:
    mod = types.ModuleType("torchaudio.sox_effects", "sox effects in torch, from score_upstream.s3prl.compat")
    mod.apply_effects_tensor, mod.apply_effects_file = apply_effects_tensor, apply_effects_file
    mod.effect_names = lambda: ["channels", "rate", "gain", "norm", "reverse", "pad", "trim"]
    sys.modules["torchaudio.sox_effects"] = mod
    torchaudio.sox_effects = mod


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("torch", "torchaudio", "s3prl", "huggingface_hub"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} ?")
    return ", ".join(out)


def apply() -> list[str]:
    """Install the shims of the table above that this environment needs (idempotent) and s3prl's
    missing SUPERB modules.

    Returns:
        The names of the shims applied (the same list on every call), see :func:`applied_shims`.
    """
    global _applied
    if _applied is not None:
        return list(_applied)
    import huggingface_hub
    import torchaudio

    shims = []
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None
        shims.append("torchaudio.set_audio_backend")
    if not hasattr(torchaudio, "get_audio_backend"):
        torchaudio.get_audio_backend = lambda: "soundfile"
        shims.append("torchaudio.get_audio_backend")
    if not hasattr(torchaudio, "info"):
        # torchaudio 2.9+: info is gone and load/save need torchcodec; route all three through soundfile.
        torchaudio.load, torchaudio.save, torchaudio.info = load, save, info
        shims.append("torchaudio.load/save/info")
    if not _sox_works(torchaudio):
        _install_sox_effects(torchaudio)
        shims.append("torchaudio.sox_effects")
    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, _removed(name))
            shims.append(f"huggingface_hub.{name}")
    if _weights_only_by_default():
        torch.serialization.add_safe_globals([argparse.Namespace])
        shims.append("weights-only argparse.Namespace")
    if _patch_ctc_load_dataset():
        shims.append("ctc load_dataset")
    from score_upstream.s3prl.superb.pr import audio_cache

    if audio_cache.install() is not None:
        shims.append("ctc decoded-audio cache")
    if _defer_hf_experts():
        shims.append("deferred hf_* experts")

    from score_upstream.s3prl.superb import install_s3prl_modules

    install_s3prl_modules()
    _applied = shims
    logger.debug("s3prl compatibility layer (%s): applied %s", _versions(), ", ".join(shims) or "nothing")
    return list(shims)


def applied_shims() -> list[str]:
    """The shims :func:`apply` installed in this process (empty before it ran)."""
    return list(_applied or [])
