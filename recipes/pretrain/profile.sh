#!/usr/bin/env bash
# The layer profile of a pre-trained model on the demo corpus's dev split: QbE maxTWV of every hidden
# state on the dev queries, and a phone-recognition probe trained on one hidden state at a time (best dev
# PER over downstream seeds), each layer against layer 0 (the CNN output) with its interval. A HuBERT whose
# pre-training worked is best in an upper transformer layer on both (score_upstream/pretrain/profile.py).
# Only dev material is read: the QbE eval queries and test-clean are never touched.
#
#   recipes/pretrain/profile.sh --ckpt exp/pretrain_small_v2/hubert_small_v2_synth.pt --expdir exp/profile/small_v2
#   recipes/pretrain/profile.sh --ckpt score_upstream/pretrained/hubert_small_synth.pt --expdir exp/profile/shipped
#
# Stages (--stage N --stop-stage M; each recipe below skips what it already did for this checkpoint's content):
#   1 corpus:    score-synth --size demo --seed 0 (the demo's corpus), unless DATA exists   -> DATA
#   2 QbE:       recipes/qbe.sh --stop-stage 2: every layer on the dev queries             -> EXPDIR/qbe/dev/layer<L>/
#   3 PR probes: recipes/pr.sh --layer L --stop-stage 2 for every layer, the demo's PR settings
#                                                                                          -> EXPDIR/probe/layer<L>/pr/seed<S>/
#   4 profile:   python -m score_upstream.pretrain.profile                                 -> EXPDIR/profile.{json,md}
#
# Options (default in brackets):
#   --ckpt PATH           the pre-trained model (score-pretrain hubert.pt or a packaged one) [required]
#   --expdir DIR          where the measurements go [required]
#   --data DIR            the demo corpus (LibriSpeech/, quesst14Database/, librispeech-lexicon.txt) [data/demo]
#   --seeds "S1 S2"       PR probe seeds per layer (paired by seed against layer 0) [0 1 2 3]
#   --jobs N              probe seeds trained at the same time [3]
#   --pr-max-steps N      probe updates (the demo's PR) [400]
#   --layers "L1 L2"      hidden states to probe; empty = all of them (0 = CNN output) []
#   --stage N / --stop-stage M   first and last stage to run [1 / 4]
set -euo pipefail
SCORE_RECIPE=profile
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/recipes/lib/common.sh"

stage=1            # first stage to run
stop_stage=4       # last stage to run
ckpt=              # pre-trained model
expdir=            # where the measurements go
data=data/demo     # the demo corpus
seeds="0 1 2 3"    # probe seeds per layer
jobs=3             # probe seeds at the same time
pr_max_steps=$DEMO_PR_STEPS  # probe updates
layers=            # hidden states to probe (empty: all)
OPTIONS="stage stop_stage ckpt expdir data seeds jobs pr_max_steps layers"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
require_ckpt "$ckpt"
[ -n "$expdir" ] || die "missing --expdir DIR (where the measurements go)"
check_seeds "$seeds"
cd "$root"
vet_ckpt score_hubert "$ckpt"
n_layers="$("$(score_python)" - "$ckpt" <<'PY'
import sys
from score_upstream.models.hubert import load_hubert
print(load_hubert(sys.argv[1]).model_cfg["encoder_layers"])
PY
)" || die "could not read the number of layers of $ckpt"
[ -n "$layers" ] || layers="$(seq -s ' ' 0 "$n_layers")"
for L in $layers; do
  [[ "$L" =~ ^[0-9]+$ ]] && [ "$L" -le "$n_layers" ] || die "--layers: '$L' is not a hidden state of $ckpt (0..$n_layers)"
done
quesst="$data/quesst14Database"
# every process on one thread, several side by side; one model's hidden states computed once for all runs
export OMP_NUM_THREADS=1
export SCORE_UPSTREAM_CACHE_MB="${SCORE_UPSTREAM_CACHE_MB:-1024}"
export SCORE_UPSTREAM_CACHE_DIR="$expdir/feature-cache"

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  if [ -d "$data/LibriSpeech" ] && [ -d "$quesst" ]; then
    log "Stage 1: corpus $data is there"
  else
    log "Stage 1: the demo corpus: score-synth --size demo --seed 0 -> $data"
    score-synth --out "$data" --size demo --seed 0 || die "score-synth failed (see above)"
  fi
fi
if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "Stage 2: QbE, every layer on the dev queries -> $expdir/qbe/dev"
  "$root/recipes/qbe.sh" --upstream score_hubert --ckpt "$ckpt" --expdir "$expdir" --device cpu \
    --quesst-root "$quesst" --qbe-layer best --official false --stop-stage 2 || exit 2
fi
if [ "$stage" -le 3 ] && [ "$stop_stage" -ge 3 ]; then
  for L in $layers; do
    log "Stage 3: PR probe on layer $L of $n_layers (seeds $seeds) -> $expdir/probe/layer$L/pr"
    "$root/recipes/pr.sh" --upstream score_hubert --ckpt "$ckpt" --expdir "$expdir/probe/layer$L" --device cpu \
      --librispeech "$data/LibriSpeech" --lexicon "$data/librispeech-lexicon.txt" --layer "$L" \
      --seeds "$seeds" --jobs "$jobs" --max-steps "$pr_max_steps" "${DEMO_PR_OPTS[@]}" --stop-stage 2 || exit 2
  done
fi
if [ "$stage" -le 4 ] && [ "$stop_stage" -ge 4 ]; then
  log "Stage 4: profile -> $expdir/profile.{json,md}"
  # only the probe layers and seeds of this run: folders an earlier run left are never read
  "$(score_python)" -m score_upstream.pretrain.profile "$expdir" --n-layers "$n_layers" --ckpt "$ckpt" \
    --probe-layers "$layers" --seeds "$seeds" --groundtruth "$quesst/scoring/groundtruth_quesst14_dev" \
    --title "Layer profile on dev: $ckpt" || exit 2
  rm -rf "$expdir/feature-cache"
fi
