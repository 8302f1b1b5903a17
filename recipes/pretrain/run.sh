#!/usr/bin/env bash
# Pre-trains the small HuBERT that the demo starts from, on synthetic speech the project makes, in two
# HuBERT iterations (MFCC units, then units of layer 4 of the first model), and packages it with its
# provenance as score_upstream/pretrained/hubert_small_synth.pt. About 45 min on 2 CPU cores.
#
#   recipes/pretrain/run.sh                       # data/pretrain, exp/pretrain, the packaged model
#   recipes/pretrain/run.sh --stage 3             # from iteration 2 on
#   recipes/pretrain/run.sh --recipe small_v2     # fairseq's loss, 100 Hz MFCC labels and k-means sample
#                                                 # -> exp/pretrain_small_v2, .../hubert_small_v2_synth.pt
#
# Recipes: small (small_iter1/2.yaml) reproduces the shipped model; small_v2 (small_v2_iter1/2.yaml) is
# the same model with the config's defaults, which follow fairseq, for the next model.
#
# Stages (--stage N --stop-stage M; a finished stage is skipped on a rerun, --force true redoes it):
#   1 corpus:       score-synth --size pretrain, no voice of the demo corpus     -> DATA
#   2 iteration 1:  score-pretrain RECIPE_iter1.yaml (MFCC k-means units)        -> EXP/iter1/hubert.pt
#   3 iteration 2:  score-pretrain RECIPE_iter2.yaml (iteration-1 layer units)   -> EXP/iter2/hubert.pt
#   4 package:      float16 weights + provenance                                 -> OUT
#   5 profile:      recipes/pretrain/profile.sh on the demo's dev split (QbE per layer, a PR probe per
#                   layer), stored in OUT (python -m score_upstream.pretrained show prints it) -> EXP/profile
#
# Options (default in brackets):
#   --recipe NAME         recipes/pretrain/NAME_iter1.yaml and NAME_iter2.yaml: small or small_v2 [small]
#   --data DIR            pre-training corpus [data/pretrain]
#   --seed N              corpus seed [1]
#   --demo-seed N         seed of the demo corpus whose voices are kept out [0]
#   --exp DIR             experiment folder [exp/pretrain; small_v2: exp/pretrain_small_v2]
#   --out PATH            packaged model [score_upstream/pretrained/hubert_small_synth.pt;
#                         small_v2: exp/pretrain_small_v2/hubert_small_v2_synth.pt]
#   --iterations N        1 or 2 HuBERT iterations [2]
#   --profile-data DIR    the demo corpus for stage 5, made there when missing [data/demo]
#   --force BOOL          rerun stages already marked done [false]
#   --stage N / --stop-stage M   first and last stage to run [1 / 5]
set -euo pipefail
SCORE_RECIPE=pretrain
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$root/recipes/lib/common.sh"

stage=1            # first stage to run
stop_stage=5       # last stage to run
recipe=small      # recipes/pretrain/RECIPE_iter{1,2}.yaml
data=data/pretrain # pre-training corpus
seed=1             # corpus seed
demo_seed=0        # the demo corpus whose voices stay out
exp=""             # experiment folder (empty: the recipe's)
out=""             # packaged model (empty: the recipe's)
iterations=2       # HuBERT iterations
profile_data=data/demo  # the demo corpus whose dev split the layer profile reads
force=false        # rerun finished stages
OPTIONS="stage stop_stage recipe data seed demo_seed exp out iterations profile_data force"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
[[ "$iterations" =~ ^[12]$ ]] || die "--iterations must be 1 or 2, got '$iterations'"
cd "$root"
iter1_yaml="recipes/pretrain/${recipe}_iter1.yaml"
iter2_yaml="recipes/pretrain/${recipe}_iter2.yaml"
[ -f "$iter1_yaml" ] && [ -f "$iter2_yaml" ] || die "--recipe $recipe: expected $iter1_yaml and $iter2_yaml (recipes: small, small_v2)"
if [ "$recipe" = small ]; then
  exp="${exp:-exp/pretrain}"
  out="${out:-score_upstream/pretrained/hubert_small_synth.pt}"
else
  exp="${exp:-exp/pretrain_$recipe}"
  out="${out:-$exp/hubert_${recipe}_synth.pt}"
fi
STAGE_DIR="$exp"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"

stage_corpus() {
  score-synth --out "$data" --size pretrain --seed "$seed" --disjoint-from "demo:$demo_seed" || exit 2
}
stage_iter1() {
  score-pretrain "$iter1_yaml" --data "$data" --out "$exp/iter1" resume=auto || exit 2
}
stage_iter2() {
  score-pretrain "$iter2_yaml" --data "$data" --out "$exp/iter2" resume=auto \
    "labels.model=$exp/iter1/hubert.pt" || exit 2
}
stage_profile() {
  "$root/recipes/pretrain/profile.sh" --ckpt "$out" --expdir "$exp/profile" --data "$profile_data" || exit 2
  "$(score_python)" -m score_upstream.pretrained attach-profile "$out" "$exp/profile/profile.json" || exit 2
}
stage_package() {
  local final="$exp/iter1/hubert.pt"
  [ "$iterations" = 1 ] || final="$exp/iter2/hubert.pt"
  require_file "$final" "pre-trained model" "run the earlier stages"
  "$(score_python)" -m score_upstream.pretrained package "$final" "$out" --recipe "recipes/pretrain/run.sh$([ "$recipe" = small ] || echo " --recipe $recipe") --iterations $iterations --seed $seed --demo-seed $demo_seed" || exit 2
}

run_stage 1 "corpus: score-synth pretrain seed $seed, disjoint from demo:$demo_seed -> $data" stage_corpus
stage_inputs --file "iteration-1 recipe=$iter1_yaml"
run_stage 2 "iteration 1: MFCC units ($iter1_yaml) -> $exp/iter1/hubert.pt" stage_iter1
if [ "$iterations" = 2 ]; then
  stage_inputs --file "iteration-2 recipe=$iter2_yaml"
  run_stage 3 "iteration 2: layer-4 units of iteration 1 ($iter2_yaml) -> $exp/iter2/hubert.pt" stage_iter2
else
  run_stage 3 "iteration 2: skipped (--iterations 1)" true
fi
run_stage 4 "package: $exp/iter$iterations/hubert.pt -> $out" stage_package
# keyed on the earlier stages (the package's source), not on OUT's bytes, which storing the profile changes
run_stage 5 "layer profile on the demo's dev split (recipes/pretrain/profile.sh) -> $exp/profile, stored in $out" stage_profile
log "done: $out"
