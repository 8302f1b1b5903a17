"""score-upstream: SCORE fine-tuning of HuBERT (and WavLM) and its s3prl upstreams.

Importing this package is light (no s3prl import). Heavy pieces load on first use::

    import score_upstream
    score_upstream.register()          # s3prl compatibility layer + `score_hubert` on s3prl.hub
    from s3prl.nn import S3PRLUpstream
    up = S3PRLUpstream("score_hubert", path_or_url="exp/score/score_hubert.pt")

    loss = score_upstream.soft_dtw_divergence(x, y, x_lengths, y_lengths, gamma=0.1)
"""

__version__ = "0.1.0"

__all__ = ["register", "soft_dtw_divergence", "__version__"]


def register() -> None:
    """Make s3prl 0.4.18 work with today's libraries and add our upstreams to ``s3prl.hub``.

    Idempotent. After it, ``s3prl.hub.score_hubert`` / ``score_local`` / ``score_wavlm`` exist and
    ``s3prl.nn.S3PRLUpstream("score_hubert", path_or_url=CKPT)`` works.
    """
    from score_upstream.s3prl.upstream.hubconf import register_upstreams

    register_upstreams()


def __getattr__(name):
    if name == "soft_dtw_divergence":
        from score_upstream.sdtw.divergence import soft_dtw_divergence

        return soft_dtw_divergence
    raise AttributeError(f"module 'score_upstream' has no attribute {name!r}")
