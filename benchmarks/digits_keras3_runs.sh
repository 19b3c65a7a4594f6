#!/bin/sh
# The digits main job (gin_configs/digits_lenet300100_imp.gin) on tf_keras and on Keras 3
# with the TensorFlow and JAX backends, one after the other (same machine load), for the
# README's Keras 3 table, plot and wall times. Usage: benchmarks/digits_keras3_runs.sh OUT_DIR
set -e
OUT=${1:?usage: $0 OUT_DIR}
cd "$(dirname "$0")/.."
for flavour in "jax --backend=jax" "tensorflow --backend=tensorflow" "tf_keras --keras=2"; do
  set -- $flavour
  name=$1; shift
  start=$(date +%s)
  python tools/train.py --gin_file=gin_configs/digits_lenet300100_imp.gin \
    --output_dir="$OUT/$name" "$@"
  echo "$name wall_seconds $(( $(date +%s) - start ))" | tee -a "$OUT/walls.txt"
done
