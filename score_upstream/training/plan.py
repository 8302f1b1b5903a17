"""What a training recipe will draw from a corpus, without building or loading a model.

Run::

    score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --plan
    score-train recipes/spin/hubert_base.yaml --data /data/LibriSpeech --plan optim.total_steps=2000

The plan reads the manifest the trainer reads (file headers; the same subsets, sample rate, length limits
and too-short rule), then replays the trainer's data order (:class:`~score_upstream.training.data.UpdateSampler`,
a pure function of the seed) over ``optim.total_steps`` updates. It prints the updates, the utterances per
update, the corpus's mean utterance length and the speech the run will count (``training.methods``):

- input speech, the SCORE paper's count: the original audio drawn per update, summed over the updates.
  ``exact`` is the sum over the utterances the seed draws (what the run records when no file fails and no
  update is skipped); ``at the mean`` is updates x utterances per update x mean length, the paper's way
  (SCORE 3,600 x 8 x 12.7 s = 101.6 h; SPIN 5,000 x 256 s = 355.6 h).
  With SPIN's batching (``data.pack_seconds``, :mod:`.packing`) the exact count is over the cropped
  utterances of each packed update and ``at the mean`` is updates x ``pack_seconds``.
- view speech, expected: input speech times the method's views through the trainable model (SCORE the
  student's view, LASER and SPIN both views; a speed-perturbed view is ``1 / f`` as long).

Example output (40 files of LibriSpeech's 12.7 s mean length)::

    plan: recipes/score/hubert_base.yaml, method score, seed 0, on ls127 [train-clean-100]
      corpus:        40 usable utterances, 0.14 h, mean 12.70 s (skipped: none; shortest allowed 439 samples, ...)
      updates:       3600 (optim.total_steps), 8 utterances each (data.utterances_per_update), ~101.6 s of audio ...
      epochs:        720.000 (updates run across epoch boundaries)
      input speech:  101.60 h exact for this seed (3600 x 8 x 12.70 s = 101.60 h at the mean): ...
      view speech:   ~101.94 h expected (1.003 x input; audio of the views through the trainable model: student)
"""

from __future__ import annotations

import logging
import os
from typing import Any

from score_upstream.training import packing
from score_upstream.training.config import TrainConfig, load_config
from score_upstream.training.data import UpdateSampler, load_manifest, min_utterance_samples
from score_upstream.training.methods import get_method

logger = logging.getLogger(__name__)


def plan_conv_layout(cfg: TrainConfig) -> tuple[list[tuple[int, int]], str]:
    """``(kernel, stride)`` per CNN layer for the too-short rule, from the config alone, and where it came from.

    A tiny model's layout comes from its config; for ``model.init`` the checkpoint is not read and the
    Base CNN (HuBERT Base and WavLM Base+ share it: 400 samples give one frame) is assumed.
    """
    from score_upstream.models import hubert, wavlm
    from score_upstream.models.formats.hf import parse_conv_layers

    if cfg.model.tiny:
        make = wavlm.tiny_cfg if cfg.model.family == "wavlm" else hubert.tiny_model_cfg
        spec, source = make(**cfg.model.tiny_overrides)["conv_feature_layers"], "the tiny model's CNN"
    else:
        spec, source = hubert.BASE_CONV_LAYERS, "the Base CNN (model.init is not read)"
    return [(k, s) for _, k, s in parse_conv_layers(spec)], source


def drawn_samples(lengths: list[int], updates: int, per_update: int, seed: int, bucket_window: int = 0) -> int:
    """Samples of the utterances the trainer draws for updates ``0 .. updates - 1`` (all processes together;
    each utterance counted once per draw)."""
    sampler = UpdateSampler(lengths, per_update, seed, bucket_window=bucket_window)
    return sum(lengths[i] for u in range(updates) for i, _ in sampler.group(u))


