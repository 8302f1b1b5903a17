"""Untrusted checkpoints, failures that must stop a script, and paths users really have.

A checkpoint whose config string would run code (or exhaust memory) is refused by every recipe and by
run_superb.sh in one line before anything runs; a failing evaluation or downstream stage ends run_superb.sh
with a non-zero status; the recipes run to the end on corpora under a folder named ``a b/it's=x,,y``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from score_upstream.models.formats import CheckpointError
from score_upstream.models.formats.hf import parse_conv_layers
from score_upstream.s3prl.vet import vet

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
BIN = Path(sys.executable).parent
FAST_S3PRL = ["--device", "cpu", "--max-steps", "1", "--batch-size", "2", "--num-workers", "0"]
CODE = "__import__('os').system('touch {marker}') or [(32,10,5)]"


def _run(args, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(BIN.parent))
    env.setdefault("OMP_NUM_THREADS", "2")
    return subprocess.run([str(a) for a in args], cwd=cwd or REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _one_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _with_cfg(src: Path, dst: Path, **model_cfg) -> Path:
    state = torch.load(src, map_location="cpu", weights_only=True)
    state["model_cfg"].update(model_cfg)
    torch.save(state, dst)
    return dst


@pytest.fixture()
def evil_ckpt(tiny_hubert_ckpt, tmp_path) -> tuple[Path, Path]:
    """A tiny HuBERT in s3prl's format whose conv_feature_layers would create MARKER if eval()'d."""
    marker = tmp_path / "ran"
    return _with_cfg(tiny_hubert_ckpt, tmp_path / "evil.pt", conv_feature_layers=CODE.format(marker=marker)), marker


@pytest.mark.parametrize("spec", ["[(1,1,1)] * 10**9", "[(1,1,1)] * 1000000000", "[(1,1,1)] * 1000 * 1000 * 1000",
                                  "[(1,1,1)] * 65", "__import__('os').getcwd()", "[(512,10,5)] * -1", "[" * 5000])
def test_conv_layers_refused_in_one_line_before_memory_is_taken(spec):
    with pytest.raises(CheckpointError) as err:
        parse_conv_layers(spec)
    assert "\n" not in str(err.value) and "conv_feature_layers" in str(err.value)


def test_conv_layers_of_released_models_parse():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == (
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2)
    assert len(parse_conv_layers("[(1,1,1)] * 64")) == 64


def test_vet_names_file_and_key_for_every_upstream(evil_ckpt, tiny_hubert_ckpt, tmp_path):
    evil, marker = evil_ckpt
    for upstream in ("hubert_local", "score_hubert", "auto", "wav2vec2_local"):
        with pytest.raises(CheckpointError) as err:
            vet(evil, upstream)
        assert str(evil) in str(err.value) and "conv_feature_layers" in str(err.value), upstream
    huge = _with_cfg(tiny_hubert_ckpt, tmp_path / "deep.pt", encoder_layers=10**9)
    with pytest.raises(CheckpointError, match="encoder_layers"):
        vet(huge, "hubert_local")
    with pytest.raises(CheckpointError, match="upstream wavlm_local reads wavlm ones"):
        vet(tiny_hubert_ckpt, "wavlm_local")
    assert vet(tiny_hubert_ckpt, "auto").upstream == "score_hubert"
    assert not marker.exists()


@pytest.mark.parametrize("recipe", ["asr", "pr", "qbe"])
def test_recipe_refuses_code_in_checkpoint_before_any_stage(recipe, evil_ckpt, tiny_corpus, tmp_path):
    evil, marker = evil_ckpt
    data = ["--quesst-root", tiny_corpus / "quesst14Database"] if recipe == "qbe" else [
        "--librispeech", tiny_corpus / "LibriSpeech"]
    proc = _run([RECIPES / f"{recipe}.sh", "--upstream", "hubert_local", "--ckpt", evil, *data,
                 "--expdir", tmp_path / "exp"])
    _one_error(proc, str(evil), "conv_feature_layers")
    assert "Stage" not in proc.stderr and not (tmp_path / "exp").exists() and not marker.exists()


def test_run_superb_checks_every_model_before_the_first_stage(evil_ckpt, tiny_hubert_ckpt, tiny_corpus, tmp_path):
    evil, marker = evil_ckpt
    common = ["--librispeech", tiny_corpus / "LibriSpeech", "--quesst-root", tiny_corpus / "quesst14Database",
              "--exproot", tmp_path / "exp", "--out", tmp_path / "out", "--device", "cpu"]
    proc = _run([REPO / "run_superb.sh", "--model", f"good:hubert_local:{tiny_hubert_ckpt}",
                 "--model", f"bad:hubert_local:{evil}", *common])
    _one_error(proc, str(evil), "conv_feature_layers")
    assert not (tmp_path / "exp").exists() and not marker.exists()
    proc = _run([REPO / "run_superb.sh", "--model", f"good:hubert_local:{tiny_hubert_ckpt}",
                 "--model", f"typo:auto:{tmp_path}/missing.pt", *common])
    _one_error(proc, "missing checkpoint of model 'typo'")
    assert not (tmp_path / "exp").exists()


def test_run_superb_stops_when_a_downstream_stage_fails(tiny_hubert_ckpt, tiny_corpus, tmp_path):
    proc = _run([REPO / "run_superb.sh", "--model", f"m:hubert_local:{tiny_hubert_ckpt}", "--tasks", "qbe pr",
                 "--quesst-root", tmp_path / "no-quesst", "--librispeech", tiny_corpus / "LibriSpeech",
                 "--exproot", tmp_path / "exp", "--out", tmp_path / "out", "--device", "cpu"])
    _one_error(proc, "no-quesst")
    assert not (tmp_path / "exp" / "m" / "pr").exists() and not (tmp_path / "out").exists()


def test_run_superb_demo_stops_when_the_starting_model_evaluation_fails(tmp_path):
    """The demo's starting model is evaluated in a background subshell; its failure (here pr.sh refusing
    --jobs 0) must end the script, not let QbE, the table and the rest run on. The scripts run from a copy so
    the demo's folders land in tmp_path."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "run_superb.sh", root / "run_superb.sh")
    (root / "recipes").symlink_to(RECIPES)
    (root / "score_upstream").symlink_to(REPO / "score_upstream")
    proc = _run([root / "run_superb.sh", "--demo", "--setup", "false", "--demo-size", "tiny", "--methods", "",
                 "--jobs", "0"], cwd=tmp_path)
    # the recipe's own error line, then the script's: the last line says what stopped
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: run_superb: evaluation of the starting model failed")
    assert "error: pr: --jobs must be a positive integer" in proc.stderr
    assert "Stage 2: dev search" not in proc.stderr and "table:" not in proc.stderr


