"""Upstream entry points for ``s3prl.hub``: ``score_hubert`` (alias ``score_local``) and ``score_wavlm``.

How to use::

    from score_upstream.s3prl.upstream.hubconf import register_upstreams
    register_upstreams()            # what score_upstream.register() calls
    import s3prl.hub
    expert = s3prl.hub.score_hubert(ckpt="exp/score/score_hubert.pt")
    expert = s3prl.hub.score_wavlm(ckpt="exp/score_wavlm/score_wavlm.pt")

s3prl 0.4.18 has no plugin mechanism: the runner (``-u NAME``) and ``S3PRLUpstream(NAME)`` look NAME
up with ``getattr(s3prl.hub, NAME)``. Setting our functions as attributes of that module before they
look is the whole registration.
"""

from __future__ import annotations

import logging
import os

from score_upstream.models.formats import CheckpointError

logger = logging.getLogger(__name__)

UPSTREAM_NAMES = ("score_hubert", "score_local", "score_wavlm")


def _expert(name: str, family: str, ckpt, kwargs: dict):
    if ckpt is None or str(ckpt) == "":
        raise CheckpointError(f"{name}: no checkpoint given; pass -k CKPT (runner) or path_or_url=CKPT")
    if str(ckpt).startswith(("http://", "https://")):
        raise CheckpointError(f"{ckpt}: {name} loads local checkpoints only; download the file first")
    from score_upstream.s3prl.upstream.expert import UpstreamExpert

    return UpstreamExpert(str(ckpt), family=family, **kwargs)


def score_hubert(ckpt: str | os.PathLike | None = None, *args, **kwargs):
    """Build the :class:`~score_upstream.s3prl.upstream.expert.UpstreamExpert` for a local HuBERT checkpoint.

    Args:
        ckpt: a SCORE checkpoint or any HuBERT checkpoint ``load_hubert`` reads (``-k`` in s3prl's
            runner, ``path_or_url`` in ``S3PRLUpstream``).
        *args, **kwargs: s3prl's standard upstream arguments (``model_config``, ``refresh``); unused.
    """
    return _expert("score_hubert", "hubert", ckpt, kwargs)


def score_wavlm(ckpt: str | os.PathLike | None = None, *args, **kwargs):
    """The same expert for a local WavLM checkpoint (SCORE's ``score_wavlm.pt``, a unilm/s3prl WavLM ``.pt``
    or a transformers ``WavLMModel`` directory); hidden states as s3prl's ``wavlm_local``."""
    return _expert("score_wavlm", "wavlm", ckpt, kwargs)


def score_local(*args, **kwargs):
    """Alias of :func:`score_hubert` following s3prl's ``<name>_local`` convention."""
    return score_hubert(*args, **kwargs)


def register_upstreams() -> None:
    """Apply the s3prl compatibility layer and add our upstreams to ``s3prl.hub``. Idempotent."""
    from score_upstream.s3prl import compat

    compat.apply()
    import s3prl.hub

    for name, fn in (("score_hubert", score_hubert), ("score_local", score_local), ("score_wavlm", score_wavlm)):
        if getattr(s3prl.hub, name, None) is not fn:
            setattr(s3prl.hub, name, fn)
