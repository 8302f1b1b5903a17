"""The ``score_hubert`` (alias ``score_local``) and ``score_wavlm`` s3prl upstreams.

How to use::

    import score_upstream
    score_upstream.register()                        # compat layer + names on s3prl.hub
    from s3prl.nn import S3PRLUpstream
    upstream = S3PRLUpstream("score_hubert", path_or_url="exp/score/score_hubert.pt")

or from the command line: ``score-s3prl -m train -u score_hubert -k CKPT -d asr ...`` (``-u score_wavlm`` for a
WavLM checkpoint).
"""
