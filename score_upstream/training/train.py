"""Fine-tuning of HuBERT (or WavLM) by SCORE (default), LASER or SPIN (config key ``method``), on one shared
trainer.

SCORE: soft-DTW correspondence between the student and its frozen initial copy. LASER and SPIN:
``score_upstream.training.methods`` (their views, heads and losses); data, updates, checkpoints, torchrun
and logging are the same for all three.

Run::

    score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --out exp/score \\
        model.init=/models/hubert_base_ls960.pt
    score-train recipes/score/tiny.yaml --data synth_root --out exp/tiny        # CPU, under a minute
    score-train recipes/score/wavlm_base_plus.yaml --data /data/LibriSpeech --out exp/score_wavlm \
        model.init=/models/WavLM-Base+.pt                                        # -> score_wavlm.pt
    torchrun --nproc_per_node 8 -m score_upstream.training.train CONFIG.yaml --data ... --out ...   # same flags
    score-train CONFIG.yaml --data ... --out exp/score resume=auto                           # continue
    score-train CONFIG.yaml --data ... --out exp/score --overwrite          # delete the folder's run, start over
    score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --plan        # updates, speech; no training
    score-train recipes/laser/hubert_base.yaml ...   or   recipes/spin/hubert_base.yaml ...    # other methods

Each update averages the method's loss over ``data.utterances_per_update`` (view, view) pairs (SCORE: the
soft-DTW divergence of each pair, normalised by its own N + M) and steps s3prl's AdamW
(:mod:`.optim`) or, with ``optim.name=adam``, torch's Adam. Processes split
every update's utterances; their gradients are summed with one all-reduce per update, so for SCORE and
LASER any micro-batching gives the same update as batch 1 x accumulation (SPIN's Sinkhorn couples a batch's
utterances: its recipes hold an update in one micro-batch, which a failing utterance never splits). Updates run across epoch boundaries
as s3prl's runner counts backward steps (no utterance dropped). A file that cannot be loaded,
perturbed or encoded is reported once and skipped; more than ``data.max_failed_fraction`` of them stops
the run. Resuming refuses a changed recipe key unless ``--allow-config-change`` is given.
Outputs in ``--out``: ``score_hubert.pt`` (s3prl converted HuBERT format; ``score_wavlm.pt`` for WavLM), resumable
``state-NNNNNN.pt`` checkpoints, ``train_log.csv``, ``config.yaml`` (the latest start) and
``config-<time>-<n>.yaml`` (every start), TensorBoard events. A folder holds one run: a start without
``resume`` refuses a folder that holds another run's files, ``--overwrite`` deletes them first (other files
stay), and a resumed run cuts its ``train_log.csv`` at the state it resumes from.
Speech is counted two ways (``training.methods``): input speech (the original audio drawn per update,
the SCORE paper's count) and view speech (the views through the trainable model). Both are logged on the
step line and in ``train_log.csv`` in hours, kept in the training state and recorded, with the method and
the recipe, in ``score_hubert.pt`` (``score.input_speech_hours``, ``score.view_speech_hours``).
``--plan`` prints what a recipe will draw on a corpus without building the model (:mod:`.plan`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from score_upstream.audio import AudioError
from score_upstream.atomic import FORMAT_VERSION_KEY, atomic_save, atomic_write_bytes, prune_checkpoints
from score_upstream.training.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config
from score_upstream.training.data import (DataError, MicroBatch, Originals, PairDataset, UpdateBatch, UpdateCollate,
                                          cut_micro_batches, find_librispeech, load_manifest, mix_seed,
                                          min_utterance_samples)
from score_upstream.training.packing import crop_samples, make_sampler
from score_upstream.training.methods import INPUT_SPEECH, get_method
from score_upstream.training.runtime import (STATE_RE, check_out_dir, check_resume_config, clear_run, dist_env,
                                             keep_config, latest_state, run_cli, setup_device, trim_log)
from score_upstream.training.model import conv_layout, min_input_samples
from score_upstream.training.optim import AdamW

logger = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: "pos" counts updates over the whole run (updates cross epoch boundaries)
# keys that may change between a run and its resumption: how the run is driven, not what it computes
RUN_KEYS = ("resume", "stop_at", "progress", "log_every", "device", "save_every", "keep_checkpoints", "save_hf",
            "data.num_workers", "data.batch_seconds", "data.max_failed_fraction")
# the final models a run writes (score_<family>.pt, and with save_hf its transformers directory)
FINALS = ("score_hubert.pt", "score_wavlm.pt", "score_hubert_hf", "score_wavlm_hf")
# what one file's trouble raises (AudioError, PerturbError, SoftDTWError, torch's RuntimeError); other
# exception types are bugs and propagate
ITEM_ERRORS = (RuntimeError, ValueError)


class TrainError(RuntimeError):
    """Training cannot go on (bad checkpoint, repeated non-finite losses, ...)."""


# ----------------------------------------------------------------------------------------------- set-up
def lr_factor(step: int, warmup: int, total: int, start: float = 0.0, end: float = 0.0) -> float:
    """Linear warm-up from ``start`` over ``warmup`` updates, then linear decay to ``end`` at ``total``
    (factors of the peak learning rate; SCORE: 0 and 0, SPIN: 1e-6 / 1e-4 both)."""
    if step < warmup:
        return start + (1.0 - start) * (step / max(1, warmup))
    return end + (1.0 - end) * max(0.0, (total - step) / max(1, total - warmup))


def build_bundle(cfg: TrainConfig):
    """The initial model of ``model.family``: loaded from ``model.init`` (any format) or a fresh tiny one."""
    from score_upstream.models import hubert, wavlm
    from score_upstream.models.loader import load_model

    if cfg.model.tiny:
        if cfg.model.family == "wavlm":
            return wavlm.new_wavlm(wavlm.tiny_cfg(**cfg.model.tiny_overrides), seed=cfg.seed)
        return hubert.new_hubert(hubert.tiny_model_cfg(**cfg.model.tiny_overrides), seed=cfg.seed)
    path = Path(cfg.model.init)
    if not path.exists():
        raise ConfigError(f"config key 'model.init': {path} not found; give a fairseq .pt, an s3prl converted .pt, "
                          "a WavLM .pt or a transformers directory")
    bundle = load_model(path)
    if bundle.family != cfg.model.family:
        raise ConfigError(f"config key 'model.init': {path} holds a {bundle.family}, the recipe is for "
                          f"model.family={cfg.model.family}; use a {bundle.family} recipe (e.g. recipes/score/"
                          f"{'wavlm_base_plus' if bundle.family == 'wavlm' else 'hubert_base'}.yaml)")
    return bundle


def build_perturbation(cfg: TrainConfig):
    """The method's perturbation (SCORE, LASER: ``ScorePerturbation``; SPIN: ``SpeakerPerturbation``) from the
    ``perturb`` section, as a ``(wav, generator) -> view`` callable."""
    return get_method(cfg).build_perturbation()


def build_optimizer(params: list, o) -> torch.optim.Optimizer:
    """s3prl's AdamW (SCORE, LASER) or torch's Adam with L2 weight decay (SPIN) from the ``optim`` section."""
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    return AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e)  # torch.OutOfMemoryError is 2.5+


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [s for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------ run log
class RunLog:
    """``train_log.csv``, TensorBoard events, the tqdm bar and the step line (written by the leader only),
    and the audio-seconds-per-second rate over the current log window (on every process)."""

    HEADER = ["step", "loss", "lr", "grad_norm", "audio_seconds", "audio_s_per_s", "wall_s", "input_speech_hours",
              "view_speech_hours"]

    def __init__(self, out: Path, cfg: TrainConfig, initial_step: int, leader: bool):
        self.total, self.log_every, self.leader = cfg.optim.total_steps, cfg.log_every, leader
        self.t0 = self.window_t = time.perf_counter()
        self.window_audio = 0.0
        self.csv_file = self.writer = self.tb = self.bar = None
        if not leader:
            return
        trim_log(out / "train_log.csv", initial_step, self.HEADER)  # this run's rows only, up to its start
        new = not (out / "train_log.csv").exists()
        self.csv_file = open(out / "train_log.csv", "a", newline="")
        self.writer = csv.writer(self.csv_file)
        if new:
            self.writer.writerow(self.HEADER)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(out / "tb"))
        except ImportError:
            self.tb = None
        if cfg.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=initial_step, desc="score-train", dynamic_ncols=True,
                            file=sys.stderr)

    def record(self, rec: dict) -> None:
        """Add ``audio_s_per_s`` to ``rec`` and write it out."""
        self.window_audio += rec["audio_seconds"]
        rate = rec["audio_s_per_s"] = self.window_audio / max(1e-9, time.perf_counter() - self.window_t)
        step = rec["step"]
        if self.leader:
            self.writer.writerow([step, f"{rec['loss']:.6f}", f"{rec['lr']:.6e}", f"{rec['grad_norm']:.4f}",
                                  f"{rec['audio_seconds']:.2f}", f"{rate:.1f}", f"{time.perf_counter() - self.t0:.1f}",
                                  f"{rec['input_speech_hours']:.6f}", f"{rec['view_speech_hours']:.6f}"])
            if self.tb is not None:
                for k in ("loss", "lr", "grad_norm", "audio_s_per_s", "input_speech_hours", "view_speech_hours"):
                    self.tb.add_scalar(f"train/{k}", rec[k], step)
            if self.bar is not None:
                self.bar.update(1)
                self.bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", aps=f"{rate:.0f}")
            if step % self.log_every == 0 or step == self.total:
                line = (f"step {step:05d}/{self.total:05d} | loss {rec['loss']:.4f} | lr {rec['lr']:.3e} | "
                        f"audio-s/s {rate:.1f} | input-h {rec['input_speech_hours']:.4f} | "
                        f"view-h {rec['view_speech_hours']:.4f}")
                (self.bar.write(line) if self.bar is not None else logger.info(line))
                self.csv_file.flush()
        if step % self.log_every == 0:
            self.window_t, self.window_audio = time.perf_counter(), 0.0

    def close(self) -> None:
        for h in (self.bar, self.csv_file, self.tb):
            if h is not None:
                h.close()


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    """Holds everything of one run; :meth:`fit` trains to ``optim.total_steps``."""

    def __init__(self, cfg: TrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                 perturbation=None, loss_fn=None, recipe: dict | None = None, overwrite: bool = False):
        self.cfg, self.out, self.overwrite = cfg, Path(out_dir), overwrite
        self.recipe = recipe or {"file": None, "overrides": []}  # recorded in score_hubert.pt
        self.method = get_method(cfg)
        self.rank, self.world, local_rank = dist_env()
        self.leader = self.rank == 0
        find_librispeech(data_root)  # a missing path fails before any model is built
        # before anything is written (every process reads; setup_device waits for all of them)
        check_out_dir(self.out, cfg.resume, overwrite, FINALS, TrainError)
        self.device = setup_device(cfg.device, local_rank, self.world)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if self.leader:
            self.out.mkdir(parents=True, exist_ok=True)

        # a process-specific seed for dropout; data order and views come from (seed, epoch, index)
        torch.manual_seed(cfg.seed + 1000 * self.rank)
        np.random.seed((cfg.seed + 1000 * self.rank) % 2**32)
        random.seed(cfg.seed + 1000 * self.rank)

        self.bundle = build_bundle(cfg)
        self.perturbation = perturbation if perturbation is not None else self.method.build_perturbation()
        self._build_data(data_root)
        self.loss_fn = loss_fn
        if loss_fn is None:
            from score_upstream.sdtw.divergence import soft_dtw_divergence

            self.loss_fn = soft_dtw_divergence
        self.model = self.method.build_model(self.bundle, cfg.seed).to(self.device)
        self.params = self.model.trainable_parameters()
        if self.world > 1:  # identical start on every process
            for p in self.params.values():
                dist.broadcast(p.data, 0)
        o = cfg.optim
        self.opt = build_optimizer(list(self.params.values()), o)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, o.total_steps, o.init_lr / o.lr, o.final_lr / o.lr))
        self.step, self.epoch, self.pos = 0, 0, 0  # pos: updates drawn from the data stream (skipped ones too)
        self.speech_seconds = 0.0  # view speech: audio through the trainable model so far (training.methods)
        self.input_seconds = 0.0  # input speech: original audio of the updates' drawn utterances so far
        self.nonfinite_in_row = 0
        self.failed_files: dict[str, str] = {}  # path -> why, each reported once
        self.history: list[dict] = []

    def _build_data(self, data_root) -> None:
        """Manifest (too-short files rejected), sampler, dataset and loader."""
        cfg, sr = self.cfg, self.cfg.data.sample_rate
        min_samples = min_utterance_samples(min_input_samples(conv_layout(self.bundle.model)), cfg.perturb.speeds, sr)
        self.utts, self.skipped_manifest = load_manifest(data_root, cfg.data.subsets, sr, cfg.data.max_seconds,
                                                         min_samples)
        if cfg.data.pack_seconds is None and len(self.utts) < cfg.data.utterances_per_update:
            raise DataError(f"{data_root}: {len(self.utts)} usable utterances, fewer than "
                            f"data.utterances_per_update={cfg.data.utterances_per_update}")
        self.sampler = make_sampler(cfg.data, [u.num_samples for u in self.utts], cfg.seed, self.rank, self.world)
        self.dataset = PairDataset(self.utts, None if cfg.perturb.on_device else self.perturbation, cfg.seed, sr,
                                   crop_samples(cfg.data))
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=UpdateCollate(cfg.data.batch_seconds, sr),
            num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=False, pin_memory=self.device.type == "cuda")

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        rng = _rng_state()
        if self.world > 1:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            FORMAT_VERSION_KEY: STATE_VERSION,
            "kind": "score_train_state",
            "step": self.step, "epoch": self.epoch, "pos": self.pos, "world_size": self.world,
            "nonfinite_in_row": self.nonfinite_in_row,
            "speech_seconds": self.speech_seconds,
            "input_seconds": self.input_seconds,
            "failed_files": dict(self.failed_files),
            "trainable": {n: p.detach().cpu().clone() for n, p in self.params.items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": rng_all,
            "config": config_to_dict(self.cfg),
        }

    def save_state(self) -> None:
        state = self.state_dict()  # collective when distributed: every process calls it
        if self.leader:
            path = atomic_save(state, self.out / f"state-{self.step:06d}.pt")
            prune_checkpoints(self.out, STATE_RE, self.cfg.keep_checkpoints)
            logger.info("saved %s", path)

    def load_state(self, path: Path, allow_config_change: bool = False) -> None:
        """Continue from ``path``; a changed recipe key (not in ``RUN_KEYS``) is refused unless allowed."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainError(f"{path}: cannot load training state ({e}); delete it to start over") from None
        if state.get("kind") != "score_train_state" or state.get(FORMAT_VERSION_KEY) != STATE_VERSION:
            raise TrainError(f"{path}: expected a score-train state of version {STATE_VERSION}, found "
                             f"{state.get('kind')!r} version {state.get(FORMAT_VERSION_KEY)!r} (version 1 states come "
                             "from before updates crossed epoch boundaries); finish that run with the code that "
                             "wrote it, or start over in a new --out directory")
        try:  # keys added since the state was written (method, model.family, ...) count at their defaults
            old_cfg = config_to_dict(config_from_dict(state["config"]))
        except ConfigError:
            old_cfg = state["config"]
        check_resume_config(path, old_cfg, config_to_dict(self.cfg), RUN_KEYS, allow_config_change, TrainError)
        missing = set(self.params) ^ set(state["trainable"])
        if missing:
            raise TrainError(f"{path}: trainable parameters differ from this config ({sorted(missing)[:3]} ...); "
                             "resume with the config the run started with")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["trainable"][n].to(p.device))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.pos = state["step"], state["epoch"], state["pos"]
        self.nonfinite_in_row = state["nonfinite_in_row"]
        self.speech_seconds = float(state.get("speech_seconds", 0.0))
        if "speech_seconds" not in state and self.leader:
            logger.warning("%s predates the processed-speech count: it counts from this start", path)
        self.input_seconds = float(state.get("input_seconds", 0.0))
        if "input_seconds" not in state and self.leader:
            logger.warning("%s predates the input-speech count: input speech counts from this start (step %d)",
                           path, state["step"])
        self.failed_files = dict(state["failed_files"])
        if state["world_size"] == self.world:
            _set_rng_state(state["rng"][self.rank])
        else:
            logger.warning("%s was written by %d processes, now %d: dropout RNG restarts from the seed",
                           path, state["world_size"], self.world)
        if self.leader:
            logger.info("resumed from %s at step %d (epoch %d, update %d of the data stream)", path, self.step,
                        self.epoch, self.pos)

    # --------------------------------------------------------------------------- unusable files
    def _fail(self, failures: dict, index: int, why: str) -> None:
        path = self.utts[index].path
        failures[path] = why if why.startswith(path) else f"{path}: {why}"

    def _record_failures(self, new: dict[str, str], any_new: bool) -> None:
        """Merge this update's unusable files of every process; report each file once; stop above the limit."""
        if self.world > 1 and any_new:
            gathered = [None] * self.world
            dist.all_gather_object(gathered, new)
            new = {k: v for d in gathered for k, v in d.items()}
        for path, why in sorted(new.items()):
            if path not in self.failed_files:
                self.failed_files[path] = why
                if self.leader:
                    logger.warning("skipping %s (%d unusable file(s) so far)", why, len(self.failed_files))
        limit = self.cfg.data.max_failed_fraction
        if len(self.failed_files) > limit * len(self.utts):
            raise TrainError(f"{self.failure_summary()}; more than data.max_failed_fraction={limit:g} of the "
                             "corpus: fix or remove those files, or raise data.max_failed_fraction")

    def failure_summary(self, show: int = 10) -> str:
        items = sorted(self.failed_files.values())
        more = f"\n  ... and {len(items) - show} more" if len(items) > show else ""
        return (f"{len(items)} of {len(self.utts)} utterances ({len(items) / len(self.utts):.1%}) could not be "
                "loaded, perturbed or encoded:\n  " + "\n  ".join(items[:show]) + more)

    # --------------------------------------------------------------------------------------- update
    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def _perturb_on_device(self, orig: Originals, failures: dict) -> list[MicroBatch]:
        """Perturb the update's originals batched on the device, then cut (view, view) micro-batches.

        When the batch fails, each item is perturbed alone to find the file(s) at fault.
        """
        wav = orig.wav.to(self.device, non_blocking=True)
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, self.pos, *orig.indices))
        try:
            done = [(list(range(len(orig.indices))), self.perturbation.batch(wav, orig.lengths, g))]
        except ITEM_ERRORS as e:
            if _out_of_memory(e):
                raise
            done = []
            for b, index in enumerate(orig.indices):
                try:
                    done.append(([b], self.perturbation.batch(wav[b:b + 1, :int(orig.lengths[b])],
                                                              orig.lengths[b:b + 1], g)))
                except ITEM_ERRORS as e1:
                    if _out_of_memory(e1):
                        raise
                    self._fail(failures, index, f"cannot be perturbed ({type(e1).__name__}: {e1})")
        students, targets, indices = [], [], []
        for items, (view, view_len, draws) in done:
            for k, b in enumerate(items):
                o, p = wav[b, : int(orig.lengths[b])], view[k, : int(view_len[k])]
                s, t = (p, o) if draws[k]["student_gets_perturbed"] else (o, p)
                students.append(s)
                targets.append(t)
                indices.append(orig.indices[b])
        if not indices:
            return []
        return cut_micro_batches(students, targets, indices, int(self.cfg.data.batch_seconds * self.cfg.data.sample_rate))

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _backward(self, mb: MicroBatch, failures: dict) -> tuple[torch.Tensor, int, float]:
        """Forward and backward of one micro-batch: ``(summed pair losses, pairs, processed seconds)``.

        A micro-batch that cannot be encoded is retried pair by pair; a pair that still fails is reported
        and left out. Where the method's pairs are not independent (SPIN's Sinkhorn batch), each pair is only
        tried alone without gradient to find the failing ones, and the rest is trained as one batch again.
        """
        try:
            div = self.method.pair_losses(self.model, mb, self.device, self._autocast, self.loss_fn)
        except ITEM_ERRORS as e:
            if _out_of_memory(e):
                raise
            if len(mb.indices) > 1 and self.method.pairs_independent:
                parts = [self._backward(mb.select(k), failures) for k in range(len(mb.indices))]
                return (sum((p[0] for p in parts), torch.zeros((), device=self.device)), sum(p[1] for p in parts),
                        sum(p[2] for p in parts))
            if len(mb.indices) > 1:
                good = [k for k in range(len(mb.indices)) if self._encodes_alone(mb, k, failures)]
                if len(good) == len(mb.indices):
                    raise TrainError(f"a {self.method.name} batch failed although each of its {len(good)} "
                                     f"utterances encodes alone: {type(e).__name__}: {e}") from e
                if good:
                    return self._backward(mb.subset(good), failures)
                return torch.zeros((), device=self.device), 0, 0.0
            self._fail(failures, mb.indices[0], f"cannot be encoded ({type(e).__name__}: {e})")
            return torch.zeros((), device=self.device), 0, 0.0
        div.sum().backward()
        return div.detach().sum(), len(mb.indices), self.method.processed_seconds(mb)

    def _encodes_alone(self, mb: MicroBatch, k: int, failures: dict) -> bool:
        """Whether pair ``k`` of ``mb`` goes through the method alone (no gradient); reports it if not."""
        try:
            with torch.no_grad():
                self.method.pair_losses(self.model, mb.select(k), self.device, self._autocast, self.loss_fn)
            return True
        except ITEM_ERRORS as e:
            if _out_of_memory(e):
                raise
            self._fail(failures, mb.indices[k], f"cannot be encoded ({type(e).__name__}: {e})")
            return False

    def train_update(self, batch: UpdateBatch) -> dict | None:
        """Forward/backward over the micro-batches, sum gradients over processes, step. None if skipped."""
        failures: dict[str, str] = {}
        for index, why in batch.failed:
            self._fail(failures, index, why)
        micro = batch.micro if batch.originals is None else self._perturb_on_device(batch.originals, failures)
        loss_sum, pairs, speech = torch.zeros((), device=self.device), 0, 0.0
        for mb in micro:
            loss, n, seconds = self._backward(mb, failures)
            loss_sum, pairs, speech = loss_sum + loss, pairs + n, speech + seconds
        params = list(self.params.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        extra = torch.tensor([speech, float(pairs), batch.audio_seconds, float(len(failures))], device=self.device)
        flat = self._all_reduce(torch.cat([g.reshape(-1) for g in grads] + [loss_sum.reshape(1), extra]))
        speech, total_pairs, audio_seconds = float(flat[-4]), int(flat[-3]), float(flat[-2])
        self._record_failures(failures, bool(flat[-1] > 0))
        if total_pairs == 0:
            self.opt.zero_grad(set_to_none=True)
            logger.warning("update at step %d had no usable utterance; skipped", self.step + 1)
            return None
        flat /= total_pairs  # each pair weighs 1 / pairs of the update, as batch 1 x accumulation
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        loss = float(flat[-5])
        clip = self.cfg.optim.grad_clip
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if not (math.isfinite(loss) and torch.isfinite(gnorm)):
            self.opt.zero_grad(set_to_none=True)
            self.nonfinite_in_row += 1
            logger.warning("step %d: non-finite loss %s / grad norm %s; update skipped (%d in a row, limit %d)",
                           self.step + 1, loss, float(gnorm), self.nonfinite_in_row, self.cfg.optim.max_nonfinite)
            if self.nonfinite_in_row >= self.cfg.optim.max_nonfinite:
                raise TrainError(f"{self.nonfinite_in_row} non-finite updates in a row at step {self.step + 1}; "
                                 "lower optim.lr or check the data (optim.max_nonfinite sets the limit)")
            return None
        self.nonfinite_in_row = 0
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.method.after_step(self.model)
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.speech_seconds += speech
        self.input_seconds += audio_seconds
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(gnorm), "audio_seconds": audio_seconds,
                "pairs": total_pairs, "speech_seconds": speech, "view_speech_hours": self.speech_seconds / 3600,
                "input_speech_hours": self.input_seconds / 3600}

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, allow_config_change: bool = False) -> dict:
        """Resume if asked, train to ``stop_at`` or ``optim.total_steps``, save; returns a summary dict."""
        if self.overwrite:
            if self.leader:
                clear_run(self.out, FINALS)
            if self.world > 1:
                dist.barrier()
        self._resume(allow_config_change)
        self._save_config()
        log = RunLog(self.out, self.cfg, self.step, self.leader)
        try:
            self._loop(log)
        finally:
            log.close()
        return self._finish()

    def _loop(self, log: RunLog) -> None:
        total = self.cfg.optim.total_steps
        stop = self.cfg.stop_at or total
        self.model.train()
        while self.step < stop:  # an update may be skipped: draw again until ``stop`` updates are done
            self.sampler.set_position(self.pos, self.pos + stop - self.step)
            for batch in self.loader:
                self.pos += 1
                self.epoch = self.sampler.epoch_of(self.pos)
                rec = self.train_update(batch)
                if rec is None:
                    continue
                log.record(rec)
                self.history.append(rec)
                if self.step % self.cfg.save_every == 0 or self.step in (total, stop):
                    self.save_state()

    def _resume(self, allow_config_change: bool) -> None:
        if self.cfg.resume == "false":
            return
        found = latest_state(self.out)
        if found is None and self.cfg.resume == "true":
            raise TrainError(f"{self.out}: resume=true but no state-NNNNNN.pt checkpoint there; use resume=auto "
                             "to start fresh when none exists")
        if found is not None:
            self.load_state(found, allow_config_change)

    def _save_config(self) -> None:
        """Log the resolved config; keep it as ``config.yaml`` (latest start) and ``config-<time>-<n>.yaml``."""
        if not self.leader:
            return
        cfg = self.cfg
        text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
        logger.info("resolved config:\n%s", text.rstrip())
        keep_config(self.out, text)
        atomic_write_bytes(text.encode(), self.out / "config.yaml")
        n_train = sum(p.numel() for p in self.params.values())
        logger.info("method %s: %d utterances (%.1f h), %.1f updates per epoch; %d trainable parameters in %d tensors; "
                    "device %s, %s, %d process(es)", cfg.method, len(self.utts),
                    sum(u.num_samples for u in self.utts) / cfg.data.sample_rate / 3600,
                    self.sampler.updates_per_epoch(), n_train, len(self.params), self.device,
                    "bf16 autocast" if self.bf16 else "fp32", self.world)

    def _finish(self) -> dict:
        final = self.save_final() if self.leader and self.step >= self.cfg.optim.total_steps else None
        if self.leader and final is None:
            logger.info("stopped at step %d of %d (stop_at); continue with resume=true", self.step,
                        self.cfg.optim.total_steps)
        if self.leader and self.failed_files:
            logger.warning("skipped during training: %s", self.failure_summary())
        if self.world > 1:
            dist.barrier()
        if self.leader:
            logger.info("input speech: %.4f h of original audio drawn over %d updates (%d utterances each); view "
                        "speech: %.4f h through the trainable model (%s)", self.input_seconds / 3600, self.step,
                        self.cfg.data.utterances_per_update, self.speech_seconds / 3600,
                        " + ".join(f"{v} view" for v in self.method.trainable_views))
        return {"step": self.step, "final": final, "history": self.history, "failed_files": sorted(self.failed_files),
                "skipped_manifest": self.skipped_manifest, "input_speech_hours": self.input_seconds / 3600,
                "view_speech_hours": self.speech_seconds / 3600, "speech_hours": self.speech_seconds / 3600}

    def save_final(self) -> Path:
        from score_upstream import __version__
        from score_upstream.models.loader import save_hf, save_s3prl

        extra = {"score": {"method": self.method.title, "method_name": self.cfg.method, "recipe": dict(self.recipe),
                           "input_speech_hours": self.input_seconds / 3600, "input_speech": INPUT_SPEECH,
                           "view_speech_hours": self.speech_seconds / 3600, "view_speech": self.method.view_speech(),
                           # the view count under its earlier name, for readers written before input speech
                           "processed_speech_hours": self.speech_seconds / 3600,
                           "processed_speech": self.method.view_speech(),
                           "version": __version__,
                           "steps": self.step, "init": self.cfg.model.init or "tiny (random)",
                           "trainable": list(self.model.trainable_names),
                           "unreadable_files": len(self.failed_files), "config": config_to_dict(self.cfg)}}
        name = f"score_{self.bundle.family}"  # score_hubert.pt / score_wavlm.pt, as the s3prl upstream is named
        path = save_s3prl(self.bundle, self.out / f"{name}.pt", extra=extra)
        logger.info("wrote %s", path)
        if self.cfg.save_hf:
            logger.info("wrote %s", save_hf(self.bundle, self.out / f"{name}_hf"))
        return path


