#!/usr/bin/env bash
# Chooses the learning rate and length of SCORE for the small model on the demo's DEV split only:
# fine-tunes one model per (lr, updates) pair, runs QbE on the dev queries for every layer and prints
# the dev MTWV of each layer beside the starting model's. The test split and the eval queries are not
# touched. recipes/score/small.yaml holds the choice.
#
#   recipes/score/select_small.sh                                   # the demo corpus and shipped model
#   recipes/score/select_small.sh --lrs "1e-3 3e-3" --steps "100 200"
#
# Options (default in brackets):
#   --data DIR        corpus root (LibriSpeech/ and quesst14Database/) [data/demo]
#   --init PATH       starting model [score_upstream/pretrained/hubert_small_synth.pt]
#   --exp DIR         one folder per candidate [exp/select_small]
#   --lrs "A B"       learning rates [3e-4 1e-3 3e-3]
#   --steps "N M"     numbers of updates (warm-up: 28 % of them, as the paper's 1,000 of 3,600) [100]
set -euo pipefail
SCORE_RECIPE=select_small
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/recipes/lib/common.sh"

data=data/demo     # corpus root
init=score_upstream/pretrained/hubert_small_synth.pt  # starting model
exp=exp/select_small  # candidates
lrs="3e-4 1e-3 3e-3"  # learning rates
steps="100"        # numbers of updates
OPTIONS="data init exp lrs steps"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
cd "$root"
require_file "$init" "starting model (--init)" "make it with recipes/pretrain/run.sh"
require_dir "$data/quesst14Database" "QUESST-layout corpus" "score-synth --out $data --size demo --seed 0"

dev_qbe() {  # dev_qbe NAME UPSTREAM CKPT: dev MTWV of every layer -> $exp/NAME/qbe/dev/twv.log
  "$root/recipes/qbe.sh" --upstream "$2" --ckpt "$3" --quesst-root "$data/quesst14Database" --expdir "$exp/$1" \
    --device cpu --stop-stage 2 --official false >/dev/null
}

log "start model: dev QbE of every layer"
dev_qbe start hubert_local "$init"
for lr in $lrs; do
  for n in $steps; do
    name="lr${lr}_n${n}"
    warm=$(( (n * 28 + 50) / 100 ))
    if [ ! -f "$exp/$name/score/score_hubert.pt" ]; then
      log "SCORE lr $lr, $n updates (warm-up $warm) -> $exp/$name/score"
      score-train recipes/score/small.yaml --data "$data" --out "$exp/$name/score" --overwrite "model.init=$init" \
        "optim.lr=$lr" "optim.total_steps=$n" "optim.warmup_steps=$warm" >"$exp/$name.train.log" 2>&1 \
        || die "score-train failed, see $exp/$name.train.log"
    fi
    dev_qbe "$name" score_hubert "$exp/$name/score/score_hubert.pt"
  done
done
log "dev MTWV per layer (0 = CNN features; the last is the encoder output):"
for d in "$exp"/*/qbe/dev; do
  printf '%-22s %s\n' "$(basename "$(dirname "$(dirname "$d")")")" \
    "$(sed -n 's/^layer \([0-9]*\):.*maxTWV: \([-0-9.]*\).*/L\1=\2/p' "$d/twv.log" | sort -t= -k1.2 -n | tr '\n' ' ')"
done
