"""score-pretrain against fairseq's HuBERT, re-stated here from its sources (fairseq
``criterions/hubert_criterion.py``, ``models/hubert/hubert.py`` ``forward_targets``,
``examples/hubert/simple_kmeans/``): the loss and its normalisation by sample_size, the 100 Hz MFCC
labels and which of them each 50 Hz model frame takes (lengths at the ends of utterances included), the
k-means sample and restarts; and that the shipped model's recipes still set what made it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F

from score_upstream.pretrain import labels as L
from score_upstream.pretrain.config import PretrainLossConfig, load_pretrain_config
from score_upstream.pretrain.trainer import NUM_SPECIALS, CropBatches, Pretrainer, objective, prediction_sums
from score_upstream.training.data import Utterance

pytestmark = pytest.mark.compat_env  # torchaudio's Kaldi MFCC and scikit-learn's k-means

REPO = Path(__file__).resolve().parents[1]
SR = 16000


# ---------------------------------------------------------------------------------------------- the loss
def fairseq_loss(logits, targets, mask, features_pen, nomask_weight, loss_weight):
    """fairseq's HubertCriterion as its source reads, on per-frame logits over the labels.

    ``logits``: (B, T, C); ``targets``: (B, T); ``mask``: (B, T) bool, True = masked. The criterion sums the
    cross-entropy over masked frames (``pred_masked_weight`` 1), adds ``pred_nomask_weight`` times the sum over
    unmasked frames when that weight is > 0, counts sample_size = masked frames (+ unmasked frames when the
    weight is > 0), adds ``loss_weights[0] * features_pen * sample_size``; the trainer divides the gradient
    by sample_size. Returns the loss divided by sample_size (the value whose gradient is applied).
    """
    nll = -F.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    loss = nll[mask].sum()
    sample_size = int(mask.sum())
    if nomask_weight > 0:
        loss = loss + nomask_weight * nll[~mask].sum()
        sample_size += int((~mask).sum())
    loss = loss + loss_weight * features_pen.double() * sample_size
    return loss / sample_size


def old_loss(logits, targets, mask, features_pen, nomask_weight, loss_weight):
    """What made the shipped model: (CE_m + w CE_u) / masked frames + loss_weight x penalty."""
    nll = -F.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    return (nll[mask].sum() + nomask_weight * nll[~mask].sum()) / int(mask.sum()) + loss_weight * features_pen.double()


def target_first(logits, targets, select):
    """HubertModel's logits of the selected frames: the target's column first (compute_logits), then the rest."""
    rows, t = logits[select], targets[select]
    other = torch.ones_like(rows, dtype=torch.bool).scatter(1, t[:, None], False)
    return torch.cat([rows.gather(1, t[:, None]), rows[other].view(rows.shape[0], -1)], 1)


def fixed_batch(seed=0, B=3, T=50, C=12):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, C, generator=g, dtype=torch.float64)).requires_grad_()
    targets = torch.randint(C, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.6
    pen = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    return logits, targets, mask, pen


def ours(logits, targets, mask, pen, loss_cfg):
    sums = prediction_sums(target_first(logits, targets, mask), target_first(logits, targets, ~mask))
    return objective(sums["ce_m"], sums["ce_u"], pen, sums["n_m"], sums["n_u"], loss_cfg)


@pytest.mark.parametrize("weight", [0.5, 0.0])
def test_loss_is_fairseqs_criterion_normalised_by_sample_size(weight):
    logits, targets, mask, pen = fixed_batch()
    cfg = PretrainLossConfig(unmasked_weight=weight, features_penalty=10.0)
    assert cfg.normalisation == "sample_size"  # the default
    want = fairseq_loss(logits, targets, mask, pen, weight, 10.0)
    got = ours(logits, targets, mask, pen, cfg)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    g_want = torch.autograd.grad(want, (logits, pen))
    g_got = torch.autograd.grad(got, (logits, pen))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_masked_frames_normalisation_is_the_shipped_models_loss():
    logits, targets, mask, pen = fixed_batch()
    cfg = PretrainLossConfig(unmasked_weight=0.5, features_penalty=10.0, normalisation="masked_frames")
    old = old_loss(logits, targets, mask, pen, 0.5, 10.0).item()
    assert ours(logits, targets, mask, pen, cfg).item() == pytest.approx(old, rel=1e-12)
    new = fairseq_loss(logits, targets, mask, pen, 0.5, 10.0).item()
    print(f"fixed batch (3 x 50 frames, 12 labels, {int(mask.sum())} masked, penalty 0.37, w 0.5): "
          f"masked_frames {old:.6f}, sample_size {new:.6f}")
    assert new < old  # the cross-entropy over 150 frames, not 88: the same sums over a larger count


def test_processes_sum_to_the_single_process_loss():
    """Each process's share, normalised by the sample_size of all of them, sums to the whole batch's loss (as
    fairseq sums loss and sample_size over GPUs before dividing)."""
    logits, targets, mask, pen = fixed_batch()
    cfg = PretrainLossConfig(unmasked_weight=0.5)
    parts, pens = [(0, 1), (1, 3)], [torch.tensor(0.2, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)]
    sums = [prediction_sums(target_first(logits[a:b], targets[a:b], mask[a:b]),
                            target_first(logits[a:b], targets[a:b], ~mask[a:b])) for a, b in parts]
    tm, tu = sum(s["n_m"] for s in sums), sum(s["n_u"] for s in sums)
    shares = sum(objective(s["ce_m"], s["ce_u"], p, s["n_m"], s["n_u"], cfg, tm, tu, world=2) for s, p in zip(sums, pens))
    nll = -F.log_softmax(logits.double(), -1).gather(-1, targets[..., None])[..., 0]
    ss = [int(mask[a:b].numel()) for a, b in parts]  # masked + unmasked frames of each process
    want = (nll[mask].sum() + 0.5 * nll[~mask].sum() + 10.0 * sum(p * n for p, n in zip(pens, ss))) / sum(ss)
    assert shares.item() == pytest.approx(want.item(), rel=1e-12)


# ------------------------------------------------------------------------------------ 100 Hz labels
def fairseq_forward_targets(feat_tsz: int, targets: torch.Tensor, label_rate: int, feat_rate: int = 50):
    """fairseq ``HubertModel.forward_targets`` for one utterance: ``(frames kept, their targets)``."""
    ratio = label_rate / feat_rate
    if ratio * feat_tsz > targets.shape[0]:
        feat_tsz = int(targets.shape[0] / ratio)
    inds = (torch.arange(feat_tsz).float() * ratio).long()
    return feat_tsz, targets[inds]


def cnn_frames(n: int) -> int:
    from score_upstream.models.hubert import new_hubert, tiny_model_cfg
    from score_upstream.training.model import conv_layout, frame_lengths

    if not hasattr(cnn_frames, "layout"):
        cnn_frames.layout = conv_layout(new_hubert(tiny_model_cfg()).model)
    return int(frame_lengths(torch.tensor([n]), cnn_frames.layout)[0])


def test_mfcc_frame_2i_sees_the_window_of_model_frame_i():
    """At 100 Hz, MFCC frame 2i is computed from exactly the 400 samples model frame i sees (320 i ...)."""
    import torchaudio

    wav = torch.randn(SR, generator=torch.Generator().manual_seed(1)) * 0.1
    feats = L.mfcc_features(wav, SR, rate=100)
    assert feats.shape == (L.num_label_frames(SR, 100), 39) == ((SR - 400) // 160 + 1, 39)
    for i in (0, 1, 7, 24, cnn_frames(SR) - 1):
        alone = torchaudio.compliance.kaldi.mfcc(wav[None, 320 * i:320 * i + 400], sample_frequency=SR, use_energy=False,
                                                 dither=0.0)
        torch.testing.assert_close(feats[2 * i, :13], alone[0], rtol=1e-4, atol=1e-4)


def test_50hz_mfcc_is_unchanged():
    wav = torch.randn(8000, generator=torch.Generator().manual_seed(2)) * 0.1
    import torchaudio

    m = torchaudio.compliance.kaldi.mfcc(wav[None], sample_frequency=SR, use_energy=False, frame_length=25.0,
                                         frame_shift=20.0, dither=0.0)
    assert torch.equal(L.mfcc_features(wav)[:, :13], m) and L.mfcc_features(wav).shape[0] == cnn_frames(8000)


@pytest.fixture(scope="module")
def utterance_files(tmp_path_factory):
    """Waveforms whose 100 Hz label count is odd and even, around the CNN's frame boundaries."""
    d = tmp_path_factory.mktemp("wavs")
    g = np.random.default_rng(0)
    out = []
    for n in (400, 559, 560, 719, 720, 879, 880, 4000, 4159, 4160, 16000, 16080, 16240):
        path = d / f"u{n}.wav"
        sf.write(path, (0.1 * g.standard_normal(n)).astype(np.float32), SR, subtype="FLOAT")
        out.append(Utterance(str(path), n))
    return out


