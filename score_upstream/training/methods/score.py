"""SCORE (Meghanani & Hain, ICASSP 2024): student vs its frozen initial copy, soft-DTW divergence / (N + M).

The student sees one view of each utterance and the frozen target the other (the order drawn 50/50 by
the perturbation); both go through the shared head and are L2-normalised per frame
(:class:`~score_upstream.training.model.ScoreModel`). Only the student's view passes through the
trainable model.
"""

from __future__ import annotations

import torch

from score_upstream.training.methods import Method


class Score(Method):
    name = "score"
    title = "SCORE soft-DTW correspondence fine-tuning"
    trainable_views = ("student",)

    def build_model(self, bundle, seed: int) -> torch.nn.Module:
        from score_upstream.training.model import ScoreModel

        return ScoreModel(bundle, self.cfg.model, seed=seed)

    def pair_losses(self, model, mb, device, autocast, sdtw) -> torch.Tensor:
        with autocast():
            s, s_len, t, t_len = model(mb.student.to(device, non_blocking=True), mb.student_lengths,
                                       mb.target.to(device, non_blocking=True), mb.target_lengths)
        return sdtw(s.float(), t.float(), s_len, t_len, gamma=self.cfg.loss.gamma, normalize=self.cfg.loss.normalize)
