#!/usr/bin/env bash
# Pre-trains the small HuBERT that the demo starts from, on synthetic speech the project makes, in HuBERT
# iterations (MFCC units, then units of a layer of the previous model), packages it with its provenance as
# score_upstream/pretrained/hubert_small_synth.pt and stores its layer profile on the demo's dev split in it.
# About 65 min on 2 CPU cores (small_v2: 1,800 + 3,600 + 1,800 updates, ~0.5 s each, plus labels).
#
#   recipes/pretrain/run.sh                       # data/pretrain, exp/pretrain_small_v2, the packaged model
#   recipes/pretrain/run.sh --stage 3             # from iteration 2 on
#   recipes/pretrain/run.sh --recipe small        # the model shipped before (exp/pretrain_small)
#
# Recipes (recipes/pretrain/NAME_iter<K>.yaml, one file per iteration):
#   small_v2  the shipped model: fairseq's loss normalisation, 100 Hz MFCC labels and k-means sample;
#             iteration 2 from scratch on units of iteration 1's layer 4; iteration 3 starts from
#             iteration 2's weights (model.init) and predicts units of its layer 1, masked frames only
#   small     the model shipped before (two iterations, the older loss, labels and k-means)
#
# Stages (--stage N --stop-stage M; a finished stage is skipped on a rerun, --force true redoes it):
#   1 corpus:       score-synth --size pretrain, no voice of the demo corpus     -> DATA
#   2 iteration 1:  score-pretrain RECIPE_iter1.yaml (MFCC k-means units)        -> EXP/iter1/hubert.pt
#   3 iteration 2:  score-pretrain RECIPE_iter2.yaml (iteration-1 layer units)   -> EXP/iter2/hubert.pt
#   4 iteration 3:  score-pretrain RECIPE_iter3.yaml (iteration-2 layer units, started from iteration 2's
#                   weights), when the recipe has one                            -> EXP/iter3/hubert.pt
#   5 package:      float16 weights + provenance                                 -> OUT
#   6 profile:      recipes/pretrain/profile.sh on the demo's dev split (QbE per layer, a PR probe per
#                   layer), stored in OUT (python -m score_upstream.pretrained show prints it) -> EXP/profile
#
# Options (default in brackets):
#   --recipe NAME         recipes/pretrain/NAME_iter<K>.yaml: small_v2 or small [small_v2]
#   --data DIR            pre-training corpus [data/pretrain]
#   --seed N              corpus seed [1]
#   --demo-seed N         seed of the demo corpus whose voices are kept out [0]
#   --exp DIR             experiment folder [exp/pretrain_RECIPE]
#   --out PATH            packaged model [small_v2: score_upstream/pretrained/hubert_small_synth.pt;
#                         otherwise EXP/hubert_RECIPE_synth.pt]
#   --iterations N        HuBERT iterations, at most the recipe's files [all of the recipe's]
#   --profile-data DIR    the demo corpus for stage 6, made there when missing [data/demo]
#   --force BOOL          rerun stages already marked done [false]
#   --stage N / --stop-stage M   first and last stage to run [1 / 6]
set -euo pipefail
SCORE_RECIPE=pretrain
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/recipes/lib/common.sh"

stage=1            # first stage to run
stop_stage=6       # last stage to run
recipe=small_v2    # recipes/pretrain/RECIPE_iter<K>.yaml
data=data/pretrain # pre-training corpus
seed=1             # corpus seed
demo_seed=0        # the demo corpus whose voices stay out
exp=""             # experiment folder (empty: the recipe's)
out=""             # packaged model (empty: the recipe's)
iterations=       # HuBERT iterations (empty: as many as the recipe has)
profile_data=data/demo  # the demo corpus whose dev split the layer profile reads
force=false        # rerun finished stages
OPTIONS="stage stop_stage recipe data seed demo_seed exp out iterations profile_data force"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
cd "$root"
yaml() { printf 'recipes/pretrain/%s_iter%s.yaml' "$recipe" "$1"; }
[ -f "$(yaml 1)" ] && [ -f "$(yaml 2)" ] || die "--recipe $recipe: expected $(yaml 1) and $(yaml 2) (recipes: small_v2, small)"
available=2
[ ! -f "$(yaml 3)" ] || available=3
iterations="${iterations:-$available}"
[[ "$iterations" =~ ^[1-3]$ ]] && [ "$iterations" -le "$available" ] \
  || die "--iterations must be 1 to $available for --recipe $recipe, got '$iterations'"
exp="${exp:-exp/pretrain_$recipe}"
if [ "$recipe" = small_v2 ]; then
  out="${out:-score_upstream/pretrained/hubert_small_synth.pt}"
else
  out="${out:-$exp/hubert_${recipe}_synth.pt}"
fi
STAGE_DIR="$exp"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

stage_corpus() {
  score-synth --out "$data" --size pretrain --seed "$seed" --disjoint-from "demo:$demo_seed" || exit 2
}
stage_iter1() {
  score-pretrain "$(yaml 1)" --data "$data" --out "$exp/iter1" resume=auto || exit 2
}
stage_iter2() {
  score-pretrain "$(yaml 2)" --data "$data" --out "$exp/iter2" resume=auto "labels.model=$exp/iter1/hubert.pt" || exit 2
}
stage_iter3() {
  score-pretrain "$(yaml 3)" --data "$data" --out "$exp/iter3" resume=auto "labels.model=$exp/iter2/hubert.pt" \
    "model.init=$exp/iter2/hubert.pt" || exit 2
}
stage_profile() {
  "$root/recipes/pretrain/profile.sh" --ckpt "$out" --expdir "$exp/profile" --data "$profile_data" || exit 2
  "$(score_python)" -m score_upstream.pretrained attach-profile "$out" "$exp/profile/profile.json" || exit 2
}
stage_package() {
  local final="$exp/iter$iterations/hubert.pt"
  require_file "$final" "pre-trained model" "run the earlier stages"
  "$(score_python)" -m score_upstream.pretrained package "$final" "$out" \
    --recipe "recipes/pretrain/run.sh --recipe $recipe --iterations $iterations --seed $seed --demo-seed $demo_seed" || exit 2
}

run_stage 1 "corpus: score-synth pretrain seed $seed, disjoint from demo:$demo_seed -> $data" stage_corpus
stage_inputs --file "iteration-1 recipe=$(yaml 1)"
run_stage 2 "iteration 1: MFCC units ($(yaml 1)) -> $exp/iter1/hubert.pt" stage_iter1
if [ "$iterations" -ge 2 ]; then
  stage_inputs --file "iteration-2 recipe=$(yaml 2)"
  run_stage 3 "iteration 2: units of a layer of iteration 1 ($(yaml 2)) -> $exp/iter2/hubert.pt" stage_iter2
else
  run_stage 3 "iteration 2: skipped (--iterations $iterations)" true
fi
if [ "$iterations" -ge 3 ]; then
  stage_inputs --file "iteration-3 recipe=$(yaml 3)"
  run_stage 4 "iteration 3: units of a layer of iteration 2, from its weights ($(yaml 3)) -> $exp/iter3/hubert.pt" stage_iter3
else
  run_stage 4 "iteration 3: skipped (--iterations $iterations)" true
fi
run_stage 5 "package: $exp/iter$iterations/hubert.pt -> $out" stage_package
# keyed on the earlier stages (the package's source), not on OUT's bytes, which storing the profile changes
run_stage 6 "layer profile on the demo's dev split (recipes/pretrain/profile.sh) -> $exp/profile, stored in $out" stage_profile
log "done: $out"
