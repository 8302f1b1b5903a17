"""WavLM end to end: formats, hidden states against s3prl's `wavlm_local` and transformers, training.

Tiny random WavLMs (real architecture: 12 layers, gated relative position bias, downsample 320) in
every format; nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from score_upstream.models.formats import CheckpointError, detect_format
from score_upstream.models.loader import load_model
from score_upstream.models.wavlm import load_wavlm, new_wavlm, save_hf, save_s3prl, tiny_cfg

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

ATOL = 1e-4
LENGTHS = (16000, 11200, 7437)  # one second and two shorter utterances padded in the same batch
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "score" / "wavlm_tiny.yaml"
TRAINABLE = ("encoder.layers.10.", "encoder.layers.11.", "layer_norm.", "encoder.layer_norm.")
FAST = ["data.utterances_per_update=4", "perturb.pitch_method=fast", "progress=false"]


def perturbed(bundle, seed=1):
    """Move every weight off its initial value (gates, bucket embedding and LayerNorms included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return bundle


@pytest.fixture(scope="module")
def registered():
    import score_upstream

    score_upstream.register()
    import s3prl.hub

    return s3prl.hub


@pytest.fixture(scope="module", params=["post_ln", "pre_ln"])
def ckpts(request, tmp_path_factory):
    """Base/Base+-style (post-LN, GroupNorm front-end) and Large-style (pre-LN, LayerNorm front-end,
    normalised input), as a unilm/s3prl .pt and a transformers directory."""
    root = tmp_path_factory.mktemp(f"wavlm_{request.param}")
    cfg = tiny_cfg() if request.param == "post_ln" else tiny_cfg(
        layer_norm_first=True, extractor_mode="layer_norm", conv_bias=True, normalize=True)
    bundle = perturbed(new_wavlm(cfg, seed=0))
    bundle.extra = {"score": {"steps": 3600}}
    return save_s3prl(bundle, root / "wavlm.pt"), save_hf(bundle, root / "hf")


@pytest.fixture(scope="module")
def wavs():
    gen = torch.Generator().manual_seed(7)
    return [0.1 * torch.randn(n, generator=gen) for n in LENGTHS]


def max_diff(xs, ys) -> float:
    return max((x - y).abs().max().item() for x, y in zip(xs, ys))


# ------------------------------------------------------------------------------------------- formats
def test_formats_detected_and_round_trips_lossless(ckpts, tmp_path):
    from score_upstream.models.convert import main as convert_main

    pt, hf = ckpts
    assert detect_format(pt) == "wavlm" and detect_format(hf) == "wavlm_hf"  # not fairseq's, not HuBERT's
    ref = load_wavlm(pt)
    assert ref.extra == {"score": {"steps": 3600}}
    # hf -> .pt and .pt -> hf -> .pt through score-convert
    assert convert_main([str(hf), str(tmp_path / "back.pt"), "--to", "s3prl"]) == 0
    assert convert_main([str(tmp_path / "back.pt"), str(tmp_path / "hf2"), "--to", "hf"]) == 0
    assert convert_main([str(tmp_path / "hf2"), str(tmp_path / "back2.pt"), "--to", "s3prl"]) == 0
    for path in (hf, tmp_path / "back.pt", tmp_path / "hf2", tmp_path / "back2.pt"):
        got = load_model(path)
        assert got.family == "wavlm" and got.cfg == ref.cfg and got.extra == ref.extra, path
        a, b = ref.model.state_dict(), got.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path
    # what s3prl's wavlm_local reads: {cfg, model} (+ our keys), weights-only loadable
    raw = torch.load(tmp_path / "back2.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"cfg", "model", "score"} and raw["cfg"] == ref.cfg
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "wavlm" and config["num_buckets"] == ref.cfg["num_buckets"]


def test_transformers_directory_without_our_config(ckpts, tmp_path):
    """A plain transformers directory (e.g. microsoft/wavlm-base-plus) reads with the config it carries."""
    pt, hf = ckpts
    target = tmp_path / "plain"
    target.mkdir()
    config = json.loads((hf / "config.json").read_text())
    del config["wavlm_cfg"], config["score_extra"]
    (target / "config.json").write_text(json.dumps(config))
    for f in hf.iterdir():
        if f.name != "config.json":
            (target / f.name).write_bytes(f.read_bytes())
    got, ref = load_model(target), load_wavlm(pt)
    a, b = ref.model.state_dict(), got.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and got.normalize == ref.normalize
    with torch.no_grad():
        x = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
        assert torch.equal(got.model.extract_features(x)[0], ref.model.extract_features(x)[0])


def test_bad_files_give_one_line_errors(tmp_path, tiny_hubert_ckpt, capsys):
    from score_upstream.models.convert import main as convert_main

    good = new_wavlm(tiny_cfg(), seed=0)
    flat = {"cfg": dict(good.cfg), "model": good.model.state_dict()}
    cases = {}
    cases[tmp_path / "not_tensors.pt"] = ({**flat, "model": {"w": [1, 2]}}, "not a dict of tensors")
    cases[tmp_path / "wrong_shape.pt"] = ({**flat, "cfg": {**good.cfg, "encoder_embed_dim": 64}},
                                          "do not match the WavLM")
    cases[tmp_path / "missing.pt"] = ({**flat, "model": {k: v for k, v in flat["model"].items() if "grep" not in k}},
                                      "missing")
    for path, (obj, _) in cases.items():
        torch.save(obj, path)
    bad_dir = tmp_path / "bad_hf"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text(json.dumps({"model_type": "wavlm"}))
    cases[bad_dir] = (None, "no model.safetensors")
    no_gate = new_wavlm(tiny_cfg(gru_rel_pos=False), seed=0)
    save_s3prl(no_gate, tmp_path / "no_gate.pt")
    for path, (_, needle) in cases.items():
        with pytest.raises(CheckpointError, match=needle) as e:
            load_model(path)
        assert "\n" not in str(e.value) and str(path) in str(e.value)
    with pytest.raises(CheckpointError, match="a hubert checkpoint .* expected a wavlm"):
        load_model(tiny_hubert_ckpt, family="wavlm")
    from score_upstream.models.hubert import load_hubert

    with pytest.raises(CheckpointError, match="a wavlm checkpoint .* expected a HuBERT"):
        load_hubert(tmp_path / "no_gate.pt")
    with pytest.raises(CheckpointError, match="gated relative position bias"):
        save_hf(load_wavlm(tmp_path / "no_gate.pt"), tmp_path / "no_gate_hf")
    assert convert_main([str(tmp_path / "wrong_shape.pt"), str(tmp_path / "x.pt"), "--to", "s3prl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "wrong_shape.pt" in err[0]


# ------------------------------------------------------------------------------------------ upstream
def test_same_hidden_states_as_wavlm_local(registered, ckpts, wavs):
    """score_wavlm (from the .pt and from the transformers directory) against s3prl's own WavLM expert,
    on a padded batch: every hidden state, padded frames included."""
    pt, hf = ckpts
    stock = registered.wavlm_local(ckpt=str(pt)).eval()
    with torch.no_grad():
        ref = stock(wavs)["hidden_states"]
        for source in (pt, hf):
            ours = registered.score_wavlm(ckpt=str(source), model_config=None, refresh=False).eval()
            got = ours(wavs)["hidden_states"]
            assert len(got) == len(ref) == 13 and got[0].shape == ref[0].shape == (3, 49, 48)
            assert max_diff(got, ref) < ATOL, source
    assert ours.get_downsample_rates("hidden_states") == 320


def test_same_hidden_states_as_transformers(registered, ckpts, wavs):
    """transformers' WavLMModel from our directory, on the same padded batch, per utterance.

    s3prl calls a frame padding only when every sample under its stride is padding; transformers masks
    the frames past the conv output length of the valid samples (here one frame fewer for 11200 and
    7437 samples). The network is compared given the same frame mask: transformers' attention mask is as
    long as the shortest input that yields s3prl's number of valid frames. For a pre-LN model
    transformers' last ``hidden_states`` entry is taken before the encoder's final LayerNorm; s3prl's
    (and ours) is the encoder output, transformers' ``last_hidden_state``.
    """
    from transformers import WavLMModel

    from score_upstream.training.model import conv_layout, min_input_samples

    pt, hf = ckpts
    ours = registered.score_wavlm(ckpt=str(pt)).eval()
    model = WavLMModel.from_pretrained(hf).eval()
    inputs = [torch.nn.functional.layer_norm(w, w.shape) for w in wavs] if ours.normalize else wavs
    padded = torch.nn.utils.rnn.pad_sequence(inputs, batch_first=True)
    sample_pad = torch.arange(padded.shape[1])[None] >= torch.tensor(LENGTHS)[:, None]
    layout = conv_layout(ours.model)

    def pick(out):
        return tuple(out.hidden_states[:-1]) + (out.last_hidden_state,)

    with torch.no_grad():
        ref = ours(wavs)["hidden_states"]
        valid = (~ours.model.forward_padding_mask(ref[-1], sample_pad)).sum(-1).tolist()
        assert valid == [49, 35, 23]  # transformers' own lengths would be 49, 34, 22
        attention = torch.zeros(padded.shape, dtype=torch.long)
        for i, n in enumerate(valid):
            attention[i, : min_input_samples(layout) + (n - 1) * 320] = 1  # shortest input giving n frames
        got = pick(model(padded, attention_mask=attention, output_hidden_states=True))
        single = pick(model(inputs[0][None], output_hidden_states=True))
    assert len(got) == len(ref) == 13
    for layer, (x, y) in enumerate(zip(ref, got)):
        for i, n in enumerate(valid):
            assert (x[i, :n] - y[i, :n]).abs().max() < ATOL, (layer, i)
    assert max_diff([x[:1] for x in ref], single) < ATOL  # an unpadded utterance needs no mask at all


def test_training_encoder_matches_transformers_on_padded_batch(ckpts, wavs):
    """The trainer's encoder (frame lengths from the conv formula, as transformers) on a padded batch of
    different lengths: its last layer equals transformers' for every valid frame."""
    from transformers import WavLMModel

    from score_upstream.training.config import ModelConfig
    from score_upstream.training.model import ScoreModel

    pt, hf = ckpts
    model = ScoreModel(load_model(pt), ModelConfig(cnn_per_utterance=False, head_hidden=16), seed=0).eval()
    reference = WavLMModel.from_pretrained(hf).eval()
    lengths = torch.tensor(LENGTHS)
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    inputs = padded if not model.normalize_wav else torch.nn.utils.rnn.pad_sequence(
        [torch.nn.functional.layer_norm(w, w.shape) for w in wavs], batch_first=True)
    with torch.no_grad():
        x, frames = model.encode(model.student, padded, lengths)
        sample_mask = (torch.arange(inputs.shape[1])[None] < lengths[:, None]).long()
        y = reference(inputs, attention_mask=sample_mask).last_hidden_state
    assert frames.tolist() == [49, 34, 22]
    for i, n in enumerate(frames.tolist()):
        assert (x[i, :n] - y[i, :n]).abs().max() < ATOL, i
    # padded vs alone: the bias of layer 0, computed for the padded length and passed on, and the padding
    # mask leave every valid frame as it is without padding (the CNN run per utterance, as in training)
    model.cfg.cnn_per_utterance = True
    with torch.no_grad():
        x, _ = model.encode(model.student, padded, lengths)
        for i, (w, n) in enumerate(zip(wavs, frames.tolist())):
            alone, _ = model.encode(model.student, w[None], lengths[i : i + 1])
            assert (x[i, :n] - alone[0]).abs().max() < ATOL, i


def test_wrong_family_is_one_line(registered, ckpts, tiny_hubert_ckpt):
    pt, _ = ckpts
    with pytest.raises(CheckpointError, match="a hubert checkpoint") as e:
        registered.score_wavlm(ckpt=str(tiny_hubert_ckpt))
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="a wavlm checkpoint"):
        registered.score_hubert(ckpt=str(pt))
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        registered.score_wavlm()


# ------------------------------------------------------------------------------------------ training
def test_heads():
    from score_upstream.training.model import build_head

    one = build_head(48, 32, 0, seed=3)
    two = build_head(48, 32, 16, seed=3)
    assert isinstance(one, torch.nn.Linear)  # the HuBERT recipe's head, state-dict names unchanged
    assert [type(m).__name__ for m in two] == ["Linear", "ReLU", "Linear"]
    assert two[0].weight.shape == (16, 48) and two[2].weight.shape == (32, 16)
    assert torch.equal(one.weight, build_head(48, 32, 0, seed=3).weight)  # seeded: same head every time


def test_trainable_set_is_the_authors_positional_freeze():
    """runner_part_freeze_layers.py freezes parameters 2-206 (WavLM) / 3-176 (HuBERT) of s3prl's model by
    position; positions depend on the layer structure, not the widths, so the tiny models show them. What
    else they leave trainable (mask_emb, label_embs_concat, final_proj) never enters SCORE's forward."""
    from score_upstream.models.hubert import new_hubert, tiny_model_cfg
    from score_upstream.training.config import load_config
    from score_upstream.training.model import select_trainable

    prefixes = load_config(RECIPE.parent / "wavlm_base_plus.yaml", ["model.init=x.pt"]).model.trainable
    for model, keep, unused in ((new_wavlm(tiny_cfg()).model, lambda i: not 1 < i < 207, ("mask_emb",)),
                                (new_hubert(tiny_model_cfg()).model, lambda i: not 2 < i < 177,
                                 ("mask_emb", "label_embs_concat", "final_proj."))):
        names = [n for n, _ in model.named_parameters()]
        authors = {n for i, n in enumerate(names, 1) if keep(i) and not n.startswith(unused)}
        assert authors == set(select_trainable(model, prefixes))


def test_recipe_rows():
    from score_upstream.training.config import load_config

    base = load_config(RECIPE.parent / "wavlm_base_plus.yaml", ["model.init=x.pt"])
    hubert = load_config(RECIPE.parent / "hubert_base.yaml", ["model.init=x.pt"])
    assert base.perturb.speeds == [0.85, 0.9, 1.0, 1.1, 1.15] and base.model.head_hidden == 256
    assert base.model.family == "wavlm" and hubert.model.family == "hubert" and hubert.model.head_hidden == 0
    assert base.model.trainable == hubert.model.trainable
    for section in ("optim", "loss", "data"):
        assert getattr(base, section) == getattr(hubert, section), section
    assert base.perturb.semitones == hubert.perturb.semitones


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """The tiny WavLM recipe, 4 updates, one thread: ``(out_dir, result, args)``."""
    import score_upstream.training.train as T

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("wavlm_train") / "a"
        args = ["optim.total_steps=4", "optim.warmup_steps=1", "save_every=2", *FAST]
        return out, T.train(RECIPE, tiny_corpus, out, args), args
    finally:
        torch.set_num_threads(n)


@pytest.mark.usefixtures("one_thread")
def test_tiny_recipe_trains_and_resumes_to_the_same_weights(registered, trained, tiny_corpus, tmp_path):
    import score_upstream.training.train as T

    out, res, args = trained
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 4 and all(l == l for l in losses)
    first = T.train(RECIPE, tiny_corpus, tmp_path / "b", [*args, "stop_at=2"])
    assert first["final"] is None
    T.train(RECIPE, tiny_corpus, tmp_path / "b", [*args, "resume=true"])
    final = out / "score_wavlm.pt"
    a, b = load_wavlm(final).model.state_dict(), load_wavlm(tmp_path / "b" / "score_wavlm.pt").model.state_dict()
    init = new_wavlm(tiny_cfg(), seed=0).model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], a[k])}
    assert changed and all(k.startswith(TRAINABLE) for k in changed)  # frozen weights untouched
    assert any(".grep_linear." in k for k in changed)  # the trained layers' bias gates learn too
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    sa = torch.load(T.latest_state(out), weights_only=True)
    sb = torch.load(T.latest_state(tmp_path / "b"), weights_only=True)
    assert sa["trainable"].keys() == sb["trainable"].keys() and "head.2.weight" in sa["trainable"]
    assert all(torch.allclose(sa["trainable"][k], sb["trainable"][k], atol=1e-6, rtol=0) for k in sa["trainable"])

    from s3prl.nn import S3PRLUpstream

    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3))
    ours = S3PRLUpstream("score_wavlm", path_or_url=str(final)).eval()
    stock = S3PRLUpstream("wavlm_local", path_or_url=str(final)).eval()
    with torch.no_grad():
        hs, _ = ours(wav, torch.tensor([16000, 9000]))
        hs_stock, _ = stock(wav, torch.tensor([16000, 9000]))
    assert len(hs) == len(hs_stock) == 13 and max_diff(hs, hs_stock) < ATOL


