"""LASER (Meghanani & Hain, Interspeech 2024): soft-DTW alignment of two views plus a temporal regulariser.

What differs from SCORE, as the authors' code does it (Trikaldarshi/LASER, ``LASER_HuBERT/expert.py``):

- both views (original and speed + pitch perturbed, SCORE's perturbation) go through the same trainable
  model (their collate function makes a batch of the two); there is no frozen copy;
- the soft-DTW divergence is not divided by N + M (their ``SoftDTW(normalize=True)`` means "divergence");
- a contrastive inverse-difference-moment (IDM) loss on each sequence's self-distance matrix keeps
  neighbouring frames close and distant frames apart, so that aligning the views cannot collapse the
  sequence (``LASER_finetuning/laser.py``, ``IDMContrastiveLoss``); loss = D(x, y) + w (IDM(x) + IDM(y)).

For a sequence of ``n`` frames with Euclidean self-distances ``d_ij`` and ``g_ij = (i - j)^2 + 1``::

    IDM = 1/n^2 sum_ij [ |i - j| >  sigma ] g_ij max(0, margin - d_ij)
                    + [ |i - j| <= sigma ] d_ij / g_ij

HuBERT values (the LASER authors' README): sigma 0, margin 1.1, weight 0.4, gamma 0.1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from score_upstream.training.methods import Method


def self_distances(x: Tensor) -> Tensor:
    """Euclidean distances between the frames of each sequence: (B, N, D) -> (B, N, N).

    The diagonal is exactly 0 and the gradient at a zero distance is 0 (the subgradient ``torch.cdist``
    also takes), so identical frames never give NaN.
    """
    sq_norm = (x * x).sum(-1)
    sq = sq_norm[:, :, None] + sq_norm[:, None, :] - 2.0 * x @ x.transpose(1, 2)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    sq = sq.masked_fill(eye, 0.0).clamp_min(0.0)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def idm_regulariser(x: Tensor, lengths: Tensor | None = None, sigma: int = 0, margin: float = 1.1) -> Tensor:
    """LASER's contrastive IDM loss of each sequence (see the module docstring).

    Args:
        x: (B, N, D) frames (LASER: L2-normalised head outputs).
        lengths: (B,) valid frames per sequence (default N); padding never enters the result.
        sigma: frames with ``|i - j| <= sigma`` are neighbours (pulled together, weight 1 / g_ij).
        margin: other frame pairs are pushed to at least this distance (weight g_ij).

    Returns:
        (B,) losses, each divided by its own ``n^2``.
    """
    B, N, _ = x.shape
    if lengths is None:
        lengths = torch.full((B,), N, dtype=torch.long)
    lengths = lengths.to(x.device)
    d = self_distances(x)
    idx = torch.arange(N, device=x.device)
    gap = (idx[:, None] - idx[None, :]).abs()
    g = (gap * gap + 1).to(x.dtype)
    far = gap > sigma
    term = torch.where(far, g * torch.relu(margin - d), d / g)
    valid = idx[None, :] < lengths[:, None]
    mask = valid[:, :, None] & valid[:, None, :]
    return (term * mask).sum((1, 2)) / (lengths.to(x.dtype) ** 2)


class Laser(Method):
    name = "laser"
    title = "LASER soft-DTW alignment with temporal (IDM) regularisation"
    trainable_views = ("student", "target")

    def build_model(self, bundle, seed: int) -> torch.nn.Module:
        from score_upstream.training.model import ScoreModel

        return ScoreModel(bundle, self.cfg.model, seed=seed, with_target=False)

    def pair_losses(self, model, mb, device, autocast, sdtw) -> Tensor:
        lo = self.cfg.loss
        views = []
        with autocast():
            for wav, lengths in ((mb.student, mb.student_lengths), (mb.target, mb.target_lengths)):
                x, frames = model.encode(model.student, wav.to(device, non_blocking=True), lengths)
                views.append((model.project(x).float(), frames))
        (x, xl), (y, yl) = views
        loss = sdtw(x, y, xl, yl, gamma=lo.gamma, normalize=lo.normalize)
        if lo.idm_weight > 0:
            reg = idm_regulariser(x, xl, lo.idm_sigma, lo.idm_margin) + idm_regulariser(y, yl, lo.idm_sigma, lo.idm_margin)
            loss = loss + lo.idm_weight * reg.to(loss.dtype)
        return loss
