#!/usr/bin/env bash
# Runs the studies named (default: clean noise40) through samsweep's own path (API, embedded broker, two CPU workers
# of one thread each) and writes what `samsweep run` prints to RESULTS-<study>.txt.
# Usage: experiments/cifar10-subset/run.sh [STUDY...]   (from the repository root, after make setup)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
state=$(mktemp -d)
export SAMSWEEP_STATE_DIR=$state SAMSWEEP_DATA_DIR=$root/../shared/data SAMSWEEP_TORCH_THREADS=1
port=${PORT:-8765}
"$root/.venv/bin/samsweep" up --port "$port" --concurrency 2 >"$state/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(clean noise40)
for study in "${studies[@]}"; do
  echo "== $study ($(date -u +%FT%TZ), $(nproc) cores, torch $("$root/.venv/bin/python" -c 'import torch; print(torch.__version__)'))" \
    | tee "$here/RESULTS-$study.txt"
  "$root/.venv/bin/samsweep" run "$here/$study.yaml" --server "http://127.0.0.1:$port" \
    2>/dev/null | tee -a "$here/RESULTS-$study.txt"
done
