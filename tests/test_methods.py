"""LASER and SPIN on the shared trainer, from references: float64 loops, hand-computed cases, gradcheck,
Praat's own pitch and formant measurements, the authors' trainable-set rules, and tiny end-to-end runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import score_upstream.training.train as T
from score_upstream.models.hubert import load_hubert, new_hubert, tiny_model_cfg
from score_upstream.training.config import (METHOD_DEFAULTS, ConfigError, config_from_dict, config_to_dict,
                                            load_config)
from score_upstream.training.methods.laser import idm_regulariser
from score_upstream.training.methods.spin import sinkhorn, swapped_prediction
from score_upstream.training.model import select_trainable

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
FAST = ["data.utterances_per_update=4", "progress=false"]


# ------------------------------------------------------------------------------------------ SPIN loss
def _sinkhorn_loop(logits: list[list[float]], eps: float, iters: int) -> list[list[float]]:
    """SwAV's Sinkhorn-Knopp written out with Python floats: Q (K x B) = exp(l / eps)^T, scaled to sum 1,
    then per codeword to 1/K and per frame to 1/B, times B at the end."""
    B, K = len(logits), len(logits[0])
    q = [[math.exp(logits[b][k] / eps) for b in range(B)] for k in range(K)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        q = [[v / (sum(row) * K) for v in row] for row in q]
        cols = [sum(q[k][b] for k in range(K)) for b in range(B)]
        q = [[q[k][b] / (cols[b] * B) for b in range(B)] for k in range(K)]
    return [[q[k][b] * B for k in range(K)] for b in range(B)]


def test_sinkhorn_matches_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(7, 4, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1)
    logits = z @ c.T  # cosine similarities, as SPIN's unit codebook gives
    for iters in (1, 3):
        ours = sinkhorn(logits, eps=0.02, iters=iters)
        ref = torch.tensor(_sinkhorn_loop(logits.tolist(), 0.02, iters), dtype=torch.float64)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    q = sinkhorn(logits, 0.02, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(7, dtype=torch.float64))  # every frame is an assignment
    # float32 logits whose exp(l / eps) overflows without the shift still give finite targets
    assert torch.isfinite(sinkhorn(torch.full((3, 2), 2.0), eps=0.02)).all()


def test_swapped_prediction_on_a_hand_checked_case():
    # 2 frames x 2 codewords. a = eps ln 3 makes exp(a / eps) = 3, so the balanced Sinkhorn targets are
    # [[3/4, 1/4], [1/4, 3/4]]; with x = a / temperature, softmax rows are [s(x), s(-x)] (s = sigmoid).
    eps, temp = 0.02, 0.1
    a = eps * math.log(3.0)
    x = a / temp
    log_s = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    same = torch.tensor([[a, 0.0], [0.0, a]], dtype=torch.float64)
    swapped = torch.tensor([[0.0, a], [a, 0.0]], dtype=torch.float64)
    # both views agree: each predicts the other's targets well
    expected = -(0.75 * log_s(x) + 0.25 * log_s(-x))
    assert swapped_prediction(same, same, temp, eps, 3).item() == pytest.approx(expected, rel=1e-12)
    # view 2 assigns each frame the other codeword: each view's prediction meets the other's swapped target
    expected = -(0.75 * log_s(-x) + 0.25 * log_s(x))
    assert swapped_prediction(same, swapped, temp, eps, 3).item() == pytest.approx(expected, rel=1e-12)
    # targets carry no gradient: d loss / d logits_1 = 1/2 (softmax(l1 / T) - q2) / (B T)
    l1 = same.clone().requires_grad_(True)
    swapped_prediction(l1, swapped, temp, eps, 3).backward()
    p1 = torch.softmax(same / temp, 1)
    q2 = sinkhorn(swapped, eps, 3)
    torch.testing.assert_close(l1.grad, 0.5 * (p1 - q2) / (2 * temp))


# ------------------------------------------------------------------------------------------ LASER loss
def test_idm_regulariser_on_hand_computed_cases():
    # frames at 0, 1 and 3 on a line (+ one padding frame that must not count): distances d01 = 1,
    # d02 = 3, d12 = 2; g = (i - j)^2 + 1 = 2, 5, 2.
    x = torch.tensor([[[0.0], [1.0], [3.0], [99.0]]], dtype=torch.float64)
    n = torch.tensor([3])
    # sigma 0: every off-diagonal pair is "far": g max(0, 1.1 - d) -> only (0,1): 2 x 0.1, both orders
    assert idm_regulariser(x, n, sigma=0, margin=1.1).item() == pytest.approx(2 * 2 * 0.1 / 9, rel=1e-12)
    # sigma 1: (0,1), (1,2) are neighbours: d / g = 1/2 and 2/2, both orders; (0,2) far: 5 max(0, 1.1 - 3) = 0
    assert idm_regulariser(x, n, sigma=1, margin=1.1).item() == pytest.approx(2 * (0.5 + 1.0) / 9, rel=1e-12)
    # margin 4: (0,2) far with 5 (4 - 3) = 5, (0,1) and (1,2) neighbours as above
    assert idm_regulariser(x, n, sigma=1, margin=4.0).item() == pytest.approx(2 * (0.5 + 1.0 + 5.0) / 9, rel=1e-12)
    # batch of one and batch with a longer neighbour agree (padding never enters)
    other = torch.randn(1, 4, 1, dtype=torch.float64)
    both = idm_regulariser(torch.cat([x, other]), torch.tensor([3, 4]), sigma=0, margin=1.1)
    assert both[0].item() == pytest.approx(2 * 2 * 0.1 / 9, rel=1e-12)


def test_idm_regulariser_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    n = torch.tensor([5, 3])
    for sigma in (0, 1):
        assert torch.autograd.gradcheck(lambda v: idm_regulariser(v, n, sigma=sigma, margin=1.1), (x,))
    # identical frames (zero distance) give a zero, not a NaN, gradient
    same = torch.ones(1, 3, 2, dtype=torch.float64, requires_grad=True)
    idm_regulariser(same, sigma=0, margin=1.1).backward()
    assert torch.isfinite(same.grad).all()


# -------------------------------------------------------------------------------- SPIN perturbation
def _vowel(f0: float, sr: int = 16000, seconds: float = 1.0) -> np.ndarray:
    """A harmonic test signal: harmonics of ``f0`` shaped by resonances at 600, 1,500 and 2,500 Hz."""
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for h in range(1, int(5000 / f0)):
        f = h * f0
        amp = sum(1 / math.sqrt((1 - (f / F) ** 2) ** 2 + (f * bw / F ** 2) ** 2)
                  for F, bw in ((600, 60), (1500, 80), (2500, 100)))
        x += amp * np.sin(2 * np.pi * f * t + 0.1 * h * h)
    return 0.3 * x / np.abs(x).max()


def _formant_scale(x: np.ndarray, y: np.ndarray, sr: int = 16000) -> float:
    """The frequency scale that best maps ``x``'s spectral envelope onto ``y``'s (how far the formants
    moved): cepstrally smoothed log spectra (lifter 25 samples, below the F0 periods), compared over
    400-3,500 Hz up to a gain, on a grid from 0.65 to 1.55. On the harmonic test signal this is within
    ~6 % of Praat's formant ratio for any F0 change, where LPC formants lock onto harmonics."""
    n = 2 ** 15

    def envelope(w):
        seg = w[int(0.2 * sr):int(0.8 * sr)]
        ceps = np.fft.irfft(np.log(np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n)) + 1e-6))
        ceps[25:-25] = 0
        return np.fft.rfft(ceps).real

    f = np.fft.rfftfreq(n, 1 / sr)
    band = (f > 400) & (f < 3500)
    ex, ey = envelope(x), envelope(y)[band]
    grid = np.exp(np.linspace(math.log(0.65), math.log(1.55), 401))
    errors = [np.var(np.interp(f[band] / s, f, ex) - ey) for s in grid]
    return float(grid[int(np.argmin(errors))])


