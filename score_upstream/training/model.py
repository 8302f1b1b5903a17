"""The SCORE model: a partly trainable HuBERT or WavLM student, its frozen initial copy (target) and a shared head.

Paper setting (the authors' code): the student trains transformer layers 11-12 (0-based 10, 11), the LayerNorm on
the 512-d CNN features (``layer_norm``), the encoder LayerNorm before layer 1 (``encoder.layer_norm``) and
the head Linear(D -> 256); everything else is frozen, the CNN runs without gradient, layerdrop is 0 and
the student is in train mode. The target is a frozen copy of the initial model, in train mode by default
as in the authors' code (``model.target_dropout``). Both sequences go through the same head and each
frame is L2-normalised; features are the last layer's output at 50 Hz (hop 320 samples).

WavLM (the authors' WavLM recipe): the same trainable set by the same names, and a two-layer head
(``model.head_hidden``). Its gated relative position bias needs nothing here: ``encoder`` is s3prl's, whose
layer 0 computes the bias for the padded length and passes it on to every later layer, the padding mask
applied in each layer's attention.

Example::

    bundle = load_hubert("hubert_base_ls960.pt")
    model = ScoreModel(bundle, ModelConfig(), seed=0)
    s, s_len, t, t_len = model(student_wav, student_len, target_wav, target_len)   # (B, N, 256) ...
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from score_upstream.training.config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)


def conv_layout(hubert: nn.Module) -> list[tuple[int, int]]:
    """``(kernel, stride)`` of each CNN layer, read from the model's ``Conv1d`` modules."""
    out = []
    for block in hubert.feature_extractor.conv_layers:
        conv = next(m for m in block.modules() if isinstance(m, nn.Conv1d))
        out.append((conv.kernel_size[0], conv.stride[0]))
    return out


def frame_lengths(num_samples: torch.Tensor, layout: list[tuple[int, int]]) -> torch.Tensor:
    """Frames produced by the CNN for each waveform length: ``L <- floor((L - k) / s) + 1`` per layer.

    Args:
        num_samples: (B,) int64 waveform lengths.
    Returns:
        (B,) int64 frame counts (>= 0); for HuBERT Base about ``num_samples / 320``.
    """
    n = num_samples.clone()
    for k, s in layout:
        n = torch.div(n - k, s, rounding_mode="floor") + 1
    return n.clamp_min(0)


def min_input_samples(layout: list[tuple[int, int]]) -> int:
    """Fewest waveform samples that give the CNN one frame (400 for HuBERT Base): ``L <- (L - 1) s + k``."""
    n = 1
    for k, s in reversed(layout):
        n = (n - 1) * s + k
    return n


def select_trainable(hubert: nn.Module, prefixes: list[str]) -> list[str]:
    """Names of ``hubert``'s parameters starting with one of ``prefixes``; each prefix must match.

    Raises:
        ConfigError: a prefix matches no parameter (names the prefix and shows examples).
    """
    names = [n for n, _ in hubert.named_parameters()]
    chosen = []
    for p in prefixes:
        hit = [n for n in names if n.startswith(p)]
        if not hit:
            tops = sorted({".".join(n.split(".")[:3]) for n in names})[:8]
            raise ConfigError(f"config key 'model.trainable': prefix {p!r} matches no model parameter "
                              f"(names look like {', '.join(tops)}, ...)")
        chosen.extend(hit)
    return sorted(set(chosen))


def build_head(dim: int, out_dim: int, hidden: int = 0, seed: int = 0) -> nn.Module:
    """The shared projection head: ``Linear(dim, out_dim)``, or with ``hidden > 0``
    ``Linear(dim, hidden) -> ReLU -> Linear(hidden, out_dim)`` (the authors' WavLM head).

    Each Linear gets nn.Linear's own initialisation, drawn in order from one generator seeded with ``seed``.
    """
    head = nn.Linear(dim, out_dim) if hidden == 0 else nn.Sequential(
        nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for lin in [m for m in head.modules() if isinstance(m, nn.Linear)]:
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=g)
            bound = 1 / math.sqrt(lin.in_features)
            lin.bias.uniform_(-bound, bound, generator=g)
    return head