def _odd_corpus(tiny_corpus: Path, tmp_path: Path) -> Path:
    odd = tmp_path / "a b" / "it's=x,,y"
    odd.mkdir(parents=True)
    for name in ("LibriSpeech", "quesst14Database"):
        (odd / name).symlink_to(tiny_corpus / name)
    shutil.copy(tiny_corpus / "librispeech-lexicon.txt", odd / "librispeech-lexicon.txt")
    return odd


@pytest.mark.compat_env
def test_asr_runs_under_a_path_with_space_quote_equals_and_commas(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    odd = _odd_corpus(tiny_corpus, tmp_path)
    ckpt = odd / "tiny model.pt"
    shutil.copy(tiny_hubert_ckpt, ckpt)
    small = "config.downstream_expert.modelrc.RNNs.dim=[16,16],,config.downstream_expert.modelrc.project_dim=16"
    proc = _run([RECIPES / "asr.sh", "--upstream", "hubert_local", "--ckpt", ckpt, "--librispeech", odd / "LibriSpeech",
                 "--expdir", odd / "exp", *FAST_S3PRL, "-o", small])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((odd / "exp" / "asr" / "seed1337" / "result.json").read_text())["metric"] == "wer"


@pytest.mark.compat_env
def test_pr_runs_under_a_path_with_space_quote_equals_and_commas(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    odd = _odd_corpus(tiny_corpus, tmp_path)
    proc = _run([RECIPES / "pr.sh", "--upstream", "hubert_local", "--ckpt", tiny_hubert_ckpt,
                 "--librispeech", odd / "LibriSpeech", "--expdir", odd / "exp", *FAST_S3PRL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((odd / "exp" / "pr" / "seed1337" / "result.json").read_text())["metric"] == "per"


def test_qbe_runs_under_a_path_with_space_quote_equals_and_commas(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    odd = _odd_corpus(tiny_corpus, tmp_path)
    proc = _run([RECIPES / "qbe.sh", "--upstream", "hubert_local", "--ckpt", tiny_hubert_ckpt, "--quesst-root",
                 odd / "quesst14Database", "--expdir", odd / "exp", "--device", "cpu", "--qbe-layer", "last"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((odd / "exp" / "qbe" / "qbe_result.json").read_text())["layer"] == 12
