"""SUPERB assets, their injection into s3prl, and the shell recipes (asr/pr/qbe, run_superb.sh).

The recipe runs use the tiny synthetic corpus and a tiny random HuBERT with a couple of training
steps; bad input must stop a recipe at its stage with one line naming what is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from score_upstream.s3prl import phones
from score_upstream.audio import write_audio
from score_upstream.s3prl.superb import SuperbAssetError, asset_path, install_s3prl_modules
from score_upstream.s3prl.superb.pr import libriphone
from score_upstream.s3prl.superb.pr.libriphone import LibriPhoneDataset, LibriPhoneError
from score_upstream.s3prl.superb.pr.prepare import main as pr_prepare_main
from score_upstream.s3prl.superb.qbe import protocol
from score_upstream.s3prl.superb.qbe.prepare import QuesstTreeError, check_tree

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(args: list[str], cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd or REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------- a small LibriSpeech without espeak


class _Tokenizer:
    """Stand-in with the interface of s3prl's WordTextEncoder (pad 0, eos 1, unk 2, then the vocab)."""

    def __init__(self, vocab):
        self._vocab_list = ["<pad>", "<eos>", "<unk>"] + list(vocab)
        self._index = {v: i for i, v in enumerate(self._vocab_list)}

    def encode(self, s):
        return [self._index.get(v, 2) for v in s.strip().split(" ")] + [1]


def _mini_librispeech(root: Path, n_per_split: int = 3) -> tuple[Path, Path]:
    """Write LibriSpeech-layout splits with noise audio of increasing length and a lexicon."""
    lex = {"HELLO": "HH AH0 L OW1", "WORLD": "W ER1 L D", "GO": "G OW1"}
    sentences = ["HELLO WORLD", "GO", "WORLD GO HELLO"]
    rng = np.random.default_rng(0)
    ls = root / "LibriSpeech"
    for s, split in enumerate(("train-clean-100", "dev-clean", "test-clean")):
        chapter = ls / split / str(100 + s) / "7"
        lines = []
        for i in range(n_per_split):
            utt = f"{100 + s}-7-{i:04d}"
            write_audio(chapter / f"{utt}.flac", rng.standard_normal(1600 * (i + 1)).astype(np.float32) * 0.1)
            lines.append(f"{utt} {sentences[i % len(sentences)]}\n")
        (chapter / f"{100 + s}-7.trans.txt").write_text("".join(lines))
    lexicon = root / "librispeech-lexicon.txt"
    lexicon.write_text("".join(f"{w}\t{p}\n" for w, p in lex.items()))
    return ls, lexicon


# ---------------------------------------------------------------- assets and injection


def test_phone_vocabulary_is_superb_inventory():
    listed = asset_path("pr/phones.txt").read_text().splitlines()
    assert listed == list(phones.SUPERB_PHONES)
    assert len(listed) == 71


def test_asset_path_errors_name_the_asset():
    assert asset_path("pr/config.yaml").is_file()
    with pytest.raises(SuperbAssetError, match="no/such.yaml"):
        asset_path("no/such.yaml")
    with pytest.raises(SuperbAssetError):
        asset_path("../__init__.py")


