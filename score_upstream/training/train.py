"""SCORE fine-tuning: soft-DTW correspondence between a HuBERT student and its frozen initial copy.

Run::

    score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --out exp/score \\
        model.init=/models/hubert_base_ls960.pt
    score-train recipes/score/tiny.yaml --data synth_root --out exp/tiny        # CPU, under a minute
    torchrun --nproc_per_node 8 -m score_upstream.training.train CONFIG.yaml --data ... --out ...   # same flags
    score-train CONFIG.yaml --data ... --out exp/score resume=auto                           # continue

Each update averages the soft-DTW divergence of ``data.utterances_per_update`` (view, view) pairs, each
pair normalised by its own N + M (SPEC §1). Processes split every update's utterances; their gradients
are summed with one all-reduce per update, so any micro-batching gives the same update as batch 1 x
accumulation. Outputs in ``--out``: ``score_hubert.pt`` (s3prl converted HuBERT format), resumable
``state-NNNNNN.pt`` checkpoints, ``train_log.csv``, ``config.yaml`` and TensorBoard events.
"""

from __future__ import annotations

import argparse
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
from score_upstream.training.config import ConfigError, TrainConfig, config_to_dict, load_config
from score_upstream.training.data import (DataError, MicroBatch, PairDataset, UpdateBatch, UpdateCollate, UpdateSampler,
                                 mix_seed, find_librispeech, load_manifest, pad_batch, split_micro_batches)
from score_upstream.training.model import ScoreModel

logger = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_RE = r"state-(\d+)\.pt"


class TrainError(RuntimeError):
    """Training cannot go on (bad checkpoint, repeated non-finite losses, ...)."""


# ----------------------------------------------------------------------------------------------- set-up
def _dist_env() -> tuple[int, int, int]:
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'device': {cfg.device!r} requested but no CUDA device is visible; use device=cpu")
    if cfg.device == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(cfg.device)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up from 0 over ``warmup`` updates, then linear decay to 0 at ``total``."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_bundle(cfg: TrainConfig):
    """The initial HuBERT: loaded from ``model.init`` (any format) or a fresh tiny one."""
    from score_upstream.models import hubert

    if cfg.model.tiny:
        return hubert.new_hubert(hubert.tiny_model_cfg(**cfg.model.tiny_overrides), seed=cfg.seed)
    path = Path(cfg.model.init)
    if not path.exists():
        raise ConfigError(f"config key 'model.init': {path} not found; give a fairseq .pt, an s3prl converted .pt "
                          "or a transformers directory")
    return hubert.load_hubert(path)


def build_perturbation(cfg: TrainConfig):
    """``ScorePerturbation`` from the ``perturb`` section, as a ``(wav, generator) -> wav`` callable."""
    from score_upstream.augment.perturb import ScorePerturbation

    p = cfg.perturb
    return ScorePerturbation(speed_factors=tuple(p.speeds), semitones=tuple(p.semitones),
                             pitch_method=p.pitch_method, sr=cfg.data.sample_rate)


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


