"""Query-by-example: batched subsequence-DTW search, its C++ kernel, QUESST 2014 driver, TWV scoring, stdlist I/O."""