def test_pr_and_qbe_configs_hold_the_protocol():
    pr = yaml.safe_load(asset_path("pr/config.yaml").read_text())
    corpus = pr["downstream_expert"]["corpus"]
    assert corpus["name"] == "libriphone" and corpus["batch_size"] == 16
    assert pr["downstream_expert"]["model"]["project_dim"] == 256
    assert pr["downstream_expert"]["metric"] == ["per"] and pr["downstream_expert"]["metric_higher_better"] is False
    assert pr["optimizer"] == {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": 5.0e-4}
    assert pr["runner"]["total_steps"] == 100000 and pr["runner"]["gradient_accumulate_steps"] == 2
    qbe = yaml.safe_load(asset_path("qbe/config.yaml").read_text())["downstream_expert"]
    assert qbe["dtwrc"] == {"dist_method": "cosine_exp", "step_pattern": "asymmetric", "subsequence": True, "minmax_norm": True}
    assert qbe["feature_normalization"] is True and qbe["silence_frame"] is None


@pytest.mark.compat_env
def test_install_s3prl_modules_is_idempotent_and_serves_ctc_import():
    install_s3prl_modules()
    assert install_s3prl_modules() == []
    from s3prl.downstream.ctc.corpus.libriphone import LibriPhoneDataset as Injected

    assert Injected is LibriPhoneDataset
    assert sys.modules["s3prl.downstream.ctc.corpus"].libriphone is libriphone


@pytest.mark.compat_env
def test_s3prl_ctc_builds_our_dataset(tmp_path):
    """s3prl's own ctc/data.py + text.py build the dataset from the resolved config; items batch."""
    compat = pytest.importorskip("score_upstream.s3prl.compat")
    compat.apply()
    ls, lexicon = _mini_librispeech(tmp_path)
    out = tmp_path / "config.yaml"
    assert pr_prepare_main(["--librispeech", str(ls), "--lexicon", str(lexicon), "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())["downstream_expert"]
    from s3prl.downstream.ctc.data import collect_audio_batch, create_dataset
    from s3prl.downstream.ctc.text import load_text_encoder

    tok = load_text_encoder(**cfg["text"])
    assert tok.vocab_size == 74
    corpus = dict(cfg["corpus"], batch_size=2)
    train, loader_bs = create_dataset("train", tok, **corpus)
    assert loader_bs == 1 and len(train) == 2  # 3 utterances in buckets of 2
    wavs, labels, names = collect_audio_batch([train[0]], "train")
    assert [len(w) for w in wavs] == [4800, 3200]  # longest first
    assert tok.decode(list(labels[0])) == "W ER1 L D G OW1 HH AH0 L OW1"
    dev, _ = create_dataset("dev", tok, **corpus)
    assert isinstance(dev[0], tuple) and len(dev) == 3


# ---------------------------------------------------------------- libriphone and PR data preparation


def test_libriphone_items_and_buckets(tmp_path):
    ls, lexicon = _mini_librispeech(tmp_path)
    tok = _Tokenizer(phones.SUPERB_PHONES)
    ds = LibriPhoneDataset(["dev-clean"], tok, 1, path=str(ls), lexicon=[str(lexicon)], name="libriphone")
    assert len(ds) == 3
    audio, tokens = ds[0]
    assert audio.endswith("101-7-0002.flac")  # longest first
    assert tokens == tok.encode("W ER1 L D G OW1 HH AH0 L OW1")
    buckets = LibriPhoneDataset("train-clean-100", tok, 2, path=str(ls), lexicon=[str(lexicon)])
    assert [len(b) for b in buckets.items] == [2, 1]
    assert all(isinstance(x, tuple) for b in buckets.items for x in b)


def test_libriphone_lexicon_priority(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("GO\tG OW1\n")
    second.write_text("GO\tG OW0\nSTOP\tS T AA1 P\n")
    assert libriphone.read_lexicon([first, second]) == {"GO": ["G", "OW1"], "STOP": ["S", "T", "AA1", "P"]}


def test_libriphone_reports_missing_words(tmp_path):
    ls, lexicon = _mini_librispeech(tmp_path)
    lexicon.write_text("HELLO\tHH AH0 L OW1\n")
    with pytest.raises(LibriPhoneError, match=r"2 word\(s\) missing from the lexicon.*WORLD.*GO"):
        LibriPhoneDataset(["dev-clean"], _Tokenizer(phones.SUPERB_PHONES), 1, path=str(ls), lexicon=[str(lexicon)])


def test_libriphone_rejects_phones_outside_vocabulary(tmp_path):
    ls, lexicon = _mini_librispeech(tmp_path)
    with pytest.raises(LibriPhoneError, match="not in the vocabulary"):
        LibriPhoneDataset(["dev-clean"], _Tokenizer(["HH", "AH0"]), 1, path=str(ls), lexicon=[str(lexicon)])


@pytest.mark.parametrize("case", ["root", "split", "lexicon", "word"])
def test_pr_prepare_bad_input_one_line(tmp_path, capsys, case):
    ls, lexicon = _mini_librispeech(tmp_path)
    if case == "root":
        ls = tmp_path / "nowhere"
    elif case == "split":
        shutil.rmtree(ls / "test-clean")
    elif case == "lexicon":
        lexicon = tmp_path / "missing-lexicon.txt"
    else:
        lexicon.write_text("HELLO\tHH AH0 L OW1\nGO\tG OW1\n")
    rc = pr_prepare_main(["--librispeech", str(ls), "--lexicon", str(lexicon), "--out", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    expected = {"root": "LibriSpeech root not found", "split": "test-clean", "lexicon": "OpenSLR 11", "word": "WORLD"}
    assert expected[case] in err[0]
    assert not (tmp_path / "c.yaml").exists()


def test_pr_prepare_writes_resolved_config(tmp_path):
    ls, lexicon = _mini_librispeech(tmp_path)
    out = tmp_path / "exp" / "config.yaml"
    assert pr_prepare_main(["--librispeech", str(ls), "--lexicon", str(lexicon), "--out", str(out)]) == 0
    cfg = yaml.safe_load(out.read_text())
    assert cfg["downstream_expert"]["corpus"]["path"] == str(ls.resolve())
    assert cfg["downstream_expert"]["corpus"]["lexicon"] == [str(lexicon.resolve())]
    assert Path(cfg["downstream_expert"]["text"]["vocab_file"]) == asset_path("pr/phones.txt")
    assert cfg["optimizer"]["lr"] == 5.0e-4


# ---------------------------------------------------------------- QbE tree check and layer protocol


def _score_out(path: Path, mtwv: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "score.out").write_text(f"actTWV: 0.0100  maxTWV: {mtwv}  Threshold: 1.5\n")


def test_qbe_layer_selection_and_report(tmp_path):
    for layer, mtwv in {0: 0.01, 3: 0.2, 7: 0.2, 12: 0.05}.items():
        _score_out(tmp_path / "dev" / f"layer{layer}", mtwv)
    _score_out(tmp_path / "eval" / "layer3", 0.15)
    assert protocol.select_layer(tmp_path / "dev") == (3, 0.2)  # ties: the lowest layer
    result = protocol.report(tmp_path, 3, "best-dev-layer", "english-only")
    saved = json.loads((tmp_path / "qbe_result.json").read_text())
    assert saved == result
    assert (saved["layer"], saved["dev_mtwv"], saved["eval_mtwv"]) == (3, 0.2, 0.15)
    with pytest.raises(protocol.QbeProtocolError, match="no score for layer 7"):
        protocol.report(tmp_path, 7, "best-dev-layer", "english-only")
    (tmp_path / "dev" / "layer0" / "score.out").unlink()
    with pytest.raises(protocol.QbeProtocolError, match="layer0/score.out: missing"):
        protocol.select_layer(tmp_path / "dev")


def test_qbe_tree_check(tiny_corpus, tmp_path):
    summary = check_tree(tiny_corpus / "quesst14Database")
    assert summary["documents"] > 0 and summary["dev"]["queries"] > 0 and summary["eval"]["scored"] > 0
    assert protocol.ground_truth_scope(tiny_corpus / "quesst14Database") == "english-only"
    broken = tmp_path / "quesst14Database"
    shutil.copytree(tiny_corpus / "quesst14Database", broken)
    shutil.rmtree(broken / "scoring" / "groundtruth_quesst14_eval")
    with pytest.raises(QuesstTreeError, match="groundtruth_quesst14_eval: ground truth for 'eval' not found"):
        check_tree(broken)


# ---------------------------------------------------------------- shell library


def _bash(script: str, *args: str) -> subprocess.CompletedProcess:
    prelude = f'set -euo pipefail; SCORE_RECIPE=t; source "{RECIPES}/lib/common.sh"\n'
    return subprocess.run(["bash", "-c", prelude + script, "t", *args], capture_output=True, text=True, env=_env(), timeout=60)


def test_option_parser_sets_known_and_rejects_unknown():
    script = (
        'stage=1; stop_stage=4; expdir=exp; flag=false; overrides=; model=\n'
        'OPTIONS="stage stop_stage expdir flag model"; LIST_OPTIONS="model"\n'
        'parse_options "$@"\n'
        'printf "%s|%s|%s|%s|%s|%s|%s\\n" "$stage" "$stop_stage" "$expdir" "$flag" "$overrides" "${model//$\'\\n\'/+}" "${ARGS[*]-}"\n'
    )
    ok = _bash(script, "--stage", "2", "--stop-stage=3", "--expdir", "a b", "--flag", "-o", "config.x=1",
               "-o", "config.y=2", "--model", "m1", "--model", "m2", "pos")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "2|3|a b|true|config.x=1,,config.y=2|m1+m2|pos"
    for bad in (["--nope", "1"], ["--nope"], ["-x"], ["--stage", "two"], ["--expdir"]):
        proc = _bash(script, *bad)
        assert proc.returncode == 2, bad
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: t: "), proc.stderr


def test_override_option_only_where_declared():
    proc = _bash('OPTIONS="stage"; stage=1; stop_stage=1; parse_options "$@"', "-o", "config.x=1")
    assert proc.returncode == 2 and "unknown option: -o" in proc.stderr


def test_run_stage_markers_skip_finished_work(tmp_path):
    script = (
        f'STAGE_DIR="{tmp_path}"; stage=1; stop_stage=9; force=false\n'
        'work() { echo "ran $1" >> "$STAGE_DIR/calls"; }\n'
        'fail() { return 3; }\n'
        'run_stage 1 "one: a -> b" work 1\n'
        'stage_inputs --value "arg=$1"; run_stage 2 "two: $1" work 2\n'
        '[ "${2-}" != fail ] || run_stage 3 "three" fail\n'
    )
    assert _bash(script, "x").returncode == 0
    assert _bash(script, "x").returncode == 0  # both stages skipped
    assert _bash(script, "y").returncode == 0  # stage 2's input changed: it runs again
    assert (tmp_path / "calls").read_text().split("\n")[:-1] == ["ran 1", "ran 2", "ran 2"]
    proc = _bash(script, "y", "fail")
    assert proc.returncode == 3 and not (tmp_path / ".stage3.done").exists()
    assert "Stage 1: one: a -> b (done, skipping" in proc.stderr


def test_require_file_stops_with_one_line(tmp_path):
    proc = _bash(f'require_file "{tmp_path}/x.ckpt" "best checkpoint" "rerun with --stage 2"; echo after')
    assert proc.returncode == 2 and "after" not in proc.stdout
    assert proc.stderr.strip() == f"error: t: missing best checkpoint: {tmp_path}/x.ckpt; rerun with --stage 2"


def test_for_each_run_runs_every_seed_side_by_side_and_names_failures(tmp_path):
    script = (
        f'dir="{tmp_path}"; seeds="0 1 2"; jobs="$1"; lrs=; sweep=false\n'
        'run_paths() { lr="$1"; seed="$2"; run_dir="$dir/seed$2"; }\n'
        'work() { mkdir -p "$run_dir"; echo "$OMP_NUM_THREADS" > "$run_dir/threads"; echo "test per: 0.$seed"\n'
        '         [ "$seed" != "${2-}" ] || { echo "boom in $seed" >&2; exit 7; }; }\n'
        'OMP_NUM_THREADS=4 for_each_run work\n'
    )
    ok = _bash(script, "2")
    assert ok.returncode == 0, ok.stderr
    for s in range(3):
        assert (tmp_path / f"seed{s}" / "threads").read_text().strip() == "2"  # 4 threads shared by 2 jobs
        assert f"seed{s}: done, test per: 0.{s}" in ok.stderr
    failed = _bash(script.replace('"${2-}"', '"1"'), "2")
    assert failed.returncode == 2 and "seed1 failed: boom in 1" in failed.stderr
    assert f"see {tmp_path}/seed1.out" in failed.stderr.strip().splitlines()[-1]
    assert (tmp_path / "seed2" / "threads").is_file()  # the other runs still finished
    serial = _bash(script, "1")
    assert serial.returncode == 0 and "test per: 0.2" in serial.stdout and "background" not in serial.stderr
    assert _bash(script, "0").returncode == 2


# ---------------------------------------------------------------- recipes on the tiny synthetic corpus

FAST_S3PRL = ["--device", "cpu", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0"]


def _assert_one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    errors = _error_lines(proc)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _run_seed(run_dir: Path) -> int:
    """The --seed s3prl's runner was given, as its checkpoint records it."""
    import torch

    return torch.load(run_dir / "dev-best.ckpt", map_location="cpu", weights_only=False)["Args"].seed


def test_pr_recipe_per_seed_stages_rerun_and_unfinished_runs(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    exp = tmp_path / "exp"
    args = ["--upstream", "hubert_local", "--ckpt", tiny_hubert_ckpt, "--librispeech", tiny_corpus / "LibriSpeech",
            "--expdir", exp, *FAST_S3PRL]
    proc = _run([RECIPES / "pr.sh", *args, "--seeds", "3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = exp / "pr" / "seed3"
    result = json.loads((run / "result.json").read_text())
    assert result["metric"] == "per" and result["value"] >= 0
    for n in (1, 2, 3, 4):
        assert f"Stage {n}: " in proc.stderr
    assert (run / "dev-best.ckpt").is_file() and (run / "test-hyp.ark").is_file() and _run_seed(run) == 3
    assert (exp / "pr" / ".stage1.done").is_file() and not (run / ".stage1.done").exists()  # shared by all seeds

    # a second seed: data preparation and seed 3 are marked done and skipped, seed 5 runs
    more = _run([RECIPES / "pr.sh", *args, "--seeds", "3 5"])
    assert more.returncode == 0 and more.stderr.count("(done, skipping") == 4, more.stderr[-2000:]
    assert "Stage 2: train (seed 5, lr " in more.stderr and _run_seed(exp / "pr" / "seed5") == 5
    assert json.loads((run / "result.json").read_text()) == result
    from score_upstream.report.results import read_experiment

    row = read_experiment(exp)
    assert sorted(row.runs["per"]) == [3, 5] and row.runs["per"][3] == pytest.approx(100 * result["value"])

    again = _run([RECIPES / "pr.sh", *args, "--seeds", "3 5"])  # every stage is marked done: nothing reruns
    assert again.returncode == 0 and again.stderr.count("(done, skipping") == 7, again.stderr[-2000:]

    (exp / "pr" / "seed5" / ".stage2.done").unlink()  # as if training seed 5 had been killed
    _assert_one_error(_run([RECIPES / "pr.sh", *args, "--seeds", "5", "--stage", "3"]),
                      "the train stage did not finish", "seed5", "--stage 2")
    (exp / "pr" / "seed5" / "test.log").write_text("test:  40%|####      | 2/5\n")  # a test run cut short
    _assert_one_error(_run([RECIPES / "pr.sh", *args, "--seeds", "5", "--stage", "4"]), "missing 'per' result",
                      "seed5/test.log")
    for bad in ("", "1 x", "2 2"):
        _assert_one_error(_run([RECIPES / "pr.sh", *args, "--seeds", bad]), "--seeds")


def test_asr_recipe_stages(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    exp = tmp_path / "exp"
    small = "config.downstream_expert.modelrc.RNNs.dim=[16,16],,config.downstream_expert.modelrc.project_dim=16"
    proc = _run([RECIPES / "asr.sh", "--upstream", "hubert_local", "--ckpt", tiny_hubert_ckpt,
                 "--librispeech", tiny_corpus / "LibriSpeech", "--expdir", exp, *FAST_S3PRL, "-o", small])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (exp / "asr" / "data" / "len" / "train-clean-100.csv").is_file()
    result = json.loads((exp / "asr" / "seed1337" / "result.json").read_text())  # one run, s3prl's default seed
    assert result["metric"] == "wer" and result["value"] >= 0
    from score_upstream.report.results import read_experiment

    row = read_experiment(exp)
    assert row.wer == pytest.approx(result["value"]) and row.runs["wer"] == {1337: pytest.approx(result["value"])}


def test_qbe_recipe_all_layers_on_dev_best_on_eval(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    exp = tmp_path / "exp"
    proc = _run([RECIPES / "qbe.sh", "--upstream", "hubert_local", "--ckpt", tiny_hubert_ckpt,
                 "--quesst-root", tiny_corpus / "quesst14Database", "--expdir", exp, "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((exp / "qbe" / "qbe_result.json").read_text())
    per_layer = result["dev_mtwv_per_layer"]
    assert sorted(map(int, per_layer)) == list(range(13))  # every hidden state of the tiny HuBERT
    assert result["dev_mtwv"] == max(per_layer.values()) and result["protocol"] == "best-dev-layer"
    # eval searches the chosen layer and the last one (12), nothing else
    assert sorted(p.name for p in (exp / "qbe" / "eval").glob("layer*")) == sorted({f"layer{result['layer']}", "layer12"})
    assert result["scope"] == "english-only" and -10 < result["eval_mtwv"] <= 1
    last = result["last_layer"]
    assert (last["layer"], last["dev_mtwv"]) == (12, per_layer["12"]) and -10 < last["eval_mtwv"] <= 1
    for entry in (result, last):
        low, high = entry["eval_mtwv_interval"]
        assert low <= high and entry["eval_mtwv_sd"] >= 0
    assert result["bootstrap"]["resamples"] == 1000 and result["bootstrap"]["unit"] == "query"


@pytest.mark.parametrize("recipe", ["asr", "pr", "qbe"])
def test_recipe_missing_data_root(recipe, tmp_path, tiny_hubert_ckpt):
    root = "--quesst-root" if recipe == "qbe" else "--librispeech"
    proc = _run([RECIPES / f"{recipe}.sh", "--ckpt", tiny_hubert_ckpt, root, tmp_path / "absent", "--expdir", tmp_path / "e"])
    _assert_one_error(proc, "missing", str(tmp_path / "absent"))
    assert "Stage 1" in proc.stderr and "Stage 2" not in proc.stderr


def test_pr_recipe_missing_lexicon(tiny_corpus, tmp_path, tiny_hubert_ckpt):
    ls = tmp_path / "corpus" / "LibriSpeech"
    ls.parent.mkdir()
    ls.symlink_to(tiny_corpus / "LibriSpeech")  # no librispeech-lexicon.txt beside it
    proc = _run([RECIPES / "pr.sh", "--ckpt", tiny_hubert_ckpt, "--librispeech", ls, "--expdir", tmp_path / "e"])
    _assert_one_error(proc, "missing lexicon", "librispeech-lexicon.txt", "OpenSLR 11", "g2p")


def test_qbe_recipe_tree_without_ground_truth(tiny_corpus, tmp_path, tiny_hubert_ckpt):
    tree = tmp_path / "quesst14Database"
    shutil.copytree(tiny_corpus / "quesst14Database", tree)
    shutil.rmtree(tree / "scoring" / "groundtruth_quesst14_dev")
    proc = _run([RECIPES / "qbe.sh", "--ckpt", tiny_hubert_ckpt, "--quesst-root", tree, "--expdir", tmp_path / "e"])
    _assert_one_error(proc, "groundtruth_quesst14_dev", "ground truth for 'dev' not found")


def test_recipes_stop_when_an_earlier_stage_did_not_run(tmp_path, tiny_corpus, tiny_hubert_ckpt):
    common = ["--ckpt", tiny_hubert_ckpt, "--expdir", tmp_path / "e"]
    asr = _run([RECIPES / "asr.sh", *common, "--librispeech", tiny_corpus / "LibriSpeech", "--stage", "3"])
    _assert_one_error(asr, "the train stage did not finish")
    qbe = _run([RECIPES / "qbe.sh", *common, "--quesst-root", tiny_corpus / "quesst14Database", "--stage", "2"])
    _assert_one_error(qbe, "stage 1 did not finish")
    pr = _run([RECIPES / "pr.sh", *common, "--librispeech", tiny_corpus / "LibriSpeech", "--stage", "2"])
    _assert_one_error(pr, "stage 1 did not finish")


def test_run_superb_rejects_bad_model_specs(tmp_path):
    proc = _run([REPO / "run_superb.sh", "--model", "nocolon", "--exproot", tmp_path])
    _assert_one_error(proc, "bad model 'nocolon'")
    proc = _run([REPO / "run_superb.sh", "--model", f"x:hubert_local:{tmp_path}/none.pt", "--exproot", tmp_path])
    _assert_one_error(proc, "missing checkpoint of model 'x'")
    _assert_one_error(_run([REPO / "run_superb.sh", "--unknown"]), "unknown option: --unknown")


def _markdown_tables(text: str, header_start: str) -> dict[str, dict[str, str]]:
    """Rows (by first cell) of the Markdown table of ``text`` whose header line starts with ``header_start``;
    repeated column names get a suffix (``vs HuBERT``, ``vs HuBERT 2``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header, seen = [], {}
    for c in (c.strip() for c in lines[start].strip("|").split("|")):
        seen[c] = seen.get(c, 0) + 1
        header.append(c if seen[c] == 1 else f"{c} {seen[c]}")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells))
    return rows


@pytest.mark.slow
def test_run_superb_demo_fills_every_cell(tmp_path):
    """The README's main command, end to end (about 13 minutes on 2 CPU cores): every PR and QbE cell of the
    four rows is filled (ASR is off by default in the demo), the method rows say how much speech they
    processed, and the paired-difference and invariance outputs exist; the per-model feature folders are gone."""
    proc = _run([REPO / "run_superb.sh", "--demo", "--setup", "false"], timeout=3600)  # pytest runs inside .venv
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "DEMO NUMBERS ON SYNTHETIC SPEECH" in proc.stdout
    table = (REPO / "results" / "demo" / "superb.md").read_text()
    for name in ("superb.png", "invariance.png", "invariance.md"):
        assert (REPO / "results" / "demo" / name).stat().st_size > 0
    summary, wide = _markdown_tables(table, "| Model | PER % (PR) | vs HuBERT |"), _markdown_tables(table, "| Model | Kind |")
    assert sorted(summary) == sorted(wide) == ["HuBERT", "LASER", "SCORE", "SPIN"]
    for name in ("SCORE", "LASER", "SPIN"):  # every paired difference of the summary has its verdict
        for column in ("vs HuBERT", "vs SPIN"):
            cells = [v for k, v in summary[name].items() if k.startswith(column)]
            assert cells and all(c.split()[0].strip("*") in ("better", "worse", "not", "baseline") for c in cells), cells
    rows = wide
    for name, row in rows.items():
        for column in ("PER % (PR)", "MTWV (QbE)", "QbE layer", "MTWV last layer", "PR vs HuBERT", "QbE vs HuBERT"):
            assert row[column] not in ("", "missing"), (name, column, row[column])
        assert row["PER % (PR)"].endswith("(n=6)")
        if name != "HuBERT":
            assert float(row["Speech h"]) > 0 and row["Method"] == name.lower()
    assert not list((REPO / "exp" / "demo").glob("*/feature-cache"))
    paired = (REPO / "results" / "demo" / "paired.md").read_text()
    for name in ("SCORE", "LASER", "SPIN"):
        assert f"| {name} | PER % |" in paired and f"| {name} | MTWV last layer |" in paired