def test_speaker_perturbation_keeps_duration_and_moves_f0_and_formants_by_the_draw():
    from score_upstream.augment.speaker import SpeakerPerturbation, median_f0

    x = _vowel(120.0)  # F0 ratios in [1/2, 2] give 60-240 Hz, measured with a 50 Hz floor
    wav = torch.from_numpy(x.astype(np.float32))
    perturb = SpeakerPerturbation(eq_gain_db=0.0)  # the equaliser would bias the formant measurement
    f0 = median_f0(x, 16000, floor=50.0)
    assert _formant_scale(x, x) == pytest.approx(1.0, abs=0.01)
    seen = set()
    for seed in (0, 1, 2, 3):
        view = perturb(wav, torch.Generator().manual_seed(seed))
        d = view.draw
        assert view.wav.shape == wav.shape and view.wav.dtype == torch.float32 and d["formant_f0_applied"]
        y = view.wav.double().numpy()
        assert median_f0(y, 16000, floor=50.0) / f0 == pytest.approx(d["f0_ratio"], rel=0.02), d
        moved = _formant_scale(x, y)
        assert abs(math.log(moved / d["formant_ratio"])) < 0.07, (moved, d)
        seen.add((d["formant_ratio"] > 1, d["f0_ratio"] > 1))
    assert len(seen) >= 2  # raised and lowered draws both exercised


