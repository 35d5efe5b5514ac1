#!/usr/bin/env bash
# Single-split runs, a k-fold run and blends on a competition made of real photos, each command timed.
#
#   python benchmarks/make_cifar_competition.py ../shared/datasets/cifar10 /tmp/cifar-comp --train 5000 --test 1000
#   bash benchmarks/ensembles.sh /tmp/cifar-comp ../shared/weights/mobilenetv2_1.00_160_dogs.weights.h5 /tmp/ens
#
# Prints one line per command: what it printed last, and its wall time.
set -euo pipefail
DATA=$1 WEIGHTS=$2 OUT=$3
mkdir -p "$OUT"
COMMON=(--data "$DATA" --backbone mobilenet_v2 --weights "$WEIGHTS" --image-size 160)
FEATURES=(--method features --cache-dir "$OUT/cache")

timed() {  # name, command...
    local name=$1 started
    shift
    started=$(date +%s.%N)
    "$@" > "$OUT/$name.log" 2>&1
    printf '%-16s %7.1f s  %s\n' "$name" "$(awk "BEGIN {print $(date +%s.%N) - $started}")" "$(grep -v 'img/s' "$OUT/$name.log" | tail -1)"
}

score() {  # run folder or csv name
    dogbreeds score "$OUT/$1.csv" --solution "$DATA/solution.csv"
}

timed feat1 dogbreeds train "${COMMON[@]}" "${FEATURES[@]}" --run-dir "$OUT/feat1"
timed ft1 dogbreeds train "${COMMON[@]}" --epochs 3 --fine-tune-epochs 2 --run-dir "$OUT/ft1"
timed feat5 dogbreeds train "${COMMON[@]}" "${FEATURES[@]}" --folds 5 --run-dir "$OUT/feat5"
timed logreg5 dogbreeds train "${COMMON[@]}" "${FEATURES[@]}" --head logreg --folds 5 --run-dir "$OUT/logreg5"
for run in feat1 ft1 feat5 logreg5; do
    timed "submit-$run" dogbreeds submit --run "$OUT/$run" --out "$OUT/$run.csv" --force
    echo "  test: $(score "$run")"
done
timed blend-single dogbreeds blend "$OUT/feat1" "$OUT/ft1" --out "$OUT/blend-single.csv" --force
cat "$OUT/blend-single.log" | grep -v 'img/s'
echo "  test: $(score blend-single)"
timed blend-folds dogbreeds blend "$OUT/feat5" "$OUT/logreg5" --out "$OUT/blend-folds.csv" --force
cat "$OUT/blend-folds.log" | grep -v 'img/s'
echo "  test: $(score blend-folds)"