def latest_state(out: Path) -> Path | None:
    import re

    rx = re.compile(STATE_RE)
    found = sorted((int(m.group(1)), p) for p in out.glob("state-*.pt") if (m := rx.fullmatch(p.name)))
    return found[-1][1] if found else None


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    """Holds everything of one run; :meth:`fit` trains to ``optim.total_steps``."""

    def __init__(self, cfg: TrainConfig, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                 perturbation=None, loss_fn=None):
        self.cfg, self.out = cfg, Path(out_dir)
        self.rank, self.world, local_rank = _dist_env()
        self.leader = self.rank == 0
        find_librispeech(data_root)  # a missing path fails before any model is built
        self.device = _device(cfg, local_rank)
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.leader:
            self.out.mkdir(parents=True, exist_ok=True)

        # a process-specific seed for dropout; data order and views come from (seed, epoch, index)
        torch.manual_seed(cfg.seed + 1000 * self.rank)
        np.random.seed((cfg.seed + 1000 * self.rank) % 2**32)
        random.seed(cfg.seed + 1000 * self.rank)

        self.utts, self.skipped_manifest = load_manifest(data_root, cfg.data.subsets, cfg.data.sample_rate,
                                                         cfg.data.max_seconds)
        lengths = [u.num_samples for u in self.utts]
        self.sampler = UpdateSampler(lengths, cfg.data.utterances_per_update, cfg.seed, self.rank, self.world,
                                     cfg.data.bucket_window)
        if self.sampler.updates_per_epoch() == 0:
            raise DataError(f"{data_root}: {len(self.utts)} usable utterances, fewer than "
                            f"data.utterances_per_update={cfg.data.utterances_per_update}")
        if loss_fn is None:
            from score_upstream.sdtw.divergence import soft_dtw_divergence as loss_fn
        self.loss_fn = loss_fn
        if perturbation is None:
            perturbation = build_perturbation(cfg)
        self.perturbation = perturbation
        self.dataset = PairDataset(self.utts, None if cfg.perturb.on_device else perturbation, cfg.seed,
                                   cfg.data.sample_rate)
        self.loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, collate_fn=UpdateCollate(cfg.data.batch_seconds,
                                                                                cfg.data.sample_rate),
            num_workers=cfg.data.num_workers, generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=False, pin_memory=self.device.type == "cuda")

        self.bundle = build_bundle(cfg)
        self.model = ScoreModel(self.bundle, cfg.model, seed=cfg.seed).to(self.device)
        self.params = self.model.trainable_parameters()
        if self.world > 1:  # identical start on every process
            for p in self.params.values():
                dist.broadcast(p.data, 0)
        o = cfg.optim
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                     weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, o.warmup_steps, o.total_steps))
        self.step, self.epoch, self.pos = 0, 0, 0
        self.nonfinite_in_row = 0
        self.failed_files: set[str] = set()
        self.history: list[dict] = []

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
            "failed_files": sorted(self.failed_files),
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

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainError(f"{path}: cannot load training state ({e}); delete it to start over") from None
        if state.get(FORMAT_VERSION_KEY) != STATE_VERSION or state.get("kind") != "score_train_state":
            raise TrainError(f"{path}: not a score-train state of version {STATE_VERSION} "
                             f"(found {state.get(FORMAT_VERSION_KEY)!r})")
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
        self.failed_files = set(state["failed_files"])
        if state["world_size"] == self.world:
            _set_rng_state(state["rng"][self.rank])
        else:
            logger.warning("%s was written by %d processes, now %d: dropout RNG restarts from the seed",
                           path, state["world_size"], self.world)
        if self.leader:
            logger.info("resumed from %s at step %d (epoch %d, update %d of it)", path, self.step, self.epoch, self.pos)

    # --------------------------------------------------------------------------------------- update
    def _all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def _perturb_on_device(self, batch: UpdateBatch) -> list[MicroBatch]:
        """Perturb the update's originals batched on the device, then cut (view, view) micro-batches."""
        mb = batch.micro[0]
        g = torch.Generator().manual_seed(mix_seed(self.cfg.seed, self.epoch, self.pos, *mb.indices))
        wav = mb.student.to(self.device)
        view, view_len, draws = self.perturbation.batch(wav, mb.student_lengths, g)
        pairs = []
        for b, d in enumerate(draws):
            o, p = wav[b, : int(mb.student_lengths[b])], view[b, : int(view_len[b])]
            pairs.append((p, o) if d["student_gets_perturbed"] else (o, p))
        longest = [max(s.numel(), t.numel()) for s, t in pairs]
        out = []
        for pos in split_micro_batches(longest, int(self.cfg.data.batch_seconds * self.cfg.data.sample_rate)):
            s, sl = pad_batch([pairs[i][0] for i in pos])
            t, tl = pad_batch([pairs[i][1] for i in pos])
            out.append(MicroBatch(s, sl, t, tl, [mb.indices[i] for i in pos]))
        return out

    def train_update(self, batch: UpdateBatch) -> dict | None:
        """Forward/backward over the micro-batches, sum gradients over processes, step. None if skipped."""
        for msg in batch.failed:
            if msg not in self.failed_files:
                self.failed_files.add(msg)
                logger.warning("skipping unreadable utterance: %s", msg)
        n_pairs = self._all_reduce(torch.tensor([float(batch.num_pairs)], device=self.device))
        total_pairs = int(n_pairs.item())
        if total_pairs == 0:
            logger.warning("update at step %d had no readable utterance; skipped", self.step)
            return None
        loss_sum = torch.zeros((), device=self.device)
        micro = self._perturb_on_device(batch) if batch.originals else batch.micro
        for mb in micro:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                s, s_len, t, t_len = self.model(mb.student.to(self.device, non_blocking=True), mb.student_lengths,
                                                mb.target.to(self.device, non_blocking=True), mb.target_lengths)
            div = self.loss_fn(s.float(), t.float(), s_len, t_len, gamma=self.cfg.loss.gamma,
                               normalize=self.cfg.loss.normalize)
            (div.sum() / total_pairs).backward()
            loss_sum += div.detach().sum()
        params = list(self.params.values())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss_sum.reshape(1),
                                                          torch.tensor([batch.audio_seconds], device=self.device)])
        flat = self._all_reduce(flat)
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        loss = float(flat[-2]) / total_pairs
        audio_seconds = float(flat[-1])
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
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": float(gnorm), "audio_seconds": audio_seconds,
                "pairs": total_pairs}

    # ------------------------------------------------------------------------------------------ fit
    def fit(self) -> dict:
        cfg, total = self.cfg, self.cfg.optim.total_steps
        stop = cfg.stop_at or total
        if cfg.resume != "false":
            found = latest_state(self.out) if self.out.is_dir() else None
            if found is None and cfg.resume == "true":
                raise TrainError(f"{self.out}: resume=true but no state-NNNNNN.pt checkpoint there; use resume=auto "
                                 "to start fresh when none exists")
            if found is not None:
                self.load_state(found)
        if self.leader:
            resolved = config_to_dict(cfg)
            logger.info("resolved config:\n%s", yaml.safe_dump(resolved, sort_keys=False).rstrip())
            atomic_write_bytes(yaml.safe_dump(resolved, sort_keys=False).encode(), self.out / "config.yaml")
            n_train = sum(p.numel() for p in self.params.values())
            logger.info("%d utterances (%.1f h), %d updates per epoch; %d trainable parameters in %d tensors; "
                        "device %s, %s, %d process(es)", len(self.utts),
                        sum(u.num_samples for u in self.utts) / cfg.data.sample_rate / 3600,
                        self.sampler.updates_per_epoch(), n_train, len(self.params), self.device,
                        "bf16 autocast" if self.bf16 else "fp32", self.world)
        csv_file = writer = tb = bar = None
        if self.leader:
            new = not (self.out / "train_log.csv").exists()
            csv_file = open(self.out / "train_log.csv", "a", newline="")
            writer = csv.writer(csv_file)
            if new:
                writer.writerow(["step", "loss", "lr", "grad_norm", "audio_seconds", "audio_s_per_s", "wall_s"])
            try:
                from tensorboardX import SummaryWriter

                tb = SummaryWriter(str(self.out / "tb"))
            except ImportError:
                tb = None
            if cfg.progress:
                from tqdm import tqdm

                bar = tqdm(total=total, initial=self.step, desc="score-train", dynamic_ncols=True, file=sys.stderr)
        self.model.train()
        t0 = time.perf_counter()
        window_t, window_audio = time.perf_counter(), 0.0
        try:
            while self.step < stop:
                self.sampler.set_position(self.epoch, self.pos)
                for batch in self.loader:
                    self.pos += 1
                    rec = self.train_update(batch)
                    if rec is not None:
                        window_audio += rec["audio_seconds"]
                        rate = window_audio / max(1e-9, time.perf_counter() - window_t)
                        rec["audio_s_per_s"] = rate
                        self.history.append(rec)
                        if self.leader:
                            writer.writerow([rec["step"], f"{rec['loss']:.6f}", f"{rec['lr']:.6e}",
                                             f"{rec['grad_norm']:.4f}", f"{rec['audio_seconds']:.2f}", f"{rate:.1f}",
                                             f"{time.perf_counter() - t0:.1f}"])
                            if tb is not None:
                                for k in ("loss", "lr", "grad_norm", "audio_s_per_s"):
                                    tb.add_scalar(f"train/{k}", rec[k], rec["step"])
                            if bar is not None:
                                bar.update(1)
                                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", aps=f"{rate:.0f}")
                            if rec["step"] % cfg.log_every == 0 or rec["step"] == total:
                                line = (f"step {rec['step']:05d}/{total:05d} | loss {rec['loss']:.4f} | "
                                        f"lr {rec['lr']:.3e} | audio-s/s {rate:.1f}")
                                (bar.write(line) if bar is not None else logger.info(line))
                                csv_file.flush()
                        if rec["step"] % cfg.log_every == 0:
                            window_t, window_audio = time.perf_counter(), 0.0
                        if self.step % cfg.save_every == 0 or self.step in (total, stop):
                            self.save_state()
                    if self.step >= stop:
                        break
                else:
                    self.epoch, self.pos = self.epoch + 1, 0
        finally:
            if bar is not None:
                bar.close()
            if csv_file is not None:
                csv_file.close()
            if tb is not None:
                tb.close()
        final = self.save_final() if self.leader and self.step >= total else None
        if self.leader and final is None:
            logger.info("stopped at step %d of %d (stop_at); continue with resume=true", self.step, total)
        if self.world > 1:
            dist.barrier()
        return {"step": self.step, "final": final, "history": self.history, "failed_files": sorted(self.failed_files),
                "skipped_manifest": self.skipped_manifest}

    def save_final(self) -> Path:
        from score_upstream import __version__
        from score_upstream.models.hubert import save_hf, save_s3prl

        extra = {"score": {"method": "SCORE soft-DTW correspondence fine-tuning", "version": __version__,
                           "steps": self.step, "init": self.cfg.model.init or "tiny (random)",
                           "trainable": list(self.model.trainable_names),
                           "unreadable_files": len(self.failed_files), "config": config_to_dict(self.cfg)}}
        path = save_s3prl(self.bundle, self.out / "score_hubert.pt", extra=extra)
        logger.info("wrote %s", path)
        if self.cfg.save_hf:
            logger.info("wrote %s", save_hf(self.bundle, self.out / "score_hubert_hf"))
        return path


def train(config: str | os.PathLike | TrainConfig | None, data: str | os.PathLike, out: str | os.PathLike,
          overrides: list[str] | tuple[str, ...] = (), **kwargs) -> dict:
    """Library entry: load the config (errors before any work), train, return a summary dict."""
    cfg = config if isinstance(config, TrainConfig) else load_config(config, overrides)
    return Trainer(cfg, data, out, **kwargs).fit()


def main(argv: list[str] | None = None) -> int:
    """``score-train CONFIG.yaml --data LIBRISPEECH_ROOT --out DIR [key=value ...]``."""
    ap = argparse.ArgumentParser(prog="score-train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="YAML recipe, e.g. recipes/score/hubert_base.yaml")
    ap.add_argument("--data", required=True, help="directory holding LibriSpeech/<subset>/ (or the subsets)")
    ap.add_argument("--out", required=True, help="output directory (checkpoints, logs, score_hubert.pt)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-4 model.init=PATH")
    args = ap.parse_intermixed_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        train(args.config, args.data, args.out, args.overrides)
    except (ConfigError, DataError, AudioError, TrainError) as e:
        print(f"score-train: error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
