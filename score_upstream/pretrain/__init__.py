"""HuBERT pre-training (``score-pretrain``): k-means labels of MFCC or of a model layer, masked prediction.

The project's demo starts from a small HuBERT made this way on synthetic speech, since no real HuBERT can
be downloaded where it runs; the same code pre-trains any HuBERT-architecture model.
"""
