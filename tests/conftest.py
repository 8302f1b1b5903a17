"""Shared fixtures: a tiny synthetic corpus and a tiny random HuBERT in s3prl's converted format.

Both are built once per test session from the project's own code (espeak-ng speech, random weights);
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One torch thread for the test (training tests compare runs bit for bit), restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """Root holding ``LibriSpeech/``, ``quesst14Database/`` and the lexicon, from ``score-synth --size tiny``."""
    from score_upstream.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=0, size="tiny")
    return out


@pytest.fixture(scope="session")
def tiny_hubert_ckpt(tmp_path_factory) -> Path:
    """A random tiny HuBERT (real architecture, 12 small layers) saved in s3prl's converted format."""
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg

    path = tmp_path_factory.mktemp("hubert") / "tiny_hubert.pt"
    save_s3prl(new_hubert(tiny_model_cfg(), seed=0), path)
    return path
