"""Training methods: what differs between SCORE, LASER and SPIN (views, head, loss); the trainer is shared.

A method is chosen with the config key ``method`` (``score`` default, ``laser``, ``spin``). Each module
holds one method, written from its paper and its authors' code (SPEC §1):

- :mod:`.score`: the student sees one view, a frozen copy of the initial model the other; soft-DTW
  divergence / (N + M) (Meghanani & Hain, ICASSP 2024).
- :mod:`.laser`: both views through the same trainable model; soft-DTW divergence without the length
  normalisation plus a contrastive inverse-difference-moment (IDM) regulariser on each sequence's
  self-distance matrix (Meghanani & Hain, Interspeech 2024).
- :mod:`.spin`: original and speaker-perturbed views through the trainable model; a codebook of unit
  vectors and a swapped-prediction loss with Sinkhorn targets (Chang, Liu & Glass, Interspeech 2023).

The trainer (:mod:`score_upstream.training.train`) asks its method for the perturbation, the model
and, per micro-batch of (student view, target view) pairs, one loss value per pair; the update is the
mean over the update's pairs. "Processed speech" is the sum, over the updates applied (an update skipped
for a non-finite loss does not count) and over all processes, of the lengths in seconds of the views that
went through the trainable model: SCORE the student's view of each pair (original or perturbed, 50/50),
LASER and SPIN both views. The originals' own duration is ``audio_seconds`` of the step records.

Example::

    method = get_method(cfg)                       # Score, Laser or Spin, holding cfg
    model = method.build_model(bundle, seed=0)     # .trainable_parameters(), .trainable_names
    losses = method.pair_losses(model, micro_batch, device, autocast, sdtw)   # (B,)
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from score_upstream.training.config import TrainConfig


class Method:
    """Base of the methods: SCORE's views and processed-speech count; subclasses override what differs.

    Args:
        cfg: the resolved training config (``cfg.method`` names this method).
    """

    name = ""
    title = ""  # one line for checkpoints and logs
    # views of a pair that go through the trainable model (for processed speech)
    trainable_views: tuple[str, ...] = ("student",)

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def build_perturbation(self) -> Callable:
        """``(wav (T,), generator) -> view``; SCORE's and LASER's speed + pitch perturbation by default."""
        from score_upstream.augment.perturb import ScorePerturbation

        p = self.cfg.perturb
        return ScorePerturbation(speed_factors=tuple(p.speeds), semitones=tuple(p.semitones),
                                 pitch_method=p.pitch_method, sr=self.cfg.data.sample_rate)

    def build_model(self, bundle, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def pair_losses(self, model, mb, device: torch.device, autocast: Callable[[], contextlib.AbstractContextManager],
                    sdtw: Callable) -> torch.Tensor:
        """(B,) loss of each pair of micro-batch ``mb`` (a ``data.MicroBatch``), float32, differentiable.

        ``autocast()`` opens the run's mixed-precision context (a no-op in fp32); ``sdtw`` is the soft-DTW
        divergence function (``sdtw.divergence.soft_dtw_divergence`` unless a test injects another).
        """
        raise NotImplementedError

    def processed_seconds(self, mb) -> float:
        """Audio seconds of ``mb``'s views that go through the trainable model."""
        sr = self.cfg.data.sample_rate
        total = 0
        for view in self.trainable_views:
            total += int(getattr(mb, f"{view}_lengths").sum())
        return total / sr

    def after_step(self, model) -> None:
        """Called after every optimiser step (SPIN renormalises its codebook)."""


def get_method(cfg: TrainConfig) -> Method:
    """The :class:`Method` that ``cfg.method`` names, holding ``cfg``."""
    from score_upstream.training.methods.laser import Laser
    from score_upstream.training.methods.score import Score
    from score_upstream.training.methods.spin import Spin

    methods = {m.name: m for m in (Score, Laser, Spin)}
    if cfg.method not in methods:  # the config's type check refuses it earlier; kept for direct callers
        raise ValueError(f"method {cfg.method!r} is unknown; expected one of {sorted(methods)}")
    return methods[cfg.method](cfg)