def test_speaker_perturbation_is_deterministic_per_seed_and_eq_keeps_length():
    from score_upstream.augment.speaker import SpeakerPerturbation

    wav = torch.from_numpy(_vowel(120.0, seconds=0.5).astype(np.float32))
    perturb = SpeakerPerturbation()
    a = perturb(wav, torch.Generator().manual_seed(5))
    b = perturb(wav, torch.Generator().manual_seed(5))
    c = perturb(wav, torch.Generator().manual_seed(6))
    assert torch.equal(a.wav, b.wav) and a.draw == b.draw and not torch.equal(a.wav, c.wav)
    assert a.wav.shape == wav.shape and float(a.wav.abs().max()) <= 1.0
    assert all(-12 <= gdb <= 12 for gdb in a.draw["eq_gains_db"]) and all(2 <= q <= 5 for q in a.draw["eq_qs"])
    # unvoiced input: the formant/F0 step is left out (as SPIN does on a Praat failure), the EQ still runs
    noise = torch.zeros(8000)
    v = perturb(noise, torch.Generator().manual_seed(0))
    assert not v.draw["formant_f0_applied"] and v.wav.shape == noise.shape


# ------------------------------------------------------------------------------------- trainable sets
def _authors_trainable(method: str) -> set[str]:
    """Each authors' freezing rule on a 12-layer HuBERT's parameter list (names and positions as s3prl's
    upstream wrapper numbers them, 1-based), leaving out the parameters no forward pass uses."""
    names = [n for n, _ in new_hubert(tiny_model_cfg(), seed=0).model.named_parameters()]
    unused = {"mask_emb", "label_embs_concat", "final_proj.weight", "final_proj.bias"}
    out = set()
    for count, name in enumerate(names, 1):
        full = "model." + name
        if method in ("score", "laser"):  # runner_part_freeze(_layers).py
            frozen = 2 < count < 177
            if not frozen and "model.layer_norm" in full:
                frozen = method == "laser"  # LASER sets requires_grad False there, SCORE True
        else:  # SPIN: freeze_layers ["pos", 0..10]; optimiser gets encoder.layers[10], [11] only
            frozen = not name.startswith(("encoder.layers.10.", "encoder.layers.11."))
        if not frozen and name not in unused:
            out.add(name)
    return out


@pytest.mark.parametrize("method", ["score", "laser", "spin"])
def test_default_trainable_set_is_the_authors(method):
    cfg = load_config(None, [f"method={method}", "model.tiny=true"])
    model = new_hubert(tiny_model_cfg(), seed=0).model
    assert set(select_trainable(model, cfg.model.trainable)) == _authors_trainable(method)
    if method != "score":
        base = load_config(RECIPES / method / "hubert_base.yaml", ["model.init=x.pt"])
        assert base.model.trainable == METHOD_DEFAULTS[method]["model.trainable"]
        assert "encoder.layer_norm." in base.model.trainable if method == "laser" else True
        assert "layer_norm." not in base.model.trainable


