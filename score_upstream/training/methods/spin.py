"""SPIN (Chang, Liu & Glass, Interspeech 2023): speaker-invariant clustering by swapped prediction.

As the authors' code does it (vectominist/spin: ``src/model/spin.py``, ``src/nn/swav_vq_dis.py``,
``config/spin.yaml``):

- views: the original utterance and a speaker-perturbed copy of the same duration
  (:mod:`score_upstream.augment.speaker`), both through the trainable model (layers 11-12; the frozen
  layers below them build no autograd graph, since neither their inputs nor their weights need one);
- head Linear(D -> 256), frames L2-normalised; a codebook of K vectors (rows renormalised to unit length
  after every update), logits = cosine similarity of each frame with each codeword;
- targets: Sinkhorn-Knopp on ``exp(logits / eps)`` over all frames of the batch (eps 0.02, 3 iterations),
  without gradient; loss = swapped prediction, each view's softmax(logits / temperature) predicting the
  other view's targets, averaged over frames and the two directions.

Batching: SPIN packs length-sorted utterances (cropped to 17 s, those under 2.5 s dropped) up to 256 s of
audio per update; ``data.pack_seconds``, ``data.min_seconds`` and ``data.crop_seconds`` do the same
(:mod:`score_upstream.training.packing`; ``recipes/spin/hubert_base.yaml`` sets SPIN's values), so the
input speech over 5,000 updates is ~356 h (``score-train recipes/spin/hubert_base.yaml --data ROOT --plan``
prints it for a corpus). Without ``data.pack_seconds`` an update holds ``data.utterances_per_update``
whole utterances (the small and tiny recipes, for corpora of few-second utterances).

One Sinkhorn batch is one micro-batch (SPIN: one batch per GPU); the recipe's ``data.batch_seconds``
holds a whole update. Under torchrun each process balances its own frames, where SPIN's code all-reduces
the Sinkhorn sums over GPUs (its paper trains on one GPU). Frames of the two views are paired by position; a view that came out one frame
shorter is matched on the common frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from score_upstream.training.methods import Method
from score_upstream.training.model import ScoreModel


@torch.no_grad()
def sinkhorn(logits: Tensor, eps: float = 0.02, iters: int = 3) -> Tensor:
    """Soft assignments of ``B`` frames to ``K`` codewords with equal codeword mass (SwAV's Sinkhorn-Knopp).

    ``Q = exp(logits / eps)`` normalised to sum 1, then ``iters`` times: each codeword's column scaled to
    total 1/K, then each frame's row to 1/B; returned times B, so every row sums to 1.

    Args:
        logits: (B, K) scores (SPIN: cosine similarities, before any temperature).
    Returns:
        (B, K) targets, float of ``logits``'s dtype, no gradient.
    """
    B, K = logits.shape
    # exp(l / eps) overflows for |l| / eps > ~88 in float32: subtracting the maximum changes nothing after
    # the first normalisation
    q = ((logits - logits.max()) / eps).exp()
    q = q / q.sum()
    for _ in range(iters):
        q = q / (q.sum(dim=0, keepdim=True) * K)
        q = q / (q.sum(dim=1, keepdim=True) * B)
    return q * B


def swapped_prediction(logits_1: Tensor, logits_2: Tensor, temperature: float = 0.1, eps: float = 0.02,
                       iters: int = 3) -> Tensor:
    """SPIN's loss: ``-1/2 [mean_b sum_k q1 log p2 + mean_b sum_k q2 log p1]``.

    Args:
        logits_1, logits_2: (B, K) cosine similarities of the frames of view 1 and 2 with the codewords
            (frame b of one view pairs with frame b of the other).
    Returns:
        scalar loss; ``q_i = sinkhorn(logits_i)`` carries no gradient, ``p_i = softmax(logits_i / temperature)``.
    """
    q1, q2 = sinkhorn(logits_1.detach(), eps, iters), sinkhorn(logits_2.detach(), eps, iters)
    log_p1 = F.log_softmax(logits_1 / temperature, dim=1)
    log_p2 = F.log_softmax(logits_2 / temperature, dim=1)
    return -0.5 * ((q1 * log_p2).sum(1).mean() + (q2 * log_p1).sum(1).mean())


class SpinModel(ScoreModel):
    """The student and head of :class:`ScoreModel` (no frozen copy) plus a codebook of unit vectors.

    Args:
        codebook_size: K codewords of the head's size, initialised as ``nn.Linear`` does (from a generator
            seeded by ``seed``) and normalised.
    """

    def __init__(self, bundle, cfg, codebook_size: int, seed: int = 0):
        super().__init__(bundle, cfg, seed=seed, with_target=False)
        self.codebook = nn.Linear(cfg.head_dim, codebook_size, bias=False)
        g = torch.Generator().manual_seed(int(seed) + 1)
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.codebook.weight, a=math.sqrt(5), generator=g)
        self.normalize_codebook()

    @torch.no_grad()
    def normalize_codebook(self) -> None:
        self.codebook.weight.copy_(F.normalize(self.codebook.weight, dim=1))

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        out = super().trainable_parameters()
        out["codebook.weight"] = self.codebook.weight
        return out


class Spin(Method):
    name = "spin"
    title = "SPIN speaker-invariant clustering (swapped prediction)"
    trainable_views = ("student", "target")
    pairs_independent = False

    def build_perturbation(self):
        from score_upstream.augment.speaker import SpeakerPerturbation

        p = self.cfg.perturb
        return SpeakerPerturbation(formant_ratio_max=p.formant_ratio_max, f0_ratio_max=p.f0_ratio_max,
                                   range_ratio_max=p.f0_range_ratio_max, pitch_floor=p.pitch_floor,
                                   pitch_ceiling=p.pitch_ceiling, eq_gain_db=p.eq_gain_db, sr=self.cfg.data.sample_rate)

    def perturbed_length_ratio(self) -> float:
        """The speaker perturbation keeps the duration."""
        return 1.0

    def build_model(self, bundle, seed: int) -> nn.Module:
        return SpinModel(bundle, self.cfg.model, self.cfg.loss.codebook_size, seed=seed)

    def pair_losses(self, model, mb, device, autocast, sdtw) -> Tensor:
        lo = self.cfg.loss
        # both views in one batch, as SPIN's collate function: one forward
        wav = torch.zeros(2 * len(mb.indices), max(mb.student.shape[1], mb.target.shape[1]))
        wav[0::2, : mb.student.shape[1]] = mb.student
        wav[1::2, : mb.target.shape[1]] = mb.target
        lengths = torch.stack((mb.student_lengths, mb.target_lengths), 1).reshape(-1)
        with autocast():
            x, frames = model.encode(model.student, wav.to(device, non_blocking=True), lengths)
            z = model.project(x)
        common = torch.minimum(frames[0::2], frames[1::2])
        keep = torch.arange(z.shape[1], device=z.device)[None, :] < common[:, None]
        z1, z2 = z[0::2][keep].float(), z[1::2][keep].float()
        codebook = model.codebook.weight.float()
        loss = swapped_prediction(z1 @ codebook.T, z2 @ codebook.T, lo.temperature, lo.sinkhorn_eps, lo.sinkhorn_iters)
        # the trainer averages pair losses over the update: every pair carries the micro-batch's loss
        return loss.expand(len(mb.indices))

    def after_step(self, model) -> None:
        model.normalize_codebook()
