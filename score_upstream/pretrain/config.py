"""Typed configuration of ``score-pretrain``: dataclass defaults, YAML recipes, ``key=value`` overrides.

Same rules as ``score-train`` (:mod:`score_upstream.training.config`): an unknown key or a wrong type is an
error naming the key, before any data or model is touched. Defaults are HuBERT's recipe where it scales
(Hsu et al., 2021; fairseq ``hubert_base_librispeech.yaml``, ``hubert_criterion.py``, ``simple_kmeans/``,
``config/pretrain/data/iter1.yaml``) and the settings that made a small model learn on a few hours of
speech where it does not (measured, recipes/README.md: the loss on unmasked frames, mask_prob 0.65,
feature_grad_mult 1.0).

Three keys keep the behaviour that made the model shipped before (``recipes/pretrain/small_iter*.yaml`` set them):
``loss.normalisation: masked_frames``, ``labels.mfcc_rate: 50`` and the k-means sample
``labels.kmeans_fraction: 1.0, labels.max_frames: 300000, labels.n_init: 5``. The defaults are fairseq's.

Example::

    cfg = load_pretrain_config("recipes/pretrain/small_iter1.yaml", ["optim.total_steps=100"])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from score_upstream.training.config import load_config, need


@dataclass
class PretrainModelConfig:
    """Which HuBERT to build."""

    arch: Literal["tiny", "small", "base"] = "small"  # tiny_model_cfg / small_model_cfg / base_model_cfg
    overrides: dict = field(default_factory=dict)  # HubertConfig fields over the arch's (e.g. encoder_layers)
    # a HuBERT (any format) whose weights start this iteration instead of a fresh initialisation; the
    # prediction head (final_proj, label embeddings) starts fresh, the new labels being other units.
    # "": from scratch (fairseq: every iteration)
    init: str = ""


@dataclass
class LabelConfig:
    """Targets: k-means of MFCC (iteration 1) or of a layer of the previous iteration's model."""

    features: Literal["mfcc", "hubert"] = "mfcc"
    model: str = ""  # features=hubert: the previous iteration's checkpoint (any HuBERT format)
    layer: int = 4  # features=hubert: transformer layer (1-based) whose output is clustered
    clusters: int = 100  # HuBERT Base: 100 (iteration 1), 500 (iteration 2)
    # features=mfcc: MFCC frames per second. 100: fairseq's iteration 1 (25 ms window, 10 ms shift,
    # label_rate 100; model frame i takes label 2i); 50: a 20 ms shift, one label per model frame (the model shipped before)
    mfcc_rate: Literal[50, 100] = 100
    # k-means is fitted on the frames of this fraction of the training utterances (fairseq learn_kmeans
    # --percent 0.1); 1.0: all of them. All frames are labelled.
    kmeans_fraction: float = 0.1
    max_frames: Optional[int] = None  # at most this many of those frames, drawn at random; null: all (fairseq)
    n_init: int = 20  # k-means restarts, the best is kept (fairseq: 20)


@dataclass
class PretrainDataConfig:
    """LibriSpeech-layout subsets, cropping and batching."""

    subsets: list[str] = field(default_factory=lambda: ["train-clean-100"])
    valid_subsets: list[str] = field(default_factory=lambda: ["dev-clean"])  # held-out accuracy; [] = none
    crop_seconds: float = 3.0  # longest crop; a batch is cropped to its shortest utterance (HuBERT: no padding)
    min_seconds: float = 1.0  # shorter utterances are left out (counted in the log)
    batch_crops: int = 8  # crops per update, all processes together
    sample_rate: int = 16000


@dataclass
class PretrainLossConfig:
    unmasked_weight: float = 0.5  # weight of the loss on unmasked frames (HuBERT Base: 0)
    features_penalty: float = 10.0  # weight of the L2 penalty on the CNN features (fairseq loss_weights)
    # sample_size: fairseq's criterion, (CE_m + w CE_u + penalty x sample_size) / sample_size with
    # sample_size = masked frames (+ unmasked frames when w > 0); masked_frames: (CE_m + w CE_u) / masked
    # frames + penalty (the model shipped before)
    normalisation: Literal["sample_size", "masked_frames"] = "sample_size"


@dataclass
class PretrainOptimConfig:
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 200  # linear from 0, then linear decay to 0 at total_steps (HuBERT: 8 %)
    total_steps: int = 2000
    grad_clip: float = 10.0
    max_nonfinite: int = 10


@dataclass
class PretrainConfig:
    """One pre-training iteration."""

    seed: int = 0
    model: PretrainModelConfig = field(default_factory=PretrainModelConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on a GPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 50
    valid_every: int = 500  # held-out masked accuracy every N updates (and at the end)
    save_every: int = 250
    keep_checkpoints: int = 2
    stop_at: int = 0  # end this run after this update (checkpoint kept); 0: never
    resume: Literal["false", "true", "auto"] = "false"
    progress: bool = True
    threads: Optional[int] = None  # torch CPU threads; None: torch's default

    def validate(self) -> None:
        o, d, lab = self.optim, self.data, self.labels
        need(o.lr > 0, "optim.lr", o.lr, "expected > 0")
        need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", o.betas, "expected two values in [0, 1)")
        need(o.total_steps > 0, "optim.total_steps", o.total_steps, "expected > 0")
        need(0 <= o.warmup_steps < o.total_steps, "optim.warmup_steps", o.warmup_steps, "expected 0 <= warmup < total_steps")
        need(o.grad_clip >= 0, "optim.grad_clip", o.grad_clip, "expected >= 0 (0 disables clipping)")
        need(d.batch_crops >= 1, "data.batch_crops", d.batch_crops, "expected >= 1")
        need(d.crop_seconds >= d.min_seconds > 0.025, "data.min_seconds", d.min_seconds,
             "expected 0.025 < min_seconds <= crop_seconds")
        need(len(d.subsets) > 0, "data.subsets", d.subsets, "expected at least one subset")
        need(lab.clusters >= 2, "labels.clusters", lab.clusters, "expected >= 2")
        need(lab.features == "mfcc" or bool(lab.model), "labels.model", lab.model,
             "expected the previous iteration's checkpoint when labels.features=hubert")
        need(lab.layer >= 1, "labels.layer", lab.layer, "expected a 1-based layer")
        need(0 < lab.kmeans_fraction <= 1, "labels.kmeans_fraction", lab.kmeans_fraction, "expected a fraction in (0, 1]")
        need(lab.max_frames is None or lab.max_frames >= lab.clusters, "labels.max_frames", lab.max_frames,
             "expected null or at least labels.clusters frames")
        need(lab.n_init >= 1, "labels.n_init", lab.n_init, "expected >= 1")
        need(self.loss.unmasked_weight >= 0, "loss.unmasked_weight", self.loss.unmasked_weight, "expected >= 0")
        need(0 <= self.stop_at <= o.total_steps, "stop_at", self.stop_at, "expected 0 (off) or a step <= total_steps")
        for key in ("log_every", "valid_every", "save_every", "keep_checkpoints"):
            need(getattr(self, key) >= 1, key, getattr(self, key), "expected >= 1")
        need(self.threads is None or self.threads >= 1, "threads", self.threads, "expected >= 1 or null")
        need(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", self.device,
             "expected auto, cpu, cuda or cuda:N")


def load_pretrain_config(path=None, overrides=()) -> PretrainConfig:
    """Defaults <- YAML <- ``key=value`` overrides, checked; raises :class:`ConfigError` naming the key."""
    return load_config(path, overrides, schema=PretrainConfig)
