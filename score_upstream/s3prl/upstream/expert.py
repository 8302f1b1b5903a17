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
training batch once instead of once per epoch. The key is a hash of every waveform's exact bytes,
length and device, in order: a whole batch, not single utterances, because a batch's hidden states
depend on its other members (the GroupNorm of HuBERT Base's first conv layer normalises over the
padded time axis, and padded frames are returned), so only a batch-level entry returns exactly what
the uncached forward returns. s3prl's ``asr`` and ``ctc`` downstreams bucket the training set into
fixed batches (only their order is shuffled) and evaluate one utterance at a time, so batches recur.
The budget counts memory on the features' device. Train mode or grad enabled: never used.

Shared on disk (opt-in): with ``SCORE_UPSTREAM_CACHE_DIR=DIR``, the same batches are also kept as files
under ``DIR/<model fingerprint>/``, so that the processes of one evaluation (the downstream seeds run
side by side, the test run after training, QbE's dev and eval searches over the same documents) compute
each batch once between them. The fingerprint hashes every weight and buffer of the network, its family
and input normalisation, and the versions of this package, s3prl and torch; a process that misses takes
a lock on the entry, so two processes never compute the same batch at once, and writes it atomically.
Nothing is ever evicted: point it at a folder that belongs to one run and delete it afterwards (SUPERB
HuBERT Base features of LibriSpeech train-clean-100 would take ~700 GB).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from s3prl.upstream.interfaces import UpstreamBase
from torch.nn.utils.rnn import pad_sequence

from score_upstream.models.loader import load_model

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
DOWNSAMPLE_RATE = 320
CACHE_ENV = "SCORE_UPSTREAM_CACHE_MB"
CACHE_DIR_ENV = "SCORE_UPSTREAM_CACHE_DIR"


def cache_megabytes_from_env() -> float:
    """``$SCORE_UPSTREAM_CACHE_MB`` as a number of MB; unset, empty or 0 = cache off."""
    raw = os.environ.get(CACHE_ENV, "").strip()
    try:
        mb = float(raw) if raw else 0.0
    except ValueError:
        mb = -1.0
    if not mb >= 0 or mb == float("inf"):
        raise ValueError(f"{CACHE_ENV}={raw!r}: expected a size in MB >= 0 (e.g. 512; 0 or unset = no cache)")
    return mb


def batch_key(wavs: list[torch.Tensor]) -> bytes:
    """Digest of a batch: each waveform's dtype, device, length and exact bytes, in order."""
    h = hashlib.blake2b(digest_size=20)
    for w in wavs:
        w = w.detach()
        h.update(f"{w.dtype}|{w.device}|{tuple(w.shape)};".encode())
        h.update(w.contiguous().cpu().numpy().tobytes())
    return h.digest()


class FeatureCache:
    """Least-recently-used map from :func:`batch_key` to the hidden states of that batch, bounded in bytes.

    Args:
        max_bytes: total size of the stored tensors; an entry larger than this is never stored.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._entries: OrderedDict[bytes, list[torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> list[torch.Tensor] | None:
        """Copies of the stored tensors (callers may modify them), or None."""
        hidden = self._entries.get(key)
        if hidden is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return [h.clone() for h in hidden]

    def put(self, key: bytes, hidden: list[torch.Tensor]) -> None:
        """Store copies of ``hidden``, evicting the least recently used entries to stay within budget."""
        size = sum(h.numel() * h.element_size() for h in hidden)
        if size > self.max_bytes or key in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self.bytes -= sum(h.numel() * h.element_size() for h in old)
            self.evictions += 1
            if self.evictions == 1:
                logger.info("upstream feature cache full (%.0f MB): evicting least recently used batches; "
                            "raise %s to keep every batch", self.max_bytes / 2**20, CACHE_ENV)
        self._entries[key] = [h.detach().clone() for h in hidden]
        self.bytes += size


def model_fingerprint(model: torch.nn.Module, *context: str) -> str:
    """Hex digest of every parameter and buffer of ``model`` (names, dtypes, shapes, bytes) and ``context``."""
    h = hashlib.blake2b(digest_size=16)
    for part in context:
        h.update(f"{part};".encode())
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)};".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class DiskFeatureCache:
    """Hidden states of batches as files ``ROOT/<key>.pt``, computed once by whichever process asks first.

    Args:
        root: folder of one model's entries (created).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def _load(self, path: Path) -> list[torch.Tensor] | None:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as e:  # an unreadable entry is recomputed and replaced
            logger.warning("%s: unreadable cached features (%s); computing them again", path, e)
            return None

    def get_or_compute(self, key: bytes, compute: Callable[[], list[torch.Tensor]]) -> list[torch.Tensor]:
        """The stored tensors of ``key`` (on the CPU), or ``compute()``'s, stored first (under a lock)."""
        from score_upstream.atomic import atomic_save

        path = self.root / f"{key.hex()}.pt"
        hidden = self._load(path)
        if hidden is None:
            with open(path.with_suffix(".lock"), "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
                hidden = self._load(path)  # written by another process while this one waited
                if hidden is None:
                    hidden = compute()
                    # no fsync: an entry lost to a crash is recomputed, so durability would only cost time
                    atomic_save([h.detach().cpu() for h in hidden], path, durable=False)
                    self.misses += 1
                    return hidden
        self.hits += 1
        return hidden


class UpstreamExpert(UpstreamBase):
    """HuBERT or WavLM hidden states for s3prl's runner and ``S3PRLUpstream``.

    Args:
        ckpt: checkpoint path (s3prl converted ``.pt``, fairseq ``.pt``, WavLM ``.pt`` or transformers directory).
        family: ``"hubert"`` or ``"wavlm"``: the checkpoint must hold that family; None = either.
        cache_mb: frozen-feature cache size in MB (0 = off); None = ``$SCORE_UPSTREAM_CACHE_MB``.
        cache_dir: folder of the frozen-feature cache shared on disk ("" = off); None = ``$SCORE_UPSTREAM_CACHE_DIR``.
        **kwargs: what s3prl passes to every upstream (``model_config``, ``refresh``...); ignored.
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
        self.cache: FeatureCache | None = None
        self.disk_cache: DiskFeatureCache | None = None
        self._startup_check()
        mb = cache_megabytes_from_env() if cache_mb is None else float(cache_mb)
        self.cache = FeatureCache(int(mb * 2**20)) if mb > 0 else None
        if self.cache is not None:
            logger.info("%s: frozen-feature cache on, up to %.0f MB (used in eval mode without grad)", self.source, mb)
        cache_dir = os.environ.get(CACHE_DIR_ENV, "").strip() if cache_dir is None else os.fspath(cache_dir)
        if cache_dir:
            import s3prl
            import score_upstream

            fingerprint = model_fingerprint(self.model, self.family, f"normalize={self.normalize}",
                                            f"score_upstream {score_upstream.__version__}",
                                            f"s3prl {getattr(s3prl, '__version__', '?')}", f"torch {torch.__version__}")
            self.disk_cache = DiskFeatureCache(Path(cache_dir) / fingerprint)
            logger.info("%s: frozen-feature cache shared on disk in %s", self.source, self.disk_cache.root)

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
        expected = len(self.model.encoder.layers) + 1
        if len(hs) != expected or hs[-1].shape[1] != SAMPLE_RATE // DOWNSAMPLE_RATE - 1:
            raise RuntimeError(
                f"{self.source}: one second of noise gave {len(hs)} hidden states of {hs[-1].shape[1]} frames, "
                f"expected {expected} of {SAMPLE_RATE // DOWNSAMPLE_RATE - 1}"
            )

    def get_downsample_rates(self, key: str) -> int:
        return DOWNSAMPLE_RATE

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """Args: wavs: list of 1-D float waveforms at 16 kHz. Returns ``{"hidden_states": [(B, T, D)] * (L+1), ...}``."""
        frozen = not (self.training or self.model.training or torch.is_grad_enabled())
        key = batch_key(wavs) if frozen and (self.cache is not None or self.disk_cache is not None) else None
        hiddens = self.cache.get(key) if key is not None and self.cache is not None else None
        if hiddens is None:
            if key is not None and self.disk_cache is not None:
                stored = self.disk_cache.get_or_compute(key, lambda: self._hidden_states(wavs))
                hiddens = [h.to(wavs[0].device) for h in stored]
            else:
                hiddens = self._hidden_states(wavs)
            if key is not None and self.cache is not None:
                self.cache.put(key, hiddens)
        return {"hidden_states": hiddens, "last_hidden_state": hiddens[-1]}

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
