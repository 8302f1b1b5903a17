"""score-train end to end on the synthetic corpus: loss goes down, resume is exact, 2-process gloo trains."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import score_upstream.training.train as T
from score_upstream.atomic import atomic_save
from score_upstream.models.hubert import load_hubert

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "score" / "tiny.yaml"
NO_DROPOUT = ("model.tiny_overrides={dropout: 0.0, attention_dropout: 0.0, activation_dropout: 0.0, "
              "dropout_input: 0.0, dropout_features: 0.0}")
FAST = ["data.utterances_per_update=4", "perturb.pitch_method=fast", "progress=false"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _trainable(path: Path) -> dict[str, torch.Tensor]:
    sd = load_hubert(path).model.state_dict()
    return {k: v for k, v in sd.items() if k.startswith(("encoder.layers.10.", "encoder.layers.11.", "layer_norm.",
                                                         "encoder.layer_norm."))}


def test_tiny_run_lowers_loss_and_writes_loadable_model(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    res = T.train(RECIPE, tiny_corpus, out, ["optim.total_steps=10", "optim.lr=2e-3", *FAST])
    losses = [h["loss"] for h in res["history"]]
    assert len(losses) == 10 and all(l == l for l in losses)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    assert (out / "train_log.csv").read_text().count("\n") == 11 and (out / "config.yaml").is_file()
    final = out / "score_hubert.pt"
    raw = torch.load(final, map_location="cpu", weights_only=True)
    assert raw["score"]["steps"] == 10 and raw["score"]["config"]["optim"]["total_steps"] == 10
    bundle = load_hubert(final)
    from score_upstream.models.hubert import new_hubert, tiny_model_cfg

    init = new_hubert(tiny_model_cfg(), seed=0).model.state_dict()
    trained = bundle.model.state_dict()
    changed = {k for k in init if not torch.equal(init[k], trained[k])}
    assert changed and changed <= set(_trainable(final))  # frozen weights untouched
    state = torch.load(T.latest_state(out), map_location="cpu", weights_only=True)
    assert state["step"] == 10 and state["score_format_version"] == T.STATE_VERSION
    import score_upstream

    score_upstream.register()  # before any s3prl import: the compatibility layer comes first
    from s3prl.nn import S3PRLUpstream

    wav = torch.randn(1, 16000, generator=torch.Generator().manual_seed(3))
    ours = S3PRLUpstream("score_hubert", path_or_url=str(final)).eval()
    stock = S3PRLUpstream("hubert_local", path_or_url=str(final)).eval()  # s3prl's own HuBERT expert
    with torch.no_grad():
        hs, _ = ours(wav, torch.tensor([16000]))
        hs_stock, _ = stock(wav, torch.tensor([16000]))
    assert len(hs) == len(hs_stock) == 13 and hs[-1].shape[-1] == 48
    for a, b in zip(hs, hs_stock):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_resume_gives_same_weights_as_uninterrupted(tiny_corpus, tmp_path):
    # 24 utterances, 7 per update: the 4th update takes 3 from epoch 0 and 4 from epoch 1, after the resume
    args = ["optim.total_steps=4", "optim.warmup_steps=1", "save_every=2", *FAST, "data.utterances_per_update=7"]
    T.train(RECIPE, tiny_corpus, tmp_path / "a", args)
    first = T.train(RECIPE, tiny_corpus, tmp_path / "b", [*args, "stop_at=2"])
    assert first["final"] is None and T.latest_state(tmp_path / "b").name == "state-000002.pt"
    T.train(RECIPE, tiny_corpus, tmp_path / "b", [*args, "resume=true"])
    a, b = _trainable(tmp_path / "a" / "score_hubert.pt"), _trainable(tmp_path / "b" / "score_hubert.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    sa = torch.load(tmp_path / "a" / "state-000004.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "state-000004.pt", weights_only=True)
    assert sa["epoch"] == sb["epoch"] == 1 and sa["pos"] == sb["pos"] == 4
    assert torch.allclose(sa["trainable"]["head.weight"], sb["trainable"]["head.weight"], atol=1e-6, rtol=0)


def _worker(rank: int, world: int, port: int, corpus: str, out: str, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        T.train(RECIPE, corpus, out, overrides)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_two_process_gloo_matches_one_process(tiny_corpus, tmp_path):
    # without dropout, 2 processes x 2 utterances must give the update of 1 process x 4 utterances
    args = ["optim.total_steps=2", "optim.warmup_steps=1", NO_DROPOUT, *FAST]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tiny_corpus), str(tmp_path / "ddp"), args), nprocs=2, join=True)
    T.train(RECIPE, tiny_corpus, tmp_path / "one", args)
    a, b = _trainable(tmp_path / "ddp" / "score_hubert.pt"), _trainable(tmp_path / "one" / "score_hubert.pt")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    from score_upstream.models.hubert import new_hubert, tiny_model_cfg

    start = new_hubert(tiny_model_cfg(), seed=0).model.state_dict()
    moved = sum(not torch.equal(start[k], a[k]) for k in a)
    assert moved > 0


def test_bad_input_fails_before_any_work(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "never"
    assert T.main([str(RECIPE), "--data", str(tiny_corpus), "--out", str(out), "optim.lrr=1"]) == 2
    assert "optim.lrr" in capsys.readouterr().err and not out.exists()
    assert T.main([str(RECIPE), "--data", str(tmp_path / "no_such"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no_such" in err and "not found" in err and "Traceback" not in err and not out.exists()
    assert T.main([str(RECIPE), "--data", str(tiny_corpus), "--out", str(out), "resume=true"]) == 2
    assert "no state-NNNNNN.pt" in capsys.readouterr().err


def test_nonfinite_loss_skips_then_aborts(tiny_corpus, tmp_path, caplog):
    calls = {"n": 0}

    def flaky(x, y, xl, yl, gamma, normalize):
        from score_upstream.sdtw.divergence import soft_dtw_divergence

        calls["n"] += 1
        d = soft_dtw_divergence(x, y, xl, yl, gamma=gamma, normalize=normalize)
        return d * float("nan") if calls["n"] == 1 else d

    cfg = T.load_config(RECIPE, ["optim.total_steps=2", "optim.warmup_steps=1", "data.batch_seconds=1000", *FAST])
    res = T.Trainer(cfg, tiny_corpus, tmp_path / "a", loss_fn=flaky).fit()
    assert res["step"] == 2 and "non-finite" in caplog.text  # first update skipped, two good ones follow

    def always_nan(x, y, xl, yl, gamma, normalize):
        return (x.sum() + y.sum()) * float("nan") * torch.ones(x.shape[0])

    cfg = T.load_config(RECIPE, ["optim.total_steps=5", "optim.max_nonfinite=2", *FAST])
    with pytest.raises(T.TrainError, match="2 non-finite updates in a row"):
        T.Trainer(cfg, tiny_corpus, tmp_path / "b", loss_fn=always_nan).fit()


def test_interrupted_checkpoint_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "state-000002.pt"
    atomic_save({"step": 2, "w": torch.ones(3)}, path)

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 4, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-000002.pt"]  # no temp file left