def test_wavlm_recipe_refuses_a_hubert_init(tiny_corpus, tiny_hubert_ckpt, tmp_path, capsys):
    import score_upstream.training.train as T

    out = tmp_path / "never"
    assert T.main([str(RECIPE), "--data", str(tiny_corpus), "--out", str(out), "model.tiny=false",
                   f"model.init={tiny_hubert_ckpt}"]) == 2
    err = capsys.readouterr().err
    assert "holds a hubert" in err and "model.family=wavlm" in err and "Traceback" not in err


def test_score_s3prl_checks_the_family(ckpts, tmp_path, capsys):
    from score_upstream.s3prl.cli import main

    pt, _ = ckpts
    assert main(["-m", "train", "-u", "score_wavlm", "-k", str(tmp_path / "none.pt"), "-d", "asr"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["-m", "train", "-u", "score_hubert", "-k", str(pt), "-d", "asr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "use -u score_wavlm" in err[0]


def test_trained_checkpoint_through_score_s3prl(trained, tiny_corpus, tmp_path):
    """The trained checkpoint as s3prl's upstream: ASR train (2 updates, dev evaluated) with -u score_wavlm."""
    import pandas as pd

    from score_upstream.s3prl.superb.lengths import main as lengths_main

    out, _, _ = trained
    ls = tiny_corpus / "LibriSpeech"
    lengths = tmp_path / "len"
    assert lengths_main(["--librispeech", str(ls), "--out", str(lengths)]) == 0
    for split, keep in (("train-clean-100", 4), ("dev-clean", 2), ("test-clean", 2)):
        csv = lengths / f"{split}.csv"
        pd.read_csv(csv, index_col=0).head(keep).to_csv(csv)
    exp = tmp_path / "asr"
    overrides = ",,".join([
        f"config.downstream_expert.datarc.libri_root='{ls}'",
        f"config.downstream_expert.datarc.bucket_file='{lengths}'",
        "config.downstream_expert.datarc.batch_size=2",
        "config.downstream_expert.datarc.num_workers=0",
        "config.downstream_expert.modelrc.project_dim=16",
        "config.downstream_expert.modelrc.RNNs.dim=[16,16]",
        "config.runner.total_steps=2", "config.runner.eval_step=2", "config.runner.save_step=2", "config.runner.log_step=1",
    ])
    cmd = [sys.executable, "-m", "score_upstream.s3prl.cli", "-m", "train", "-u", "score_wavlm",
           "-k", str(out / "score_wavlm.pt"), "-d", "asr", "-p", str(exp), "-o", overrides]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (exp / "states-2.ckpt").is_file() and "dev-clean wer" in run.stdout + run.stderr


@pytest.mark.usefixtures("one_thread")
def test_state_written_before_model_family_resumes(tiny_corpus, tmp_path):
    """A HuBERT run's state whose config predates model.family/head_hidden resumes without a config change."""
    import score_upstream.training.train as T
    from score_upstream.atomic import atomic_save

    hubert_recipe = RECIPE.parent / "tiny.yaml"
    args = ["optim.total_steps=2", "optim.warmup_steps=1", "save_every=1", *FAST]
    T.train(hubert_recipe, tiny_corpus, tmp_path, [*args, "stop_at=1"])
    path = T.latest_state(tmp_path)
    state = torch.load(path, weights_only=True)
    del state["config"]["model"]["family"], state["config"]["model"]["head_hidden"]
    atomic_save(state, path)
    res = T.train(hubert_recipe, tiny_corpus, tmp_path, [*args, "resume=true"])
    assert res["step"] == 2 and (tmp_path / "score_hubert.pt").is_file()


# ---------------------------------------------------------------------------------------------- results
def test_results_grouped_by_family_against_the_matching_vanilla_model(tmp_path):
    from test_results import make_expdir

    from score_upstream.report import results

    dirs = [make_expdir(tmp_path, "WavLM", "wavlm", wer=30.0, per=0.40, mtwv=0.30),
            make_expdir(tmp_path, "SCORE-WavLM", "score", wer=27.0, per=0.36, mtwv=0.33),
            make_expdir(tmp_path, "HuBERT", "hubert", wer=40.0, per=0.50, mtwv=0.20),
            make_expdir(tmp_path, "SCORE", "score", wer=38.0, per=0.45, mtwv=0.25)]
    meta = json.loads((dirs[1] / "model.json").read_text())
    (dirs[1] / "model.json").write_text(json.dumps({**meta, "family": "wavlm"}))
    table = results.build_table([results.read_experiment(d) for d in dirs])
    assert [(r["model"], r["family"]) for r in table] == [
        ("HuBERT", "hubert"), ("SCORE", "hubert"), ("WavLM", "wavlm"), ("SCORE-WavLM", "wavlm")]
    rows = {r["model"]: r for r in table}
    assert rows["SCORE-WavLM"]["rel_asr_vs_wavlm"] == pytest.approx(10.0)  # (30 - 27) / 30
    assert rows["SCORE-WavLM"]["rel_qbe_vs_wavlm"] == pytest.approx(10.0)
    assert rows["SCORE-WavLM"]["rel_asr_vs_hubert"] == results.OTHER_FAMILY
    assert rows["SCORE"]["rel_asr_vs_hubert"] == pytest.approx(5.0) and rows["SCORE"]["rel_asr_vs_wavlm"] == results.OTHER_FAMILY
    assert rows["WavLM"]["rel_asr_vs_hubert"] == pytest.approx(25.0)  # the two vanilla models side by side
    out = tmp_path / "out"
    assert results.main([str(d) for d in dirs] + ["--out", str(out), "--no-reported"]) == 0
    md = (out / "superb.md").read_text()
    assert "| Model | Kind | Family |" in md and "ASR vs WavLM" in md
    assert "| SCORE-WavLM | score | wavlm | 27.00 | 36.00 | 0.3300 | 12 |" in md


def test_loader_names_upstream_family_and_score(trained, tiny_hubert_ckpt, tmp_path, capsys):
    """What run_superb.sh asks for UPSTREAM auto: ``python -m score_upstream.models.loader CKPT``."""
    from score_upstream.models.loader import main

    out, _, _ = trained
    vanilla = save_s3prl(new_wavlm(tiny_cfg(), seed=0), tmp_path / "wavlm.pt")
    for ckpt, line in ((vanilla, "score_wavlm wavlm vanilla"), (out / "score_wavlm.pt", "score_wavlm wavlm score"),
                       (tiny_hubert_ckpt, "score_hubert hubert vanilla")):
        assert main([str(ckpt)]) == 0 and capsys.readouterr().out.strip() == line
    assert main([str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]


@pytest.mark.slow
def test_run_superb_auto_upstream_from_the_checkpoint(trained, tiny_hubert_ckpt, tmp_path):
    """run_superb.sh --model NAME:auto:CKPT: score_wavlm / score_hubert and the row's kind and family come from
    the checkpoint (an unknown task stops the run right after model.json is written)."""
    from test_recipes import REPO, _assert_one_error, _run

    pt = save_s3prl(new_wavlm(tiny_cfg(), seed=0), tmp_path / "wavlm.pt")
    out, _, _ = trained
    expected = {"w": (pt, "score_wavlm", "wavlm", "wavlm"), "s": (out / "score_wavlm.pt", "score_wavlm", "score", "wavlm"),
                "h": (tiny_hubert_ckpt, "score_hubert", "hubert", "hubert")}
    for name, (ckpt, upstream, kind, family) in expected.items():
        proc = _run([REPO / "run_superb.sh", "--model", f"{name}:auto:{ckpt}", "--tasks", "none", "--exproot", tmp_path])
        _assert_one_error(proc, "unknown task 'none'")
        info = json.loads((tmp_path / name / "model.json").read_text())
        assert (info["upstream"], info["kind"], info["family"]) == (upstream, kind, family), name
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\0" * 64)
    _assert_one_error(_run([REPO / "run_superb.sh", "--model", f"j:auto:{junk}", "--exproot", tmp_path]),
                      str(junk), "not a HuBERT checkpoint")
