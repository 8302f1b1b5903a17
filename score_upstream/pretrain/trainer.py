"""HuBERT pre-training (masked prediction of k-means units) for HuBERT-architecture models.

Run::

    score-pretrain recipes/pretrain/small_v2_iter1.yaml --data data/pretrain --out exp/pretrain_small_v2/iter1
    score-pretrain recipes/pretrain/small_v2_iter2.yaml --data data/pretrain --out exp/pretrain_small_v2/iter2 \\
        labels.model=exp/pretrain_small_v2/iter1/hubert.pt
    torchrun --nproc_per_node 4 -m score_upstream.pretrain.trainer CONFIG.yaml --data ... --out ...
    score-pretrain CONFIG.yaml --data ... --out DIR resume=auto                     # continue
    score-pretrain CONFIG.yaml --data ... --out DIR --overwrite            # delete the folder's run, start over

The objective is HuBERT's (Hsu et al., 2021, Eq. 1-3): spans of the CNN features are replaced by a learnt
mask embedding (span 10, ``mask_prob`` of the frames start a span), the transformer's output goes through
``final_proj`` and is scored against every label embedding by cosine similarity / 0.1; the loss is
fairseq's ``hubert_criterion`` (:func:`objective`): the cross-entropy summed over masked frames plus
``loss.unmasked_weight`` times that over unmasked frames, plus ``loss.features_penalty`` times the mean
squared CNN feature times ``sample_size``, all divided by ``sample_size`` = masked frames (+ unmasked
frames when the weight is > 0). The network, masking and logits are s3prl's copy of fairseq's
``HubertModel``, so the result is an ordinary HuBERT checkpoint.

Each update takes ``data.batch_crops`` utterances, crops all of them to the shortest (at most
``data.crop_seconds``; an utterance's frames are those with a label, :func:`labels.usable_frames`) at a
random frame boundary, as HuBERT's data loader does without padding. Data
order, crops, masks and dropout are functions of ``(seed, step)``, so a resumed run repeats the same updates.
Outputs in ``--out``: ``labels.pt`` (k-means units of every utterance), ``hubert.pt`` (s3prl's converted
format with ``final_proj`` and the label embeddings, plus a ``pretrain`` entry with the provenance),
``state-NNNNNN.pt``, ``train_log.csv``, ``valid_log.csv`` and ``config-<time>-<n>.yaml``. A folder holds one
run, as for ``score-train``: a start without ``resume`` refuses a folder that holds another run's files,
``--overwrite`` deletes them first (``labels.pt`` too; other files stay), and a resumed run cuts its logs
at the state it resumes from.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from score_upstream.atomic import FORMAT_VERSION_KEY, atomic_save, prune_checkpoints
from score_upstream.audio import AudioError, read_mono
from score_upstream.pretrain import labels as L
from score_upstream.pretrain.config import PretrainConfig, load_pretrain_config
from score_upstream.training.config import ConfigError, config_to_dict
from score_upstream.training.data import DataError, Utterance, load_manifest, mix_seed
from score_upstream.training.runtime import (STATE_RE, check_out_dir, check_resume_config, clear_run, dist_env,
                                             keep_config, latest_state, run_cli, setup_device, trim_log)
from score_upstream.training.train import lr_factor

logger = logging.getLogger(__name__)

STATE_VERSION = 1
LABELS_VERSION = 1
# what a state written before these keys existed ran with (its config lacks them)
LEGACY = {"loss": {"normalisation": "masked_frames"}, "labels": {"mfcc_rate": 50, "kmeans_fraction": 1.0}}
NUM_SPECIALS = 4  # fairseq dictionaries put <s>, <pad>, </s>, <unk> before the units
# keys that may change between a run and its resumption (how the run is driven, not what it computes)
RUN_KEYS = ("resume", "stop_at", "progress", "log_every", "device", "threads", "keep_checkpoints", "save_every")
# the final model, and the labels cache that --overwrite also deletes (it is not a sign of another run)
FINALS = ("hubert.pt",)
LABELS = "labels.pt"
TRAIN_HEADER = ["step", "loss", "acc_m", "acc_u", "lr", "grad_norm", "wall_s"]
VALID_HEADER = ["step", "loss_m", "acc_m", "loss_u", "acc_u"]


class PretrainError(RuntimeError):
    """Pre-training cannot go on (bad checkpoint, non-finite losses, no usable data)."""


def model_cfg_for(cfg: PretrainConfig) -> dict:
    from score_upstream.models import hubert

    make = {"tiny": hubert.tiny_model_cfg, "small": hubert.small_model_cfg, "base": hubert.base_model_cfg}
    return make[cfg.model.arch](**cfg.model.overrides)


def start_from(model: torch.nn.Module, init: str | os.PathLike) -> None:
    """Load every weight of the HuBERT at ``init`` but the prediction head into ``model`` (model.init); the
    two must have the same architecture."""
    from score_upstream.models.hubert import PREDICTION_HEAD, load_hubert

    src = load_hubert(init).model.state_dict()
    own = model.state_dict()
    body = [k for k in own if not k.startswith(PREDICTION_HEAD)]
    wrong = [k for k in body if k not in src or src[k].shape != own[k].shape]
    if wrong:
        raise PretrainError(f"model.init={init}: not the architecture of this recipe's model (missing or other shape: "
                            f"{', '.join(wrong[:4])}{'...' if len(wrong) > 4 else ''})")
    model.load_state_dict({k: src[k] for k in body}, strict=False)
    logger.info("model.init: %d weights from %s; the prediction head starts fresh", len(body), init)


# ---------------------------------------------------------------------------------------------- objective
def prediction_sums(logit_m: torch.Tensor, logit_u: torch.Tensor) -> dict:
    """Summed cross-entropy, frame counts and correct frames of HubertModel's logits.

    Args:
        logit_m, logit_u: (masked frames, 1 + negatives) and (unmasked frames, ...) logits, the target's
            first (fairseq ``compute_logits``: the positive label embedding in column 0).
    """
    zero_m = torch.zeros(logit_m.shape[0], dtype=torch.long, device=logit_m.device)
    zero_u = torch.zeros(logit_u.shape[0], dtype=torch.long, device=logit_u.device)
    return {"ce_m": F.cross_entropy(logit_m, zero_m, reduction="sum"), "ce_u": F.cross_entropy(logit_u, zero_u, reduction="sum"),
            "n_m": logit_m.shape[0], "n_u": logit_u.shape[0],
            "acc_m": int((logit_m.argmax(-1) == 0).sum()), "acc_u": int((logit_u.argmax(-1) == 0).sum())}


def objective(ce_m: torch.Tensor, ce_u: torch.Tensor, pen: torch.Tensor, n_m: int, n_u: int, loss,
              total_m: float | None = None, total_u: float | None = None, world: int = 1) -> torch.Tensor:
    """The loss whose gradient is applied (one process's share; the processes' shares are summed).

    ``loss.normalisation="sample_size"`` (fairseq ``HubertCriterion``, with ``pred_masked_weight`` 1):
    ``(CE_m + w CE_u + features_penalty * pen * n) / N`` where ``n`` = this process's masked frames (+ its
    unmasked frames when ``w = loss.unmasked_weight > 0``) and ``N`` the same over all processes (fairseq
    sums loss and sample_size over GPUs, then divides). ``"masked_frames"`` (the model shipped before):
    ``(CE_m + w CE_u) / total_m + features_penalty * pen / world``.

    Args:
        ce_m, ce_u: summed cross-entropy over this process's masked / unmasked frames.
        pen: this process's features penalty (mean squared CNN feature).
        n_m, n_u: this process's masked / unmasked frames; total_m, total_u: all processes' (default: n_m, n_u).
    """
    total_m = n_m if total_m is None else total_m
    total_u = n_u if total_u is None else total_u
    w, fp = loss.unmasked_weight, loss.features_penalty
    ce = ce_m + w * ce_u if w > 0 else ce_m
    if loss.normalisation == "masked_frames":
        return ce / max(1.0, total_m) + fp * pen / world
    local = n_m + (n_u if w > 0 else 0)
    size = total_m + (total_u if w > 0 else 0)
    return (ce + fp * pen * local) / max(1.0, size)


# ------------------------------------------------------------------------------------------------- labels
def _read(utt: Utterance, sr: int) -> torch.Tensor:
    return read_mono(utt.path, sr)


def make_labels(cfg: PretrainConfig, train: list[Utterance], valid: list[Utterance], out: Path) -> dict:
    """Features -> k-means on the training frames -> units of every utterance; cached in ``out/labels.pt``.

    A cache made from other inputs is rebuilt: its key holds the label settings, the content of the model
    whose layer is clustered (SHA-256, not its path: a retrained model at the same path gets new labels) and
    the corpus (every utterance's path and length). Unreadable files are left out and named in the log.
    """
    from score_upstream.stages import file_sha256, tree_fingerprint

    lab = cfg.labels
    corpus = hashlib.sha256("\n".join(f"{u.path}\t{u.num_samples}" for u in train + valid).encode()).hexdigest()
    model = None
    if lab.model:
        model = file_sha256(lab.model) if Path(lab.model).is_file() else tree_fingerprint(lab.model)
    key = {"features": lab.features, "model_sha256": model, "layer": lab.layer, "clusters": lab.clusters,
           "max_frames": lab.max_frames, "n_init": lab.n_init, "seed": cfg.seed, "corpus": corpus}
    rate = label_rate(cfg)
    if (rate, lab.kmeans_fraction) != (L.MODEL_RATE, 1.0):  # keys of caches made before these settings stay valid
        key.update({"rate": rate, "kmeans_fraction": lab.kmeans_fraction})
    path = out / "labels.pt"
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get(FORMAT_VERSION_KEY) == LABELS_VERSION and cached.get("key") == key:
            logger.info("reusing %s (%d utterances)", path, len(cached["units"]))
            return cached
        logger.info("%s was made from other inputs (label settings, clustered model or corpus); rebuilding it", path)
    if lab.features == "mfcc":
        def featurize(wav):
            return L.mfcc_features(wav, cfg.data.sample_rate, rate)
    else:
        from score_upstream.models.hubert import load_hubert

        featurize = L.hubert_layer_features(load_hubert(lab.model), lab.layer)
    t0 = time.perf_counter()
    feats: dict[str, torch.Tensor] = {}
    for u in train + valid:
        try:
            feats[u.path] = featurize(_read(u, cfg.data.sample_rate))
        except AudioError as e:
            logger.warning("labels: skipping %s", e)
    logger.info("labels: %s features of %d utterances in %.0f s", lab.features, len(feats), time.perf_counter() - t0)
    km = L.fit_kmeans([feats[u.path] for u in train if u.path in feats], lab.clusters, cfg.seed,
                      max_frames=lab.max_frames, n_init=lab.n_init, fraction=lab.kmeans_fraction)
    # every label frame is assigned; one label per model frame is kept (label 2i for frame i at 100 Hz)
    units = {p: L.model_rate(L.assign(km, f), rate).to(torch.int16) for p, f in feats.items()}
    usage = L.cluster_usage((units[u.path].long() for u in train if u.path in units), lab.clusters)
    logger.info("labels: cluster usage %s", usage)
    data = {FORMAT_VERSION_KEY: LABELS_VERSION, "key": key, "units": units, "usage": usage, "rate": rate,
            "centroids": torch.from_numpy(km.cluster_centers_).float()}
    atomic_save(data, path)
    return data


def label_rate(cfg: PretrainConfig) -> int:
    """Label frames per second: ``labels.mfcc_rate`` for MFCC, the model's 50 Hz for a model's layer."""
    return cfg.labels.mfcc_rate if cfg.labels.features == "mfcc" else L.MODEL_RATE


def labelled_frames(units: dict, utt: Utterance, rate: int) -> int:
    """Model frames of ``utt`` that have a label (fairseq's rule at 100 Hz, :func:`labels.usable_frames`)."""
    return min(len(units[utt.path]), L.usable_frames(utt.num_samples, rate)) if utt.path in units else 0


# --------------------------------------------------------------------------------------------------- data
class CropBatches:
    """Updates of ``batch_crops`` utterances, cropped at frame boundaries to the shortest of them.

    Args:
        utts: usable utterances (each with units). units: ``{path: (model frames,) int16}``.
        rate: the labels' frame rate; an utterance offers :func:`labels.usable_frames` frames of it.
    """

    def __init__(self, utts: list[Utterance], units: dict, cfg: PretrainConfig, rate: int = L.MODEL_RATE):
        self.utts, self.units, self.cfg, self.rate = utts, units, cfg, rate
        self.max_frames = L.num_frames(int(cfg.data.crop_seconds * cfg.data.sample_rate))

    def frames(self, i: int) -> int:
        """Frames of utterance ``i`` that have a label (fairseq's rule at 100 Hz, all of them at 50 Hz)."""
        return labelled_frames(self.units, self.utts[i], self.rate)

    def updates_per_epoch(self) -> int:
        return len(self.utts) // self.cfg.data.batch_crops

    def group(self, epoch: int, pos: int) -> list[int]:
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, 7))
        order = torch.randperm(len(self.utts), generator=g).tolist()
        n = self.cfg.data.batch_crops
        return order[pos * n:(pos + 1) * n]

    def crops(self, indices: list[int], seed: int, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(wav (B, samples), targets (B, frames))`` with targets as dictionary indices (unit + 4)."""
        frames = min(self.max_frames, *(self.frames(i) for i in indices))
        g = torch.Generator().manual_seed(seed)
        span = (frames - 1) * L.HOP + L.WINDOW
        wavs, targets = [], []
        for i in indices:
            u = self.utts[i]
            units = self.units[u.path]
            start = int(torch.randint(0, self.frames(i) - frames + 1, (1,), generator=g))
            wav = _read(u, sr)[start * L.HOP: start * L.HOP + span]
            wavs.append(F.pad(wav, (0, span - wav.numel())))  # a header that overstates the length
            targets.append(units[start:start + frames].long() + NUM_SPECIALS)
        return torch.stack(wavs), torch.stack(targets)


# ------------------------------------------------------------------------------------------------ trainer
class Pretrainer:
    """One pre-training iteration; :meth:`fit` trains to ``optim.total_steps``."""

    def __init__(self, cfg: PretrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                 overwrite: bool = False):
        from score_upstream.models.hubert import cluster_symbols, new_hubert, tiny_task_cfg

        self.cfg, self.out, self.data_root = cfg, Path(out_dir), Path(data_root)
        self.rank, self.world, local_rank = dist_env()
        self.leader = self.rank == 0
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # before anything is written (every process reads; setup_device waits for all of them)
        check_out_dir(self.out, cfg.resume, overwrite, FINALS, PretrainError)
        self.device = setup_device(cfg.device, local_rank, self.world)
        if overwrite and self.leader:  # the labels go too: they are rebuilt below from this run's data
            clear_run(self.out, (*FINALS, LABELS))
        if self.world > 1:
            dist.barrier()
        self.out.mkdir(parents=True, exist_ok=True)
        sr = cfg.data.sample_rate
        train, self.skipped = load_manifest(data_root, cfg.data.subsets, sr)
        valid = load_manifest(data_root, cfg.data.valid_subsets, sr)[0] if cfg.data.valid_subsets else []
        min_n = int(cfg.data.min_seconds * sr)
        short = sum(u.num_samples < min_n for u in train)
        if short:
            logger.info("leaving out %d training utterances shorter than data.min_seconds=%.2f", short,
                        cfg.data.min_seconds)
        train = [u for u in train if u.num_samples >= min_n]
        valid = [u for u in valid if u.num_samples >= min_n]
        if self.leader:
            self.labels = make_labels(cfg, train, valid, self.out)
        if self.world > 1:
            dist.barrier()
            if not self.leader:
                self.labels = torch.load(self.out / "labels.pt", map_location="cpu", weights_only=True)
        units, self.rate = self.labels["units"], self.labels.get("rate", L.MODEL_RATE)
        self.train = [u for u in train if labelled_frames(units, u, self.rate) > 0]
        self.valid = [u for u in valid if labelled_frames(units, u, self.rate) > 0]
        self.batches = CropBatches(self.train, units, cfg, self.rate)
        if self.batches.updates_per_epoch() == 0:
            raise DataError(f"{data_root}: {len(self.train)} usable utterances, fewer than data.batch_crops="
                            f"{cfg.data.batch_crops}")
        self.model_cfg = model_cfg_for(cfg)
        task = tiny_task_cfg(label_rate=50.0, sample_rate=sr)
        self.bundle = new_hubert(self.model_cfg, task, seed=cfg.seed, symbols=cluster_symbols(cfg.labels.clusters))
        if cfg.model.init:
            start_from(self.bundle.model, cfg.model.init)
        self.model = self.bundle.model.to(self.device)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if self.world > 1:
            for p in self.model.state_dict().values():
                dist.broadcast(p, 0)
        o = cfg.optim
        self.opt = torch.optim.AdamW(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, o.warmup_steps, o.total_steps))
        self.step, self.epoch, self.pos, self.nonfinite = 0, 0, 0, 0
        self.audio_seconds = 0.0
        self.last_valid: dict = {}

    # ------------------------------------------------------------------------------------- checkpoints
    def save_state(self) -> None:
        if not self.leader:
            return
        state = {FORMAT_VERSION_KEY: STATE_VERSION, "kind": "score_pretrain_state", "step": self.step,
                 "epoch": self.epoch, "pos": self.pos, "audio_seconds": self.audio_seconds,
                 "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                 "config": config_to_dict(self.cfg), "last_valid": self.last_valid}
        path = atomic_save(state, self.out / f"state-{self.step:06d}.pt")
        prune_checkpoints(self.out, STATE_RE, self.cfg.keep_checkpoints)
        logger.info("saved %s", path)

    def load_state(self, path: Path, allow_changes: bool = False) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PretrainError(f"{path}: cannot load training state ({e}); delete it to start over") from None
        if state.get(FORMAT_VERSION_KEY) != STATE_VERSION or state.get("kind") != "score_pretrain_state":
            raise PretrainError(f"{path}: not a score-pretrain state of version {STATE_VERSION}")
        old, new = state["config"], config_to_dict(self.cfg)
        for section, keys in LEGACY.items():
            old[section] = {**keys, **old.get(section, {})}
        if old["labels"].get("features") != "mfcc":  # the MFCC rate means nothing to a model's layer
            old["labels"]["mfcc_rate"] = new["labels"]["mfcc_rate"]
        check_resume_config(path, old, new, RUN_KEYS, allow_changes, PretrainError)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        self.audio_seconds, self.last_valid = state["audio_seconds"], state["last_valid"]
        logger.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------------------ update
    def _forward(self, wav: torch.Tensor, targets: torch.Tensor) -> dict:
        pad = torch.zeros(wav.shape, dtype=torch.bool, device=self.device)
        bf16 = self.cfg.precision == "bf16" and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            net = self.model(wav.to(self.device), target_list=[targets.to(self.device)], padding_mask=pad, mask=True)
        sums = prediction_sums(net["logit_m_list"][0].float(), net["logit_u_list"][0].float())
        return {**sums, "pen": net["features_pen"].float()}

    def _seed_step(self, *extra: int) -> None:
        # fairseq's compute_mask_indices draws from numpy's global generator; dropout from torch's
        s = mix_seed(self.cfg.seed, self.step, self.rank, *extra)
        np.random.seed(s % 2**32)
        torch.manual_seed(s)

    def train_update(self) -> dict | None:
        cfg = self.cfg
        group = self.batches.group(self.epoch, self.pos)
        mine = group[self.rank::self.world]
        self._seed_step()
        wav, targets = self.batches.crops(mine, mix_seed(cfg.seed, self.epoch, self.pos, 11), cfg.data.sample_rate)
        r = self._forward(wav, targets)
        stats = torch.tensor([r["n_m"], r["n_u"], r["acc_m"], r["acc_u"], wav.numel() / cfg.data.sample_rate],
                             dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(stats)
        n_m = max(1.0, float(stats[0]))
        loss = objective(r["ce_m"], r["ce_u"], r["pen"], r["n_m"], r["n_u"], cfg.loss, float(stats[0]), float(stats[1]),
                         self.world)
        loss.backward()
        if self.world > 1:
            flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                              for p in self.params] + [loss.detach().reshape(1)])
            dist.all_reduce(flat)
            off = 0
            for p in self.params:
                p.grad = flat[off:off + p.numel()].view_as(p).clone()
                off += p.numel()
            loss_value = float(flat[-1])
        else:
            loss_value = float(loss.detach())
        clip = cfg.optim.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip > 0 else float("inf"))
        self.pos += 1
        if self.pos >= self.batches.updates_per_epoch():
            self.epoch, self.pos = self.epoch + 1, 0
        if not (math.isfinite(loss_value) and torch.isfinite(gnorm)):
            self.opt.zero_grad(set_to_none=True)
            self.nonfinite += 1
            if self.nonfinite >= cfg.optim.max_nonfinite:
                raise PretrainError(f"{self.nonfinite} non-finite updates in a row at step {self.step + 1}; lower optim.lr")
            return None
        self.nonfinite = 0
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.audio_seconds += float(stats[4])
        return {"step": self.step, "loss": loss_value, "lr": lr, "grad_norm": float(gnorm),
                "acc_m": float(stats[2]) / n_m, "acc_u": float(stats[3]) / max(1.0, float(stats[1])),
                "audio_seconds": float(stats[4])}

    @torch.no_grad()
    def validate(self) -> dict:
        """Masked and unmasked accuracy and loss on the held-out subsets (dropout off, fixed masks and crops)."""
        if not self.valid:
            return {}
        self.model.eval()
        tot = {"ce_m": 0.0, "n_m": 0, "acc_m": 0, "ce_u": 0.0, "n_u": 0, "acc_u": 0}
        rng_np, rng_t = np.random.get_state(), torch.get_rng_state()
        batches = CropBatches(self.valid, self.labels["units"], self.cfg, self.rate)
        for i in range(len(self.valid)):
            np.random.seed(mix_seed(self.cfg.seed, i, 13) % 2**32)
            wav, targets = batches.crops([i], mix_seed(self.cfg.seed, i, 17), self.cfg.data.sample_rate)
            r = self._forward(wav, targets)
            for k in tot:
                tot[k] += float(r[k])
        np.random.set_state(rng_np)
        torch.set_rng_state(rng_t)
        self.model.train()
        return {"step": self.step, "loss_m": tot["ce_m"] / max(1, tot["n_m"]), "acc_m": tot["acc_m"] / max(1, tot["n_m"]),
                "loss_u": tot["ce_u"] / max(1, tot["n_u"]), "acc_u": tot["acc_u"] / max(1, tot["n_u"])}

    # --------------------------------------------------------------------------------------------- fit
    def _resume(self, allow_changes: bool) -> None:
        if self.cfg.resume == "false":
            return
        found = latest_state(self.out)
        if found is None and self.cfg.resume == "true":
            raise PretrainError(f"{self.out}: resume=true but no state-NNNNNN.pt there; use resume=auto to start fresh")
        if found is not None:
            self.load_state(found, allow_changes)
        if self.leader:  # this run's rows only, up to the state it resumes from
            trim_log(self.out / "train_log.csv", self.step, TRAIN_HEADER)
            trim_log(self.out / "valid_log.csv", self.step, VALID_HEADER)

    def _log(self, name: str, header: list[str], row: dict) -> None:
        path = self.out / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(header)
            w.writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in header])

    def fit(self, allow_config_change: bool = False) -> dict:
        cfg, total = self.cfg, self.cfg.optim.total_steps
        stop = cfg.stop_at or total
        self._resume(allow_config_change)
        if self.leader:
            text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
            logger.info("resolved config:\n%s", text.rstrip())
            keep_config(self.out, text)
            n = sum(p.numel() for p in self.params)
            hours = sum(u.num_samples for u in self.train) / cfg.data.sample_rate / 3600
            logger.info("%d training utterances (%.2f h), %d held out; %d parameters; %d updates per epoch; device %s",
                        len(self.train), hours, len(self.valid), n, self.batches.updates_per_epoch(), self.device)
        bar = None
        if self.leader and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc="score-pretrain", dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        t0, window_t, window_audio = time.perf_counter(), time.perf_counter(), 0.0
        try:
            while self.step < stop:
                rec = self.train_update()
                if rec is None:
                    continue
                window_audio += rec["audio_seconds"]
                rec["wall_s"] = time.perf_counter() - t0
                if self.leader:
                    self._log("train_log.csv", TRAIN_HEADER, rec)
                    if bar is not None:
                        bar.update(1)
                    if self.step % cfg.log_every == 0:
                        rate = window_audio / max(1e-9, time.perf_counter() - window_t)
                        line = (f"step {self.step:05d}/{total:05d} | loss {rec['loss']:.4f} | acc-masked {rec['acc_m']:.3f} | "
                                f"lr {rec['lr']:.3e} | audio-s/s {rate:.1f}")
                        (bar.write(line) if bar is not None else logger.info(line))
                if self.step % cfg.log_every == 0:
                    window_t, window_audio = time.perf_counter(), 0.0
                if self.step % cfg.valid_every == 0 or self.step in (total, stop):
                    self.last_valid = self.validate()
                    if self.leader and self.last_valid:
                        self._log("valid_log.csv", VALID_HEADER, self.last_valid)
                        logger.info("held-out: masked accuracy %.3f (loss %.3f), unmasked %.3f", self.last_valid["acc_m"],
                                    self.last_valid["loss_m"], self.last_valid["acc_u"])
                if self.step % cfg.save_every == 0 or self.step in (total, stop):
                    self.save_state()
        finally:
            if bar is not None:
                bar.close()
        final = self.save_final() if self.leader and self.step >= total else None
        if self.world > 1:
            dist.barrier()
        return {"step": self.step, "final": final, "valid": self.last_valid}

    def save_final(self) -> Path:
        from score_upstream import __version__
        from score_upstream.models.hubert import save_s3prl
        from score_upstream.report.results import provenance

        corpus = self.data_root / "synth_manifest.json"
        source = {"data": str(self.data_root)}
        if corpus.is_file():
            import json

            m = json.loads(corpus.read_text())
            source.update({"synth_size": m.get("size"), "synth_seed": m.get("seed"),
                           "synth_disjoint_from": m.get("disjoint_from", [])})
        prov = provenance([])
        extra = {"pretrain": {
            "method": "HuBERT masked prediction of k-means units", "version": __version__, "steps": self.step,
            "labels": {"features": self.cfg.labels.features, "model": self.cfg.labels.model, "layer": self.cfg.labels.layer,
                       "clusters": self.cfg.labels.clusters, "rate": self.rate, "usage": self.labels["usage"]},
            "loss_normalisation": self.cfg.loss.normalisation,
            "train_utterances": len(self.train), "train_hours": sum(u.num_samples for u in self.train) / 16000 / 3600,
            "processed_hours": self.audio_seconds / 3600, "valid": self.last_valid, "corpus": source,
            "commit": prov.get("git_commit", "unknown"), "versions": prov.get("versions", ""),
            "config": config_to_dict(self.cfg)}}
        path = save_s3prl(self.bundle, self.out / "hubert.pt", extra=extra)
        logger.info("wrote %s", path)
        return path


def pretrain(config, data, out, overrides=(), allow_config_change: bool = False, overwrite: bool = False) -> dict:
    """Library entry: load the config (errors before any work), pre-train, return a summary.

    ``overwrite=True`` deletes the run files ``out`` holds first, as ``--overwrite``.
    """
    cfg = config if isinstance(config, PretrainConfig) else load_pretrain_config(config, overrides)
    return Pretrainer(cfg, data, out, overwrite=overwrite).fit(allow_config_change)


def main(argv: list[str] | None = None) -> int:
    """``score-pretrain CONFIG.yaml --data ROOT --out DIR [key=value ...]``."""
    from score_upstream.native import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted
    from score_upstream.cliparse import ScoreArgumentParser

    ap = ScoreArgumentParser(prog="score-pretrain", description=__doc__.split("\n\n")[0], examples=[
        "score-pretrain recipes/pretrain/tiny.yaml --data data/demo --out exp/pretrain_tiny",
        "recipes/pretrain/run.sh   # every iteration of the shipped small model"])
    ap.add_argument("config", help="YAML recipe, e.g. recipes/pretrain/small_iter1.yaml")
    ap.add_argument("--data", required=True, help="directory holding LibriSpeech/<subset>/ (or the subsets)")
    ap.add_argument("--out", required=True, help="output directory (labels, checkpoints, logs, hubert.pt); one run "
                    "per directory")
    ap.add_argument("--allow-config-change", action="store_true",
                    help="resume even though recipe keys differ from the checkpoint's")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete the run files --out holds (states, logs, configs, labels, hubert.pt; nothing else) first")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.total_steps=100")
    args = ap.parse_intermixed_args(argv)
    return run_cli("score-pretrain", lambda: pretrain(args.config, args.data, args.out, args.overrides,
                                                       args.allow_config_change, overwrite=args.overwrite),
                   (ConfigError, DataError, AudioError, PretrainError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
