#!/usr/bin/env bash
# Issue 17's comparison: the full grid (search-grid.yaml) and TPE with pruning over the same space
# (search-tpe.yaml), one after the other through samsweep's own path (API, embedded broker, two
# CPU workers of one thread each). Writes what `samsweep run` prints to RESULTS-<study>.txt and
# every trial (GET /studies/{id}/trials) to trials-<study>.json.
# Usage: experiments/cifar10-subset/search.sh [STUDY...]   (default: search-grid search-tpe;
# from the repository root, after make setup)
set -euo pipefail
port=${PORT:-8766}
source "$(dirname "$0")/serve.sh"  # the server: $here, $root, $state
studies=("$@")
[ ${#studies[@]} -gt 0 ] || studies=(search-grid search-tpe)
for study in "${studies[@]}"; do
  echo "== $study ($(date -u +%FT%TZ), $(nproc) cores, torch $("$root/.venv/bin/python" -c 'import torch; print(torch.__version__)'))" \
    | tee "$here/RESULTS-$study.txt"
  start=$(date +%s)
  "$root/.venv/bin/samsweep" run "$here/$study.yaml" --server "http://127.0.0.1:$port" \
    2>/dev/null | tee -a "$here/RESULTS-$study.txt"
  echo "== wall $(( $(date +%s) - start )) s" | tee -a "$here/RESULTS-$study.txt"
  id=$(curl -sf "http://127.0.0.1:$port/studies?limit=1" | "$root/.venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["id"])')
  curl -sf "http://127.0.0.1:$port/studies/$id/trials?curves=true" >"$here/trials-$study.json"
done
