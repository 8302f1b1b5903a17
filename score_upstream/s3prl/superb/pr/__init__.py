"""SUPERB phoneme recognition assets: the libriphone ``ctc`` config, the 71-phone vocabulary
(``phones.txt``), the dataset module s3prl imports (:mod:`.libriphone`) and the data preparation
step of ``recipes/pr.sh`` (:mod:`.prepare`)."""