def make_plan(cfg: TrainConfig, data_root: str | os.PathLike) -> dict[str, Any]:
    """The numbers of a run of ``cfg`` on ``data_root`` (see the module docstring), as a plain dict.

    Raises:
        DataError: the corpus or a subset is missing or holds no usable file.
    """
    from score_upstream.training.model import min_input_samples

    d, sr = cfg.data, cfg.data.sample_rate
    layout, layout_source = plan_conv_layout(cfg)
    min_samples = min_utterance_samples(min_input_samples(layout), cfg.perturb.speeds, sr)
    utts, skipped = load_manifest(data_root, d.subsets, sr, d.max_seconds, min_samples)
    lengths = [u.num_samples for u in utts]
    mean_s = sum(lengths) / len(lengths) / sr
    updates, per = cfg.optim.total_steps, d.utterances_per_update
    method = get_method(cfg)
    input_h = drawn_samples(lengths, updates, per, cfg.seed, d.bucket_window) / sr / 3600
    packed = {}
    if d.pack_seconds is not None:  # SPIN's batching: per-update counts vary; the nominal total is pack_seconds
        sampler = packing.make_sampler(d, lengths, cfg.seed)
        drawn = [packing.drawn_samples(sampler, u) for u in range(updates)]
        input_h = sum(drawn) / sr / 3600
        per = sum(len(sampler.group(u)) for u in range(updates)) / updates
        packed = {"pack_seconds": d.pack_seconds, "min_seconds": d.min_seconds, "crop_seconds": d.crop_seconds,
                  "seconds_per_update": sum(drawn) / sr / updates, "epochs": updates / sampler.updates_per_epoch(),
                  "input_speech_hours_at_mean": updates * d.pack_seconds / 3600}
    return {
        "method": cfg.method, "seed": cfg.seed, "data": str(data_root), "subsets": list(d.subsets),
        "utterances": len(utts), "corpus_hours": sum(lengths) / sr / 3600, "mean_seconds": mean_s,
        "skipped": dict(skipped), "min_samples": min_samples, "min_samples_from": layout_source,
        "updates": updates, "utterances_per_update": per, "seconds_per_update_at_mean": per * mean_s,
        "epochs": updates * per / len(utts),
        "input_speech_hours": input_h, "input_speech_hours_at_mean": updates * per * mean_s / 3600,
        "view_ratio": method.expected_view_ratio(), "view_speech_hours": input_h * method.expected_view_ratio(),
        "view_speech": method.view_speech(), **packed,
    }


def format_plan(plan: dict[str, Any], recipe: str = "") -> str:
    """The plan as the lines ``score-train --plan`` prints."""
    p = plan
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(p["skipped"].items())) or "none"
    if p.get("pack_seconds") is not None:
        crop = f", cropped to {p['crop_seconds']:g} s" if p.get("crop_seconds") else ""
        return "\n".join([
            f"plan: {recipe or 'config'}, method {p['method']}, seed {p['seed']}, on {p['data']} [{', '.join(p['subsets'])}]",
            f"  corpus:        {p['utterances']} usable utterances, {p['corpus_hours']:.2f} h, mean "
            f"{p['mean_seconds']:.2f} s (skipped: {skipped})",
            f"  updates:       {p['updates']} (optim.total_steps), packed to {p['pack_seconds']:g} s (data.pack_seconds; "
            f"utterances >= {p['min_seconds']:g} s{crop}): {p['utterances_per_update']:.1f} utterances, "
            f"~{p['seconds_per_update']:.1f} s of audio per update",
            f"  epochs:        {p['epochs']:.3f} (the last, incomplete pack of each epoch is left out)",
            f"  input speech:  {p['input_speech_hours']:.2f} h exact for this seed ({p['updates']} x "
            f"{p['pack_seconds']:g} s = {p['input_speech_hours_at_mean']:.2f} h nominal): original audio drawn per "
            "update, after cropping",
            f"  view speech:   ~{p['view_speech_hours']:.2f} h expected ({p['view_ratio']:.3f} x input; "
            f"{p['view_speech']})",
        ])
    return "\n".join([
        f"plan: {recipe or 'config'}, method {p['method']}, seed {p['seed']}, on {p['data']} [{', '.join(p['subsets'])}]",
        f"  corpus:        {p['utterances']} usable utterances, {p['corpus_hours']:.2f} h, mean "
        f"{p['mean_seconds']:.2f} s (skipped: {skipped}; shortest allowed {p['min_samples']} samples, from "
        f"{p['min_samples_from']})",
        f"  updates:       {p['updates']} (optim.total_steps), {p['utterances_per_update']} utterances each "
        f"(data.utterances_per_update), ~{p['seconds_per_update_at_mean']:.1f} s of audio per update at the mean",
        f"  epochs:        {p['epochs']:.3f} (updates run across epoch boundaries)",
        f"  input speech:  {p['input_speech_hours']:.2f} h exact for this seed ({p['updates']} x "
        f"{p['utterances_per_update']} x {p['mean_seconds']:.2f} s = {p['input_speech_hours_at_mean']:.2f} h at the "
        "mean): original audio drawn per update, the SCORE paper's count",
        f"  view speech:   ~{p['view_speech_hours']:.2f} h expected ({p['view_ratio']:.3f} x input; "
        f"{p['view_speech']})",
    ])


def print_plan(config: str | os.PathLike, data: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Load the recipe (``model.init`` may stay empty), make its plan on ``data``, print it; returns the plan."""
    cfg = load_config(config, overrides, need_model=False)
    plan = make_plan(cfg, data)
    print(format_plan(plan, str(config)), flush=True)
    return plan