def test_spin_frozen_layers_build_no_graph():
    from score_upstream.training.data import MicroBatch

    cfg = load_config(RECIPES / "spin" / "tiny.yaml")
    method = T.get_method(cfg)
    model = method.build_model(new_hubert(tiny_model_cfg(), seed=0), seed=0)
    seen = {}
    for i in (9, 10):
        model.student.encoder.layers[i].register_forward_hook(
            lambda m, a, out, i=i: seen.__setitem__(i, out[0].requires_grad))
    wav = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(0))
    mb = MicroBatch(wav, torch.tensor([8000, 7000]), wav.flip(1), torch.tensor([8000, 7000]), [0, 1])
    import contextlib

    losses = method.pair_losses(model, mb, torch.device("cpu"), contextlib.nullcontext, None)
    assert seen == {9: False, 10: True} and losses.shape == (2,) and losses.requires_grad


# ------------------------------------------------------------------------------------------ config
def test_keys_of_other_methods_and_unknown_methods_fail_at_load():
    with pytest.raises(ConfigError, match=r"'loss\.idm_weight'.*laser"):
        load_config(RECIPES / "score" / "tiny.yaml", ["loss.idm_weight=0.4"])
    with pytest.raises(ConfigError, match=r"'loss\.codebook_size'.*spin"):
        load_config(RECIPES / "laser" / "tiny.yaml", ["loss.codebook_size=128"])
    with pytest.raises(ConfigError, match=r"'perturb\.speeds'"):
        load_config(RECIPES / "spin" / "tiny.yaml", ["perturb.speeds=[1.0]"])
    with pytest.raises(ConfigError, match=r"'model\.target_dropout'"):
        load_config(RECIPES / "laser" / "tiny.yaml", ["model.target_dropout=false"])
    with pytest.raises(ConfigError, match=r"'method'.*'score', 'laser', 'spin'"):
        load_config(RECIPES / "score" / "tiny.yaml", ["method=wav2vec"])
    # a section override reaches the same check
    with pytest.raises(ConfigError, match=r"'loss\.temperature'"):
        load_config(RECIPES / "score" / "tiny.yaml", ["loss={temperature: 0.2}"])


def test_bad_method_key_fails_before_any_work(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "never"
    assert T.main([str(RECIPES / "score" / "tiny.yaml"), "--data", str(tiny_corpus), "--out", str(out),
                   "loss.idm_weight=0.4"]) == 2
    assert "loss.idm_weight" in capsys.readouterr().err and not out.exists()
    assert T.main([str(RECIPES / "laser" / "tiny.yaml"), "--data", str(tiny_corpus), "--out", str(out),
                   "method=lasr"]) == 2
    assert "'method'" in capsys.readouterr().err and not out.exists()


def test_score_config_dict_is_unchanged_and_old_configs_read_as_score():
    cfg = load_config(RECIPES / "score" / "tiny.yaml")
    d = config_to_dict(cfg)
    assert "idm_weight" not in d["loss"] and "codebook_size" not in d["loss"] and "eq_gain_db" not in d["perturb"]
    old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items() if k != "method"}
    for k in ("name", "init_lr", "final_lr"):  # keys a state written before methods existed lacks
        old["optim"].pop(k)
    assert config_to_dict(config_from_dict(old)) == d
    laser = config_to_dict(load_config(RECIPES / "laser" / "tiny.yaml"))
    assert laser["method"] == "laser" and "target_dropout" not in laser["model"] and "codebook_size" not in laser["loss"]
    assert config_from_dict(laser) == load_config(RECIPES / "laser" / "tiny.yaml")


# ------------------------------------------------------------------------------------------ end to end
def _trainable(path: Path, prefixes: list[str]) -> dict[str, torch.Tensor]:
    sd = load_hubert(path).model.state_dict()
    return {k: v for k, v in sd.items() if k.startswith(tuple(prefixes))}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["laser", "spin"])