class ScoreModel(nn.Module):
    """Student + frozen target + shared head.

    Args:
        bundle: a ``HubertBundle`` or ``WavLMBundle`` (both hold s3prl's network with the same attribute
            layout); its model becomes the student (in place) and a rebuilt copy the target.
        cfg: :class:`ModelConfig` (trainable prefixes, head size, target dropout, CNN mode).
        seed: seeds the head's initialisation.
        with_target: build the frozen target (SCORE); False for methods whose views all go through the
            student (``training.methods``), which then use :meth:`encode` and :meth:`project` only.
    """

    def __init__(self, bundle, cfg: ModelConfig, seed: int = 0, with_target: bool = True):
        super().__init__()
        self.bundle = bundle
        self.cfg = cfg
        self.student = bundle.model
        for m in (self.student,):
            m.feature_grad_mult = 0.0
            m.encoder.layerdrop = 0.0
        # a plain attribute, not a submodule: keeps the target out of state_dict() and parameters()
        self.__dict__["target"] = self._frozen_copy() if with_target else None
        self.normalize_wav = bundle.normalize
        self.layout = conv_layout(self.student)
        self.head = build_head(self.student.encoder.embedding_dim, cfg.head_dim, cfg.head_hidden, seed)
        self.trainable_names = select_trainable(self.student, cfg.trainable)
        keep = set(self.trainable_names)
        for n, p in self.student.named_parameters():
            p.requires_grad_(n in keep)
        self.train()

    def _frozen_copy(self) -> nn.Module:
        # rebuilt rather than deep-copied: weight_norm on the positional conv refuses deepcopy
        with torch.random.fork_rng(devices=[]):  # building draws initial weights: keep the caller's RNG
            target = self.bundle.rebuild()
        target.load_state_dict(self.student.state_dict())
        target.feature_grad_mult = 0.0
        target.encoder.layerdrop = 0.0
        target.requires_grad_(False)
        return target

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        if self.target is not None:
            self.__dict__["target"] = self.target.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target is not None:
            self.target.train(mode and self.cfg.target_dropout)
        return self

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``{"student.<name>": p, ..., "head.weight": ..., "head.bias": ...}`` in a fixed order."""
        params = dict(self.student.named_parameters())
        out = {f"student.{n}": params[n] for n in self.trainable_names}
        out.update({f"head.{n}": p for n, p in self.head.named_parameters()})
        return out

    def encode(self, hubert: nn.Module, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer features of a padded batch.

        Args:
            wav: (B, T) float waveforms, zero-padded; lengths: (B,) int64.
        Returns:
            ``(x, frames)``: x (B, N, D) with rows past ``frames[b]`` meaningless; frames (B,) int64.
        """
        frames = frame_lengths(lengths.cpu(), self.layout).to(wav.device)
        wavs = [wav[b, : int(lengths[b])] for b in range(wav.shape[0])]
        if self.normalize_wav:
            wavs = [F.layer_norm(w, w.shape) for w in wavs]
        with torch.no_grad():  # feature_grad_mult 0: the CNN is frozen
            if self.cfg.cnn_per_utterance or wav.shape[0] == 1:
                # GroupNorm in the first conv layer of HuBERT Base spans the whole time axis, so padding
                # changes the features; one utterance at a time gives exactly the batch-1 features.
                parts = [hubert.feature_extractor(w[None]) for w in wavs]
                feats = parts[0].new_zeros(len(parts), parts[0].shape[1], int(frames.max()))
                for b, f in enumerate(parts):
                    feats[b, :, : f.shape[2]] = f[0]
            else:
                padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
                feats = hubert.feature_extractor(padded)
        x = hubert.layer_norm(feats.transpose(1, 2))
        if hubert.post_extract_proj is not None:
            x = hubert.post_extract_proj(x)
        x = hubert.dropout_input(x)
        pad_mask = torch.arange(x.shape[1], device=x.device)[None, :] >= frames[:, None]
        x, _ = hubert.encoder(x, padding_mask=pad_mask if bool(pad_mask.any()) else None)
        return x, frames

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Shared head then per-frame L2 normalisation: (B, N, D) -> (B, N, head_dim)."""
        return F.normalize(self.head(x), dim=-1)

    def forward(self, student_wav, student_lengths, target_wav, target_lengths):
        """Returns ``(s, s_frames, t, t_frames)``: s (B, N, H) and t (B, M, H), both projected by the head.

        The target's features are computed without gradient, but the shared head is applied to them with
        gradient, as in the authors' code (their connector sits outside ``no_grad``): the head learns from
        both branches, the target network from neither.
        """
        s, s_frames = self.encode(self.student, student_wav, student_lengths)
        with torch.no_grad():
            t, t_frames = self.encode(self.target, target_wav, target_lengths)
        return self.project(s), s_frames, self.project(t.detach()), t_frames
