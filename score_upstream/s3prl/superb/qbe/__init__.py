"""SUPERB query-by-example assets: the ``quesst14_dtw`` config s3prl's package lacks, the QUESST 2014
tree check of ``recipes/qbe.sh`` and its layer-selection protocol (:mod:`.prepare`)."""
