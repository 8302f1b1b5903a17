"""Frame labels for HuBERT pre-training: features, k-means, one cluster id per model frame.

HuBERT (Hsu et al., 2021, §III-B/IV-B) makes its targets in iterations: iteration 1 clusters MFCC
features (13 coefficients + deltas + delta-deltas, 39 dims, no normalisation), each later iteration
clusters an intermediate transformer layer of the previous iteration's model. Clustering is
scikit-learn's ``MiniBatchKMeans`` with k-means++ initialisation, as in HuBERT's own recipe
(fairseq ``examples/hubert/simple_kmeans/learn_kmeans.py``: n_init 20 on a 10 % sample of utterances).

Frames line up with the model's by construction. Kaldi MFCC (``snip_edges``) with a 25 ms window and a
shift of ``hop`` samples yields ``floor((T - 400) / hop) + 1`` frames. fairseq's iteration 1 uses a 10 ms
shift (100 Hz, ``label_rate: 100``); its ``HubertModel.forward_targets`` gives model frame ``i`` (hop 320,
50 Hz) the label ``i * label_rate / 50 = 2i``, whose window starts at the same sample, and keeps only the
first ``floor(labels / 2)`` model frames of an utterance (:func:`usable_frames`). A 20 ms shift (50 Hz)
yields exactly the CNN's ``floor((T - 400) / 320) + 1`` frames, one label each (the labels of the model shipped before).

Example::

    feats = [mfcc_features(wav, rate=100) for wav in waves]  # (label frames, 39) each
    km = fit_kmeans(feats, clusters=100, seed=0)
    labels = [model_rate(assign(km, f), 100) for f in feats]  # (model frames,) int64 each
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import numpy as np
import torch

logger = logging.getLogger(__name__)

HOP = 320
WINDOW = 400
MODEL_RATE = 50  # frames per second of HuBERT's CNN at 16 kHz


def num_frames(num_samples: int) -> int:
    """Frames of a ``num_samples`` waveform at 50 Hz (HuBERT's CNN and the 50 Hz MFCC below agree)."""
    return max(0, (num_samples - WINDOW) // HOP + 1)


def stride(rate: int) -> int:
    """Label frames per model frame: 1 at 50 Hz, 2 at 100 Hz (fairseq's ``feat2tar_ratio``)."""
    if rate % MODEL_RATE:
        raise ValueError(f"label rate {rate} Hz: expected a multiple of the model's {MODEL_RATE} Hz (50 or 100)")
    return rate // MODEL_RATE


def num_label_frames(num_samples: int, rate: int = MODEL_RATE) -> int:
    """MFCC frames of a ``num_samples`` waveform at ``rate`` frames per second (16 kHz)."""
    return max(0, (num_samples - WINDOW) // (HOP // stride(rate)) + 1)


def usable_frames(num_samples: int, rate: int = MODEL_RATE) -> int:
    """Model frames of an utterance that have a label: fairseq's ``forward_targets`` keeps
    ``feat_tsz`` frames only while ``feat2tar_ratio * feat_tsz <= label frames``, so at 100 Hz an odd
    label count loses the last model frame; at 50 Hz every CNN frame has its label."""
    return min(num_frames(num_samples), num_label_frames(num_samples, rate) // stride(rate))


def model_rate(units: torch.Tensor, rate: int = MODEL_RATE) -> torch.Tensor:
    """Label frames -> one label per model frame: label ``i * stride`` for model frame ``i``
    (fairseq ``target_inds = arange(feat_tsz) * label_rate / feat_rate``); as long as the CNN's output."""
    return units[::stride(rate)]


def mfcc_features(wav: torch.Tensor, sample_rate: int = 16000, rate: int = MODEL_RATE) -> torch.Tensor:
    """HuBERT iteration-1 features: Kaldi MFCC (13, no energy), deltas and delta-deltas.

    Args:
        wav: (T,) float waveform in [-1, 1].
        rate: frames per second: 100 (fairseq's 10 ms shift) or 50 (20 ms, one frame per model frame).
    Returns:
        (num_label_frames(T, rate), 39) float32.
    """
    import torchaudio

    if wav.numel() < WINDOW:
        return torch.zeros(0, 39)
    mfcc = torchaudio.compliance.kaldi.mfcc(wav[None].float(), sample_frequency=sample_rate, use_energy=False,
                                            frame_length=WINDOW * 1000 / sample_rate,
                                            frame_shift=HOP // stride(rate) * 1000 / sample_rate, dither=0.0)
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


def sample_frames(feats: list[torch.Tensor], max_frames: int | None, seed: int, fraction: float = 1.0) -> np.ndarray:
    """The frames k-means is fitted on (float32): those of ``ceil(fraction * utterances)`` utterances drawn
    without replacement (fairseq's ``--percent``; 1.0 draws nothing), then at most ``max_frames`` of them
    drawn without replacement (None: all)."""
    if fraction < 1.0:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(feats), generator=g)[:math.ceil(fraction * len(feats))]
        feats = [feats[i] for i in sorted(keep.tolist())]
    allf = torch.cat([f for f in feats if f.shape[0] > 0])
    if max_frames is not None and allf.shape[0] > max_frames:
        g = torch.Generator().manual_seed(seed)
        allf = allf[torch.randperm(allf.shape[0], generator=g)[:max_frames]]
    return allf.numpy().astype(np.float32)


def fit_kmeans(feats: list[torch.Tensor], clusters: int, seed: int, max_frames: int | None = None,
               batch_size: int = 10_000, n_init: int = 20, max_iter: int = 100, fraction: float = 1.0):
    """MiniBatchKMeans on a sample of frames (:func:`sample_frames`; fairseq's settings: k-means++, n_init 20,
    batch 10,000, 100 iterations, no reassignment, tol 0).

    Returns:
        the fitted ``sklearn.cluster.MiniBatchKMeans``.
    Raises:
        ValueError: fewer frames than clusters.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = sample_frames(feats, max_frames, seed, fraction)
    if x.shape[0] < clusters:
        raise ValueError(f"{x.shape[0]} frames sampled for {clusters} clusters; lower labels.clusters, raise "
                         "labels.kmeans_fraction or add audio")
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
