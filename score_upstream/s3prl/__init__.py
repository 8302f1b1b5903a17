"""The s3prl bridge: compatibility layer, the ``score_hubert`` upstream, ``score-s3prl`` and SUPERB assets."""
