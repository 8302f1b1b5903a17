"""Frame labels for HuBERT pre-training: features at 50 Hz, k-means, one cluster id per frame.

HuBERT (Hsu et al., 2021, §III-B/IV-B) makes its targets in iterations: iteration 1 clusters MFCC
features (13 coefficients + deltas + delta-deltas, 39 dims, no normalisation), each later iteration
clusters an intermediate transformer layer of the previous iteration's model. Clustering is
scikit-learn's ``MiniBatchKMeans`` with k-means++ initialisation, as in HuBERT's own recipe.

Frames line up with the model's by construction: Kaldi MFCC with a 25 ms window and a 20 ms shift
(``snip_edges``) yields ``floor((T - 400) / 320) + 1`` frames, exactly what HuBERT's CNN front-end
(receptive field 400 samples, hop 320) yields.

Example::

    feats = [mfcc_features(wav) for wav in waves]             # (frames, 39) each
    km = fit_kmeans(feats, clusters=100, seed=0)
    labels = [assign(km, f) for f in feats]                     # (frames,) int64 each
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import numpy as np
import torch

logger = logging.getLogger(__name__)

HOP = 320
WINDOW = 400


def num_frames(num_samples: int) -> int:
    """Frames of a ``num_samples`` waveform at 50 Hz (HuBERT's CNN and the MFCC below agree)."""
    return max(0, (num_samples - WINDOW) // HOP + 1)


def mfcc_features(wav: torch.Tensor, sample_rate: int = 16000) -> torch.Tensor:
    """HuBERT iteration-1 features: Kaldi MFCC (13, no energy), deltas and delta-deltas.

    Args:
        wav: (T,) float waveform in [-1, 1].
    Returns:
        (num_frames(T), 39) float32.
    """
    import torchaudio

    if wav.numel() < WINDOW:
        return torch.zeros(0, 39)
    mfcc = torchaudio.compliance.kaldi.mfcc(wav[None].float(), sample_frequency=sample_rate, use_energy=False,
                                            frame_length=WINDOW * 1000 / sample_rate,
                                            frame_shift=HOP * 1000 / sample_rate, dither=0.0)
    m = mfcc.T[None]  # (1, 13, frames)
    d = torchaudio.functional.compute_deltas(m)
    dd = torchaudio.functional.compute_deltas(d)
    return torch.cat([m, d, dd], dim=1)[0].T.contiguous()


def hubert_layer_features(bundle, layer: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``wav -> (frames, D)`` function: the output of transformer layer ``layer`` (1-based) of a HuBERT.

    The model runs in eval mode without masking, one utterance at a time (exact batch-1 features).
    """
    model = bundle.model.eval()
    n = len(model.encoder.layers)
    if not 1 <= layer <= n:
        raise ValueError(f"labels.layer={layer}: the model has transformer layers 1..{n}")

    @torch.no_grad()
    def features(wav: torch.Tensor) -> torch.Tensor:
        if bundle.normalize:
            wav = torch.nn.functional.layer_norm(wav, wav.shape)
        x, _ = model.extract_features(wav[None].float(), padding_mask=None, mask=False, output_layer=layer)
        return x[0]

    return features


def sample_frames(feats: list[torch.Tensor], max_frames: int, seed: int) -> np.ndarray:
    """At most ``max_frames`` rows drawn without replacement from all utterances' frames (float32)."""
    allf = torch.cat([f for f in feats if f.shape[0] > 0])
    if allf.shape[0] > max_frames:
        g = torch.Generator().manual_seed(seed)
        allf = allf[torch.randperm(allf.shape[0], generator=g)[:max_frames]]
    return allf.numpy().astype(np.float32)


def fit_kmeans(feats: list[torch.Tensor], clusters: int, seed: int, max_frames: int = 300_000,
               batch_size: int = 10_000, n_init: int = 5, max_iter: int = 100):
    """MiniBatchKMeans on a sample of frames (HuBERT's settings: k-means++, no reassignment, tol 0).

    Returns:
        the fitted ``sklearn.cluster.MiniBatchKMeans``.
    Raises:
        ValueError: fewer frames than clusters.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = sample_frames(feats, max_frames, seed)
    if x.shape[0] < clusters:
        raise ValueError(f"{x.shape[0]} frames for {clusters} clusters; lower labels.clusters or add audio")
    km = MiniBatchKMeans(n_clusters=clusters, init="k-means++", max_iter=max_iter, batch_size=batch_size, tol=0.0,
                         max_no_improvement=100, n_init=n_init, reassignment_ratio=0.0, random_state=seed,
                         compute_labels=False)
    km.fit(x)
    inertia = -km.score(x) / x.shape[0]
    logger.info("k-means: %d clusters on %d frames x %d dims, mean squared distance %.3f", clusters, x.shape[0],
                x.shape[1], inertia)
    return km


def assign(km, feats: torch.Tensor) -> torch.Tensor:
    """Nearest centroid of each frame: (frames, D) -> (frames,) int64."""
    if feats.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.from_numpy(km.predict(feats.numpy().astype(np.float32)).astype(np.int64))


def cluster_usage(labels: Iterable[torch.Tensor], clusters: int) -> dict[str, float]:
    """How evenly the clusters are used: share of the most frequent one and perplexity (max = clusters)."""
    counts = torch.zeros(clusters)
    for lab in labels:
        counts += torch.bincount(lab, minlength=clusters).float()
    p = counts / counts.sum().clamp_min(1)
    nz = p[p > 0]
    return {"max_share": float(p.max()), "perplexity": float(torch.exp(-(nz * nz.log()).sum())),
            "unused": int((counts == 0).sum())}
