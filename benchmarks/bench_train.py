"""Training throughput (audio-seconds per second): the reference recipe's settings vs ours.

Run::

    python benchmarks/bench_train.py                       # tiny model on a fresh synthetic corpus, CPU
    python benchmarks/bench_train.py --data ROOT --model hubert_base_ls960.pt --updates 20   # real HuBERT
    python benchmarks/bench_train.py --model random-base     # HuBERT Base's size, random weights, synthetic speech

Both rows run the same trainer, model, loss and optimiser for ``--updates`` updates of 8 utterances:

* reference: batch 1 x accumulation 8, torchaudio's ``PitchShift`` in the training loop (no workers),
  soft-DTW one pair at a time;
* ours: micro-batches of up to ``--batch-seconds`` padded seconds with length bucketing, batched
  soft-DTW, pitch shifting in data-loader workers (or batched on the GPU with ``--on-device``); once with
  the reference pitch shift (the recipe's default) and once with the fast one.

The first update of each row is treated as warm-up and left out of the rate.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from score_upstream.training.config import load_config
from score_upstream.sdtw.divergence import soft_dtw_divergence
from score_upstream.training.train import Trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "score" / "tiny.yaml"
MEAN_UTT_S = 12.69  # train-clean-100: 100.6 h / 28,539 utterances
PAPER_AUDIO_S = 3600 * 8 * MEAN_UTT_S


def per_pair_divergence(x, y, x_lengths, y_lengths, gamma=0.1, normalize=True):
    """The reference recipe's way: one (unpadded) pair at a time."""
    return torch.cat([soft_dtw_divergence(x[b:b + 1, : int(x_lengths[b])], y[b:b + 1, : int(y_lengths[b])],
                                          gamma=gamma, normalize=normalize) for b in range(x.shape[0])])


@contextlib.contextmanager
def torchaudio_pitch_shift():
    """Within the block the reference pitch method is torchaudio's own ``PitchShift`` transform (dense
    resampling kernel), as the reference recipe runs it; ours computes the same numbers with a sparse one.
    In-process only: use it with ``data.num_workers=0``."""
    import torchaudio

    from score_upstream.augment import perturb

    saved, cache = perturb._reference_shifter, {}

    def shifter(sr, semitones, dtype, device):
        key = (sr, semitones, dtype, str(device))
        if key not in cache:
            cache[key] = torchaudio.transforms.PitchShift(sr, semitones, n_fft=perturb.N_FFT,
                                                          hop_length=perturb.HOP).to(device=device, dtype=dtype)
        return cache[key]

    perturb._reference_shifter = shifter
    try:
        yield
    finally:
        perturb._reference_shifter = saved


def run(name: str, data: str, overrides: list[str], loss_fn=None) -> dict:
    cfg = load_config(RECIPE, overrides)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, data, out, loss_fn=loss_fn)
        t0 = time.perf_counter()
        marks = []
        orig = trainer.train_update

        def timed(batch):
            rec = orig(batch)
            marks.append((time.perf_counter(), rec["audio_seconds"] if rec else 0.0))
            return rec

        trainer.train_update = timed
        trainer.fit()
    wall = marks[-1][0] - marks[0][0]
    audio = sum(a for _, a in marks[1:])
    return {"name": name, "updates": len(marks), "audio_s": audio, "wall_s": wall, "rate": audio / max(wall, 1e-9),
            "total_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="root holding LibriSpeech/ (default: a fresh tiny synthetic corpus)")
    ap.add_argument("--subset", default="train-clean-100")
    ap.add_argument("--model", help="initial HuBERT (any format), or 'random-base' for HuBERT Base's architecture "
                                    "with random weights; default: the tiny random model")
    ap.add_argument("--updates", type=int, default=2)
    ap.add_argument("--batch-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--on-device", action="store_true", help="ours: perturb batched on the device")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="training precision of every row (the paper: fp32; bf16 = autocast on a GPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    tmp = None
    data = args.data
    if data is None:
        from score_upstream.synth import generate

        tmp = tempfile.TemporaryDirectory()
        generate(tmp.name, seed=0, size="tiny")
        data = tmp.name
    if args.model == "random-base":
        from score_upstream.models.hubert import base_model_cfg, new_hubert, save_s3prl

        tmp_model = tempfile.TemporaryDirectory()
        args.model = save_s3prl(new_hubert(base_model_cfg(), seed=0), Path(tmp_model.name) / "hubert_base_random.pt")
        args.model_label = "random-weight HuBERT Base (95M)"
    n = args.updates + 1
    common = [f"optim.total_steps={n}", "optim.warmup_steps=1", f"save_every={n}", "progress=false",
              f"data.subsets=[{args.subset}]", f"device={args.device}", "data.utterances_per_update=8",
              f"precision={args.precision}"]
    if args.model:
        common += ["model.tiny=false", f"model.init={args.model}", "model.head_dim=256"]
    with torchaudio_pitch_shift():
        rows = [run("reference (1 x 8, torchaudio pitch in loop, per-pair sDTW)", data,
                    [*common, "data.batch_seconds=0.001", "data.num_workers=0", "perturb.pitch_method=reference"],
                    loss_fn=per_pair_divergence)]
    for pitch in ("reference", "fast"):  # reference pitch = the recipe's default (hubert_base.yaml)
        where = "on device" if args.on_device else f"in {args.workers} worker(s)"
        rows.append(run(f"ours (bucketed, {pitch} pitch {where}, batched sDTW)", data, [
            *common, f"data.batch_seconds={args.batch_seconds}", f"data.num_workers={0 if args.on_device else args.workers}",
            "data.bucket_window=4", f"perturb.pitch_method={pitch}", f"perturb.on_device={str(args.on_device).lower()}",
            "model.cnn_per_utterance=false"]))
    dev = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device.startswith("cuda") else "cpu"
    print(f"training throughput, {getattr(args, 'model_label', None) or args.model or 'tiny random HuBERT'}, {dev}, {args.precision}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.updates} timed updates of 8 utterances")
    print(f"{'setting':<66} {'audio-s':>8} {'wall-s':>8} {'audio-s/s':>10} {'ratio':>6} {'3,600 upd. (h)':>15}")
    for r in rows:
        print(f"{r['name']:<66} {r['audio_s']:>8.1f} {r['wall_s']:>8.2f} {r['rate']:>10.1f} "
              f"{r['rate'] / rows[0]['rate']:>5.2f}x {PAPER_AUDIO_S / r['rate'] / 3600:>15.2f}")
    print(f"(3,600 upd.: the paper's 3,600 updates x 8 utterances of train-clean-100's mean {MEAN_UTT_S} s, "
          "i.e. ~101 h of speech, at the measured rate)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