def test_tiny_recipe_lowers_loss_resumes_exactly_and_writes_its_provenance(method, tiny_corpus, tmp_path):
    recipe = RECIPES / method / "tiny.yaml"
    args = [*FAST, "optim.total_steps=8", "optim.warmup_steps=2", "save_every=4"]
    if method == "laser":
        args.append("perturb.pitch_method=fast")
    res = T.train(recipe, tiny_corpus, tmp_path / "a", args)
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.95 * sum(losses[:3]) / 3, losses
    first = T.train(recipe, tiny_corpus, tmp_path / "b", [*args, "stop_at=4"])
    assert first["final"] is None
    T.train(recipe, tiny_corpus, tmp_path / "b", [*args, "resume=true"])
    prefixes = load_config(recipe).model.trainable
    a, b = _trainable(tmp_path / "a" / "score_hubert.pt", prefixes), _trainable(tmp_path / "b" / "score_hubert.pt", prefixes)
    assert a and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    sa = torch.load(tmp_path / "a" / "state-000008.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "state-000008.pt", weights_only=True)
    for k in sa["trainable"]:  # head (and SPIN's codebook) too
        assert torch.allclose(sa["trainable"][k], sb["trainable"][k], atol=1e-6, rtol=0), k
    # processed speech: both views of every pair, summed over the updates; the same after a resume
    assert sa["speech_seconds"] == pytest.approx(sum(h["speech_seconds"] for h in res["history"]))
    assert sb["speech_seconds"] == pytest.approx(sa["speech_seconds"], rel=1e-9)
    assert sa["speech_seconds"] > 1.5 * sum(h["audio_seconds"] for h in res["history"])
    raw = torch.load(tmp_path / "a" / "score_hubert.pt", map_location="cpu", weights_only=True)
    info = raw["score"]
    assert info["method_name"] == method and info["recipe"]["file"] == str(recipe) and info["recipe"]["overrides"] == args
    assert info["processed_speech_hours"] == pytest.approx(sa["speech_seconds"] / 3600)
    if method == "spin":  # the codebook belongs to training only
        assert "codebook.weight" in sa["trainable"] and not any("codebook" in k for k in raw["model_weight"])
    import score_upstream

    score_upstream.register()
    from s3prl.nn import S3PRLUpstream

    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    outs = []
    for name in ("score_hubert", "hubert_local"):  # ours and s3prl's stock HuBERT expert
        up = S3PRLUpstream(name, path_or_url=str(tmp_path / "a" / "score_hubert.pt")).eval()
        with torch.no_grad():
            outs.append(up(wav, torch.tensor([16000]))[0])
    assert len(outs[0]) == len(outs[1]) == 13
    torch.testing.assert_close(outs[0][-1], outs[1][-1], rtol=0, atol=1e-5)


def test_results_table_carries_method_and_processed_speech(tmp_path):
    import json

    from score_upstream.report import results
    from score_upstream.report.render import markdown

    def experiment(name, kind, info):
        d = tmp_path / name
        (d / "pr" / "seed0").mkdir(parents=True)
        (d / "pr" / "seed0" / "test.log").write_text("test per: 0.0500\n")
        ckpt = tmp_path / f"{name}.pt"
        torch.save(info, ckpt)
        (d / "model.json").write_text(json.dumps({"name": name, "upstream": "score_hubert", "ckpt": str(ckpt),
                                                  "kind": kind}))
        return results.read_experiment(d)

    rows = [experiment("SCORE", "score", {"score": {"method": "SCORE soft-DTW correspondence fine-tuning",
                                                    "method_name": "score", "input_speech_hours": 101.0,
                                                    "processed_speech_hours": 101.0}}),
            experiment("SPIN", "spin", {"score": {"method_name": "spin", "input_speech_hours": 356.0,
                                                  "processed_speech_hours": 711.0}}),
            experiment("old", "score", {"score": {"method": "SCORE soft-DTW correspondence fine-tuning"}}),
            experiment("converted", "other", {"spin": {"source": "spin.ckpt"}})]
    table = {r["model"]: r for r in results.build_table(rows)}
    assert table["SCORE"]["train_method"] == "score" and table["SCORE"]["train_speech_h"] == 101.0
    assert table["SCORE"]["train_speech_vs_spin"] == pytest.approx(101.0 / 356.0)
    assert table["old"]["train_method"] == "score" and table["old"]["train_speech_h"] == results.MISSING
    assert table["converted"]["train_method"] == "spin (converted)"
    md = markdown(list(table.values()), [], "t")
    assert "| Method | Speech h | Speech vs SPIN | View h through model |\n|---|" in md  # checkpoints: the provenance footer
    assert "| score | 101.00 | 0.28x | 101.00 |" in md
