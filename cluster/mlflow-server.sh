#!/usr/bin/env bash
# Starts the cluster's MLflow tracking server on the head node, once: a re-run (`ray up` again,
# a restarted head) finds it by its pid file or by its answer on the port and starts nothing.
# (A `pgrep -f "mlflow server"` guard run through `bash -c` matches its own command line and so
# never starts the server.)
#
#   FPR_RESULTS           results root on the head (default ~/results); the store is
#                         $FPR_RESULTS/mlflow/mlflow.db, so `ray rsync-down ... ~/results/` brings it home
#   FPR_MLFLOW_ARTIFACTS  artifact root (default $FPR_RESULTS/mlflow/artifacts; or s3://bucket/prefix)
#   FPR_MLFLOW_PORT       port on the head's loopback (default 5000)
#
# The server runs in its own session with its job workers off, so `kill -- -$(cat .../server.pid)`
# stops all of it.
set -euo pipefail
root="${FPR_RESULTS:-$HOME/results}"
port="${FPR_MLFLOW_PORT:-5000}"
store="$root/mlflow"
artifacts="${FPR_MLFLOW_ARTIFACTS:-$store/artifacts}"
pidfile="$store/server.pid"
mkdir -p "$store"

answers() { python3 - "$port" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2)
except Exception:
    sys.exit(1)
EOF
}

if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "mlflow-server: already running (pid $(cat "$pidfile")), store $store/mlflow.db"
  exit 0
fi
if answers; then
  echo "mlflow-server: something already serves http://127.0.0.1:$port; not starting a second server"
  exit 0
fi
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid nohup mlflow server --host 127.0.0.1 --port "$port" \
  --backend-store-uri "sqlite:///$store/mlflow.db" --artifacts-destination "$artifacts" --workers 2 \
  > "$store/server.log" 2>&1 < /dev/null &
echo $! > "$pidfile"
for _ in $(seq 120); do
  if answers; then
    echo "mlflow-server: started (pid $(cat "$pidfile")) on http://127.0.0.1:$port, store $store/mlflow.db"
    exit 0
  fi
  kill -0 "$(cat "$pidfile")" 2>/dev/null || break
  sleep 1
done
echo "mlflow-server: did not come up; see $store/server.log" >&2
tail -20 "$store/server.log" >&2 || true
exit 1
