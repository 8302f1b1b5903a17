"""Training methods: what differs between SCORE, LASER and SPIN (views, head, loss); the trainer is shared.

A method is chosen with the config key ``method`` (``score`` default, ``laser``, ``spin``). Each module
holds one method, written from its paper and its authors' code:

- :mod:`.score`: the student sees one view, a frozen copy of the initial model the other; soft-DTW
  divergence / (N + M) (Meghanani & Hain, ICASSP 2024).
- :mod:`.laser`: both views through the same trainable model; soft-DTW divergence without the length
  normalisation plus a contrastive inverse-difference-moment (IDM) regulariser on each sequence's
  self-distance matrix (Meghanani & Hain, Interspeech 2024).
- :mod:`.spin`: original and speaker-perturbed views through the trainable model; a codebook of unit
  vectors and a swapped-prediction loss with Sinkhorn targets (Chang, Liu & Glass, Interspeech 2023).

The trainer (:mod:`score_upstream.training.train`) asks its method for the perturbation, the model
and, per micro-batch of (student view, target view) pairs, one loss value per pair; the update is the
mean over the update's pairs. Speech is counted two ways, over the updates applied (an update skipped for
a non-finite loss does not count) and over all processes:

- input speech (:data:`INPUT_SPEECH`): the original, unperturbed audio of the utterances drawn for each
  update, each counted once per draw. This is how the SCORE paper compares itself with SPIN ("1/3 of the
  processed speech": 3,600 updates x 8 utterances x 12.7 s ~ 101 h against SPIN's 5,000 x 256 s ~ 356 h).
  Per update it is ``audio_seconds`` of the step records.
- view speech (:meth:`Method.view_speech`): the lengths of the views that went through the trainable
  model: SCORE the student's view of each pair (original or perturbed, 50/50), LASER and SPIN both views
  (SPIN ~711 h against SCORE's ~101 h). Checkpoints written before input speech was counted call it
  "processed speech".

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

INPUT_SPEECH = ("original (unperturbed) audio of the utterances drawn for each update, each counted once per draw "
                "(the SCORE paper's count: updates x utterances per update x mean length)")


class Method:
    """Base of the methods: SCORE's views and processed-speech count; subclasses override what differs.

    Args:
        cfg: the resolved training config (``cfg.method`` names this method).
    """

    name = ""
    title = ""  # one line for checkpoints and logs
    # views of a pair that go through the trainable model (view speech)
    trainable_views: tuple[str, ...] = ("student",)
    # each pair's loss depends on that pair alone, so a micro-batch may be split anywhere (SPIN: False, its
    # Sinkhorn targets balance the codewords over all frames of the batch)
    pairs_independent = True

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

    def view_speech(self) -> str:
        """One line: which audio the view-speech count holds."""
        return "audio of the views through the trainable model: " + " + ".join(self.trainable_views)

    def perturbed_length_ratio(self) -> float:
        """Expected length of the perturbed view over the original's: SCORE's speed factor ``f`` makes a view
        ``1 / f`` as long (pitch shifting keeps the duration)."""
        speeds = self.cfg.perturb.speeds
        return sum(1.0 / f for f in speeds) / len(speeds)

    def expected_view_ratio(self) -> float:
        """Expected view seconds through the trainable model per input second: the views in
        ``trainable_views``, with the student's view perturbed half of the time."""
        r = self.perturbed_length_ratio()
        views = {"student": (1.0 + r) / 2, "target": (1.0 + r) / 2}  # the pair order is drawn 50/50
        return sum(views[v] for v in self.trainable_views)

    def processed_seconds(self, mb) -> float:
        """Audio seconds of ``mb``'s views that go through the trainable model (view speech)."""
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
