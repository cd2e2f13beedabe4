#!/usr/bin/env bash
# Runs the studies named (default: clean noise40) through samsweep's own path (API, embedded broker, two CPU workers
# of one thread each) and writes what `samsweep run` prints to RESULTS-<study>.txt.
# Usage: experiments/cifar10-subset/run.sh [STUDY...]   (from the repository root, after make setup)
set -euo pipefail
port=${PORT:-8765}
source "$(dirname "$0")/serve.sh"  # the server: $here, $root, $state
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(clean noise40)
for study in "${studies[@]}"; do
  echo "== $study ($(date -u +%FT%TZ), $(nproc) cores, torch $("$root/.venv/bin/python" -c 'import torch; print(torch.__version__)'))" \
    | tee "$here/RESULTS-$study.txt"
  "$root/.venv/bin/samsweep" run "$here/$study.yaml" --server "http://127.0.0.1:$port" \
    2>/dev/null | tee -a "$here/RESULTS-$study.txt"
done
