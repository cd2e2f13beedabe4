# Sourced by run.sh and search.sh: a samsweep server for the experiments on port $port (the
# embedded default in a fresh state directory, two CPU workers of one thread each, the
# shared data root), stopped when the calling script exits. Sets $here, $root and $state.
here=$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)
root=$(cd "$here/../.." && pwd)
state=$(mktemp -d)
export SAMSWEEP_STATE_DIR=$state SAMSWEEP_DATA_DIR=$root/../shared/data SAMSWEEP_TORCH_THREADS=1
"$root/.venv/bin/samsweep" up --port "$port" --concurrency 2 >"$state/up.log" 2>&1 &
up=$!
trap 'kill $up 2>/dev/null; wait $up 2>/dev/null' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