def test_each_model_frame_takes_label_2i_and_ends_as_fairseq(utterance_files):
    """Whole utterances: the frames and targets of a crop equal fairseq's forward_targets on the CNN's frames
    and the 100 Hz labels (here the labels are the MFCC frame numbers); an odd label count loses the last
    model frame, as fairseq's check ``feat2tar_ratio * feat_tsz > targ_tsz`` does."""
    cfg = load_pretrain_config(REPO / "recipes/pretrain/tiny.yaml", ["data.crop_seconds=30", "data.min_seconds=0.03"])
    odd = even = 0
    for u in utterance_files:
        wav = torch.from_numpy(sf.read(u.path, dtype="float32")[0])
        n100 = L.mfcc_features(wav, SR, rate=100).shape[0]
        frame_ids = torch.arange(n100)
        kept, want = fairseq_forward_targets(cnn_frames(u.num_samples), frame_ids, 100)
        units = {u.path: L.model_rate(frame_ids, 100).to(torch.int16)}
        assert len(units[u.path]) == cnn_frames(u.num_samples)  # one stored label per CNN frame
        batches = CropBatches([u], units, cfg, rate=100)
        assert batches.frames(0) == kept
        crop, targets = batches.crops([0], seed=0, sr=SR)
        assert cnn_frames(crop.shape[1]) == kept and torch.equal(targets[0] - NUM_SPECIALS, want)
        assert torch.equal(crop[0], wav[:crop.shape[1]])
        odd, even = odd + n100 % 2, even + 1 - n100 % 2
    assert odd >= 3 and even >= 3


