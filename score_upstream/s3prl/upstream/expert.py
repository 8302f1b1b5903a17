"""s3prl upstream expert for SCORE (and any HuBERT or WavLM) checkpoints.

How to use: through s3prl (``-u score_hubert -k CKPT``, ``-u score_wavlm -k CKPT``) after
:func:`score_upstream.register`, or directly::

    from score_upstream.s3prl.upstream.expert import UpstreamExpert
    expert = UpstreamExpert("exp/score/score_hubert.pt").eval()
    out = expert([torch.randn(16000), torch.randn(12000)])
    out["hidden_states"]      # 13 tensors (B, T, D) for a 12-layer model, 50 Hz

The hidden states are what s3prl's stock ``hubert_local`` (``wavlm_local``) expert returns for the same
weights: the input of every transformer layer (after the pre-encoder LayerNorm for post-LN models, padded
frames included, cut to the shortest) and the encoder output. Both families run s3prl's own network, so
WavLM's relative position bias is computed once by layer 0 for the padded length and passed on, and
padded frames are masked with s3prl's frame mask, as ``wavlm_local`` does. The checkpoint may be in any
format :func:`score_upstream.models.loader.load_model` reads; a SCORE checkpoint is the family's s3prl
format plus metadata keys.

Frozen-feature cache (opt-in): with ``SCORE_UPSTREAM_CACHE_MB=512`` in the environment, a forward in
eval mode without grad (how s3prl's runner calls a frozen upstream) looks its batch up in an LRU cache
of at most that many MB before running the network, so SUPERB downstream training computes each
training batch once instead of once per epoch. A whole batch is one entry, not single utterances,
because a batch's hidden states depend on its other members (the GroupNorm of HuBERT Base's first conv
layer normalises over the padded time axis, and padded frames are returned), so only a batch-level
entry returns exactly what the uncached forward returns. s3prl's ``asr`` and ``ctc`` downstreams bucket
the training set into fixed batches (only their order is shuffled) and evaluate one utterance at a
time, so batches recur. The budget counts memory on the features' device. Train mode or grad enabled:
never used.

Shared on disk (opt-in): with ``SCORE_UPSTREAM_CACHE_DIR=DIR``, the same batches are also kept as files
under ``DIR/<weights fingerprint>/``, so that the processes of one evaluation (the downstream seeds run
side by side, the test run after training, QbE's dev and eval searches over the same documents) compute
each batch once between them; a process that misses takes a lock on the entry, so two processes never
compute the same batch at once, and writes it atomically. Nothing is ever evicted: point it at a folder
that belongs to one run and delete it afterwards (SUPERB HuBERT Base features of LibriSpeech
train-clean-100 would take ~700 GB). A write that fails (disk full, quota, read-only folder) logs one
warning, returns the computed features and ends writing for the rest of the process (entries already
there are still read); temporary files of killed writers are removed when a folder opens.

What an entry is keyed on, in both caches: the fingerprint of the weights in use at that forward, then
the batch: every waveform's dtype, device, length and exact bytes, in order, and the autocast state.
The fingerprint hashes every weight and buffer of the network, its family, input normalisation and
config, the bytes of the source files that turn weights into features (this module, the cache module,
our model builders, s3prl's network classes) and the versions of this package, s3prl and torch. It is
taken again before a cached forward whenever the weights may have changed (:class:`~.cache.WeightsFingerprint`:
a tensor was replaced, its version counter or float32 norm moved, or the upstream trained or holds
gradients): s3prl's ``-f`` evaluates dev in eval mode between optimizer steps, and ``-e`` loads the
fine-tuned weights after the expert is built. Entries of earlier weights are never looked up again
(they age out of the LRU; their disk folder stays). The one change not seen is an edit through
``.data`` that keeps every tensor's float32 norm, made while the upstream neither trains nor holds
gradients. Entries are checked before use (number of hidden states, shape ``(batch, frames of the
longest input, dim)``, dtype); a bad one logs a warning and is recomputed and replaced.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from s3prl.upstream.interfaces import UpstreamBase
from torch.nn.utils.rnn import pad_sequence

from score_upstream.models.loader import load_model
# CACHE_ENV, FeatureCache and cache_megabytes_from_env are imported from here by callers too
from score_upstream.s3prl.upstream.cache import (CACHE_DIR_ENV, CACHE_ENV, DiskFeatureCache, FeatureCache,  # noqa: F401
                                                 WeightsFingerprint, batch_key, cache_megabytes_from_env, module_files)

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DOWNSAMPLE_RATE = 320


class UpstreamExpert(UpstreamBase):
    """HuBERT or WavLM hidden states for s3prl's runner and ``S3PRLUpstream``.

    Args:
        ckpt: checkpoint path (s3prl converted ``.pt``, fairseq ``.pt``, WavLM ``.pt`` or transformers directory).
        family: ``"hubert"`` or ``"wavlm"``: the checkpoint must hold that family; None = either.
        cache_mb: frozen-feature cache size in MB (0 = off); None = ``$SCORE_UPSTREAM_CACHE_MB``.
        cache_dir: folder of the frozen-feature cache shared on disk ("" = off); None = ``$SCORE_UPSTREAM_CACHE_DIR``.
        **kwargs: what s3prl passes to every upstream (``model_config``, ``refresh``...); ignored.

    Attributes:
        cache: the in-memory :class:`~.cache.FeatureCache`, or None.
        disk_cache: the :class:`~.cache.DiskFeatureCache` of the current weights (a new one when they change), or None.
        weights: the :class:`~.cache.WeightsFingerprint` both caches are keyed on, or None without cache.
    """

    def __init__(self, ckpt: str, cache_mb: float | None = None, family: str | None = None,
                 cache_dir: str | os.PathLike | None = None, **kwargs):
        super().__init__()
        bundle = load_model(ckpt, family=family)
        self.family = bundle.family
        self.model = bundle.model
        self.normalize = bundle.normalize
        self.source = str(ckpt)
        self.score_meta = bundle.extra.get("score")
        # Same inference settings as s3prl's HuBERT and WavLM experts: no layer drop, CNN front-end without grad.
        self.model.feature_grad_mult = 0.0
        self.model.encoder.layerdrop = 0.0
        self._captured: list[torch.Tensor] = []
        for layer in self.model.encoder.layers:
            layer.register_forward_hook(self._capture_layer_input)
        self.model.encoder.register_forward_hook(self._capture_encoder_output)
        front_end = getattr(self.model, "feature_extractor", torch.nn.Module())
        self._convs = [m for m in front_end.modules() if isinstance(m, torch.nn.Conv1d)]
        self.cache: FeatureCache | None = None
        self.disk_cache: DiskFeatureCache | None = None
        self.weights: WeightsFingerprint | None = None
        self._startup_check()
        mb = cache_megabytes_from_env() if cache_mb is None else float(cache_mb)
        self.cache = FeatureCache(int(mb * 2**20)) if mb > 0 else None
        if self.cache is not None:
            logger.info("%s: frozen-feature cache on, up to %.0f MB (used in eval mode without grad)", self.source, mb)
        cache_dir = os.environ.get(CACHE_DIR_ENV, "").strip() if cache_dir is None else os.fspath(cache_dir)
        self._cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache is not None or self._cache_dir is not None:
            self.weights = WeightsFingerprint(self.model, self._fingerprint_context(bundle),
                                              self._source_files(), name=self.source)
        if self._cache_dir is not None:
            self.disk_cache = DiskFeatureCache(self._cache_dir / self.weights.current())
            logger.info("%s: frozen-feature cache shared on disk in %s", self.source, self.disk_cache.root)

    def _fingerprint_context(self, bundle) -> list[str]:
        import s3prl

        import score_upstream

        config = {k: getattr(bundle, k) for k in ("model_cfg", "task_cfg", "cfg") if hasattr(bundle, k)}
        return [self.family, f"normalize={self.normalize}", json.dumps(config, sort_keys=True, default=repr),
                f"score_upstream {score_upstream.__version__}", f"s3prl {getattr(s3prl, '__version__', '?')}",
                f"torch {torch.__version__}"]

    def _source_files(self) -> set[str]:
        from score_upstream.models import hubert, wavlm
        from score_upstream.s3prl.upstream import cache

        return module_files(self.model) | {__file__, cache.__file__, hubert.__file__, wavlm.__file__}

    def _capture_layer_input(self, module, inputs, output):
        self._captured.append(inputs[0].transpose(0, 1))  # layers run time-major (T, B, D)

    def _capture_encoder_output(self, module, inputs, output):
        self._captured.append(output[0])

    def _startup_check(self) -> None:
        gen = torch.Generator().manual_seed(0)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            hs = self.forward([torch.randn(SAMPLE_RATE, generator=gen)])["hidden_states"]
        self.train(was_training)
        self._num_hidden = len(self.model.encoder.layers) + 1
        self._dim = hs[-1].shape[-1]
        if len(hs) != self._num_hidden or hs[-1].shape[1] != SAMPLE_RATE // DOWNSAMPLE_RATE - 1:
            raise RuntimeError(
                f"{self.source}: one second of noise gave {len(hs)} hidden states of {hs[-1].shape[1]} frames, "
                f"expected {self._num_hidden} of {SAMPLE_RATE // DOWNSAMPLE_RATE - 1}"
            )
        if self._frames(SAMPLE_RATE) != hs[-1].shape[1]:
            self._convs = []  # a front-end this module cannot follow: frames checked for consistency only

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """Args: wavs: list of 1-D float waveforms at 16 kHz. Returns ``{"hidden_states": [(B, T, D)] * (L+1), ...}``."""
        frozen = not (self.training or self.model.training or torch.is_grad_enabled())
        if self.weights is not None and not frozen:
            self.weights.mark_training()
        if frozen and self.weights is not None:
            hiddens = self._cached_hidden_states(wavs)
        else:
            hiddens = self._hidden_states(wavs)
        return {"hidden_states": hiddens, "last_hidden_state": hiddens[-1]}

    def _cached_hidden_states(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        fingerprint = self.weights.current()
        if self._cache_dir is not None and self.disk_cache.root.name != fingerprint:
            self.disk_cache = DiskFeatureCache(self._cache_dir / fingerprint)
        key = batch_key(wavs, context=f"{fingerprint}|{_autocast_state(wavs[0].device)}")

        def check(hidden: list) -> str | None:
            return self._entry_problem(hidden, wavs)

        hiddens = self.cache.get(key, check) if self.cache is not None else None
        if hiddens is None:
            if self.disk_cache is not None:
                stored = self.disk_cache.get_or_compute(key, lambda: self._hidden_states(wavs), check)
                hiddens = [h.to(wavs[0].device) for h in stored]
            else:
                hiddens = self._hidden_states(wavs)
            if self.cache is not None:
                self.cache.put(key, hiddens)
        return hiddens

    def _frames(self, samples: int) -> int | None:
        """Frames the conv front-end makes of ``samples`` (None: unknown)."""
        if not self._convs:
            return None
        for c in self._convs:
            samples = (samples + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[0] + 1
        return samples

    def _entry_problem(self, hidden: list, wavs: list[torch.Tensor]) -> str | None:
        """What is wrong with cached ``hidden`` as the hidden states of ``wavs``, or None."""
        if len(hidden) != self._num_hidden:
            return f"{len(hidden)} hidden states, expected {self._num_hidden}"
        frames = self._frames(max(len(w) for w in wavs)) or hidden[0].shape[1]
        autocast = _autocast_state(wavs[0].device) != "off"
        dtype = next(p.dtype for p in self.model.parameters() if p.is_floating_point())
        for i, h in enumerate(hidden):
            if tuple(h.shape) != (len(wavs), frames, self._dim):
                return f"hidden state {i} of shape {tuple(h.shape)}, expected {(len(wavs), frames, self._dim)}"
            if not h.is_floating_point() or (not autocast and h.dtype != dtype):
                return f"hidden state {i} of dtype {h.dtype}, expected {dtype}"
        return None

    def _hidden_states(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.normalize:
            wavs = [F.layer_norm(w, w.shape) for w in wavs]
        device = wavs[0].device
        lengths = torch.tensor([len(w) for w in wavs], device=device)
        padding_mask = torch.arange(int(lengths.max()), device=device)[None, :] >= lengths[:, None]
        padded = pad_sequence(wavs, batch_first=True)
        self._captured = []
        try:
            self.model.extract_features(padded, padding_mask=padding_mask, mask=False)
            hiddens = self._captured
        finally:
            self._captured = []
        # Layer inputs are padded to an even length inside the encoder; its output is not.
        frames = min(h.size(1) for h in hiddens)
        return [h[:, :frames] for h in hiddens]


def _autocast_state(device: torch.device) -> str:
    """``"off"``, or the dtype autocast gives ``device``'s type now (features differ under autocast)."""
    try:
        if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
            on, dtype = torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type)
        elif device.type == "cpu":
            on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    except RuntimeError:  # a device type without autocast
        return "off"
    return str(dtype) if on else "off"
