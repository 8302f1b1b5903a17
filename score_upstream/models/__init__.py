"""HuBERT: the model bundle, its configs and checkpoint formats (fairseq, s3prl, transformers, SPIN)."""