def train(config: str | os.PathLike | TrainConfig | None, data: str | os.PathLike, out: str | os.PathLike,
          overrides: list[str] | tuple[str, ...] = (), allow_config_change: bool = False, overwrite: bool = False,
          **kwargs) -> dict:
    """Library entry: load the config (errors before any work), train, return a summary dict.

    ``overwrite=True`` deletes the run files ``out`` holds (states, logs, configs, final models) before
    training, as ``--overwrite``; without it (or ``resume``) a folder holding another run is refused.
    """
    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    recipe = {"file": None if isinstance(config, TrainConfig) or config is None else str(config),
              "overrides": list(overrides)}
    return Trainer(cfg, data, out, recipe=recipe, overwrite=overwrite, **kwargs).fit(allow_config_change)


def main(argv: list[str] | None = None) -> int:
    """``score-train CONFIG.yaml --data LIBRISPEECH_ROOT (--out DIR [--overwrite] | --plan) [key=value ...]``."""
    from score_upstream.native import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted
    from score_upstream.cliparse import ScoreArgumentParser

    ap = ScoreArgumentParser(prog="score-train", description=__doc__.split("\n\n")[0], examples=[
        "score-train recipes/score/tiny.yaml --data data/demo --out exp/score_tiny",
        "score-train recipes/score/small.yaml --data data/demo --out exp/score model.init=score_upstream/pretrained/hubert_small_synth.pt",
        "score-train recipes/score/hubert_base.yaml --data /data --plan"])
    ap.add_argument("config", help="YAML recipe, e.g. recipes/score/hubert_base.yaml")
    ap.add_argument("--data", required=True, help="directory holding LibriSpeech/<subset>/ (or the subsets)")
    ap.add_argument("--out", help="output directory (checkpoints, logs, score_hubert.pt / score_wavlm.pt); one run "
                    "per directory")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 model.init=PATH")
    ap.add_argument("--allow-config-change", action="store_true",
                    help="resume even though a recipe key differs from the checkpoint's (the change is logged)")
    ap.add_argument("--overwrite", action="store_true",
                    help="delete the run files --out holds (states, logs, configs, final models; nothing else) first")
    ap.add_argument("--plan", action="store_true",
                    help="print the updates and the speech the recipe will draw on --data, then exit (no training)")
    args = ap.parse_intermixed_args(argv)
    if args.plan:
        from score_upstream.training.plan import print_plan

        return run_cli("score-train", lambda: print_plan(args.config, args.data, args.overrides),
                       (ConfigError, DataError, AudioError))
    if args.out is None:
        ap.error("--out DIR is required (or --plan)")
    return run_cli("score-train", lambda: train(args.config, args.data, args.out, args.overrides, args.allow_config_change,
                                                overwrite=args.overwrite),
                   (ConfigError, DataError, AudioError, TrainError))


if __name__ == "__main__":
    sys.exit(main())
