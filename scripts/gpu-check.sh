#!/usr/bin/env bash
# Issue 18's GPU checks as one command, on a CUDA host (../shared/docs/GPU.md items 1-3):
# the trainer's tests (tests/trainer/test_cuda.py runs there), `make bench`'s full matrix and
# 50 000-image epoch, and trials/hour with 1 vs packed trials per GPU. Every output goes
# under $OUT (default gpu-results/); PY is a Python with CUDA torch and samsweep installed
# (default .venv/bin/python: `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128`).
# BENCH_ARGS and PACKING_ARGS go to the two benchmarks (a CPU dry run of this script:
# BENCH_ARGS="--models cnn --rounds 1 --epoch-images 256 --no-compile" PACKING_ARGS="--epochs 1").
set -uo pipefail
out=${OUT:-gpu-results}
py=${PY:-.venv/bin/python}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
"$py" -m pytest -q -p no:cacheprovider ${TEST_ARGS:-tests/trainer} 2>&1 | tail -n 30 > "$out/trainer-tests.txt"
tail -n 3 "$out/trainer-tests.txt"
# shellcheck disable=SC2086  # the ARGS are word lists on purpose
"$py" -m benchmarks.fast_path --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.txt"
# shellcheck disable=SC2086
"$py" -m benchmarks.packing --out "$out" ${PACKING_ARGS:-} 2>&1 | tee "$out/packing.txt"