def test_crops_inside_utterances_keep_the_alignment(utterance_files):
    cfg = load_pretrain_config(REPO / "recipes/pretrain/tiny.yaml", ["data.crop_seconds=0.1", "data.min_seconds=0.05"])
    u = utterance_files[-1]
    wav = torch.from_numpy(sf.read(u.path, dtype="float32")[0])
    n100 = L.num_label_frames(u.num_samples, 100)
    units = {u.path: L.model_rate(torch.arange(n100), 100).to(torch.int16)}
    batches = CropBatches([u], units, cfg, rate=100)
    starts = set()
    for seed in range(8):
        crop, targets = batches.crops([0], seed=seed, sr=SR)
        first = int(targets[0, 0]) - NUM_SPECIALS
        assert first % 2 == 0
        start = first // 2  # model frame where the crop starts
        assert torch.equal(targets[0] - NUM_SPECIALS, first + 2 * torch.arange(targets.shape[1]))
        assert torch.equal(crop[0], wav[320 * start:320 * start + crop.shape[1]])
        starts.add(start)
    assert len(starts) > 1


def test_pretrainer_labels_100hz_mfcc(tiny_corpus, tmp_path):
    """The default config: labels.pt holds one unit per model frame, the k-means of the 100 Hz frames' every
    second one; the first update's loss is the objective of that update's sums."""
    cfg = load_pretrain_config(REPO / "recipes/pretrain/tiny.yaml", ["optim.total_steps=2", "optim.warmup_steps=0",
                                                                      "labels.clusters=8", "data.batch_crops=3"])
    tr = Pretrainer(cfg, tiny_corpus, tmp_path)
    assert tr.labels["rate"] == 100 and tr.labels["key"]["rate"] == 100
    centroids = tr.labels["centroids"].numpy()
    for u in tr.train[:3]:
        wav = torch.from_numpy(sf.read(u.path, dtype="float32")[0])
        f100 = L.mfcc_features(wav, SR, rate=100).numpy()
        nearest = ((f100[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        units = tr.labels["units"][u.path].long()
        assert len(units) == cnn_frames(u.num_samples)
        assert (units.numpy() == nearest[::2]).mean() > 0.99  # float32 ties aside
    # the update's loss is fairseq's: replay its batch and forward (same seeds), then train on it
    group = tr.batches.group(0, 0)
    tr._seed_step()
    from score_upstream.training.data import mix_seed

    wav, targets = tr.batches.crops(group, mix_seed(cfg.seed, 0, 0, 11), SR)
    r = tr._forward(wav, targets)
    ss = r["n_m"] + r["n_u"]
    want = (r["ce_m"].item() + 0.5 * r["ce_u"].item() + 10.0 * r["pen"].item() * ss) / ss
    rec = tr.train_update()
    assert rec["loss"] == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------------------- k-means
def test_kmeans_sample_is_every_frame_of_a_tenth_of_the_utterances():
    feats = [torch.full((5 + i, 2), float(i)) for i in range(30)]
    x = L.sample_frames(feats, None, seed=0, fraction=0.1)
    ids = sorted({int(v) for v in x[:, 0]})
    assert len(ids) == math.ceil(0.1 * 30) == 3
    assert x.shape[0] == sum(5 + i for i in ids)  # whole utterances
    # the shipped model's sample: 300,000 frames at most from all utterances, as before
    old = torch.cat(feats)
    old = old[torch.randperm(old.shape[0], generator=torch.Generator().manual_seed(0))[:100]].numpy()
    assert np.array_equal(L.sample_frames(feats, 100, seed=0, fraction=1.0), old)


def test_kmeans_defaults_are_fairseqs_and_reach_sklearn():
    cfg = load_pretrain_config(None, [])
    lab = cfg.labels
    assert (lab.n_init, lab.kmeans_fraction, lab.max_frames, lab.mfcc_rate) == (20, 0.1, None, 100)
    assert cfg.loss.normalisation == "sample_size"
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(40, 3, generator=g) for _ in range(20)]
    km = L.fit_kmeans(feats, clusters=4, seed=0, fraction=0.5, batch_size=64)
    p = km.get_params()
    assert (p["n_init"], p["max_iter"], p["tol"], p["max_no_improvement"], p["reassignment_ratio"], p["init"]) == \
        (20, 100, 0.0, 100, 0.0, "k-means++")


@pytest.mark.parametrize("name", ["small_iter1", "small_iter2"])
def test_shipped_models_recipes_keep_the_old_behaviour(name):
    cfg = load_pretrain_config(REPO / f"recipes/pretrain/{name}.yaml", ["labels.model=x.pt"])
    lab = cfg.labels
    assert cfg.loss.normalisation == "masked_frames"
    assert (lab.n_init, lab.kmeans_fraction, lab.max_frames) == (5, 1.0, 300_000)
    assert lab.features == "hubert" or lab.mfcc_rate == 50
    v2 = load_pretrain_config(REPO / f"recipes/pretrain/{name.replace('small', 'small_v2')}.yaml", ["labels.model=x.pt"])
    assert v2.loss.normalisation == "sample_size" and (v2.labels.n_init, v2.labels.kmeans_fraction) == (20, 0.1)
    assert v2.labels.mfcc_rate == 100 and v2.labels.max_frames is None
    # the rest of the recipe is the same, but iteration 2's length (3,600 updates, chosen on dev)
    for section in ("model", "data", "optim"):
        a, b = vars(getattr(v2, section)).copy(), vars(getattr(cfg, section)).copy()
        if section == "optim" and name == "small_iter2":
            assert (a.pop("total_steps"), a.pop("warmup_steps"), b.pop("total_steps"), b.pop("warmup_steps")) == (3600, 300, 1200, 100)
        assert a == b


def test_the_third_iteration_starts_from_the_second():
    cfg = load_pretrain_config(REPO / "recipes/pretrain/small_v2_iter3.yaml", ["labels.model=x.pt", "model.init=x.pt"])
    assert cfg.model.init == "x.pt" and cfg.loss.unmasked_weight == 0.0 and cfg.labels.layer == 1
    assert cfg.loss.normalisation == "sample_size" and (cfg.labels.n_init, cfg.labels.kmeans_fraction) == (20, 0.1)


def test_a_state_written_before_these_keys_resumes_with_the_old_settings(tiny_corpus, tmp_path):
    """A training state whose config lacks normalisation, mfcc_rate and kmeans_fraction ran with the old
    behaviour: resuming it with those settings set explicitly is no config change; with the defaults it is."""
    from score_upstream.pretrain.trainer import PretrainError

    legacy = ["loss.normalisation=masked_frames", "labels.mfcc_rate=50", "labels.kmeans_fraction=1.0",
              "labels.max_frames=20000", "labels.clusters=8", "data.batch_crops=3", "optim.total_steps=2",
              "optim.warmup_steps=0", "save_every=1", "valid_every=2"]
    recipe = REPO / "recipes/pretrain/tiny.yaml"
    Pretrainer(load_pretrain_config(recipe, legacy + ["stop_at=1"]), tiny_corpus, tmp_path).fit()
    state_path = tmp_path / "state-000001.pt"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["loss"]["normalisation"], state["config"]["labels"]["mfcc_rate"]
    del state["config"]["labels"]["kmeans_fraction"]
    torch.save(state, state_path)
    with pytest.raises(PretrainError, match="normalisation"):
        Pretrainer(load_pretrain_config(recipe, legacy[3:] + ["resume=true"]), tiny_corpus, tmp_path).fit()
    assert Pretrainer(load_pretrain_config(recipe, legacy + ["resume=true"]), tiny_corpus, tmp_path).fit()["step"] == 2
