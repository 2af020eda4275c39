#!/usr/bin/env bash
# The demo: the filter in a real Envoy (envoy/envoy.yaml), the demo backend on :8081 and
# the demo error service (envoy/error-pages) on :8082, all on loopback. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.tools/venv/bin/python
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

$PY envoy/demo/backend.py 8081 & pids+=($!)
$PY envoy/demo/pages.py 8082 envoy/error-pages & pids+=($!)
.tools/envoy -c envoy/envoy.yaml --concurrency 2 --disable-hot-restart -l warning & pids+=($!)

# Poll readiness (Envoy's admin /ready and the two servers' sockets).
$PY - <<'PY'
import socket, sys, time, urllib.request
deadline = time.time() + 60
def up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close(); return True
    except OSError:
        return False
while time.time() < deadline:
    try:
        if urllib.request.urlopen("http://127.0.0.1:9901/ready", timeout=1).status == 200 and up(8081) and up(8082):
            sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit("demo: Envoy did not become ready")
PY

cat <<'TXT'

Demo running: Envoy on http://127.0.0.1:10000 (admin http://127.0.0.1:9901)
Try:
  curl -i localhost:10000/status/404                                   # branded 404 page
  curl -i localhost:10000/status/404 -H 'accept: application/json'     # same error as JSON
  curl -i localhost:10000/status/500                                   # templated 5xx page with request id
  curl -i localhost:10000/dead                                         # Envoy's own 503 -> maintenance page, retry-after
  curl -i -H 'host: shop.localhost' localhost:10000/status/404         # per-host page (/shop/404.html)
  curl -i -H 'host: shop.localhost' localhost:10000/images/status/404  # path rule: placeholder image, status 200
  curl -i -H 'host: api.localhost'  localhost:10000/status/404         # api: 4xx passes through untouched
  curl -i -H 'host: api.localhost'  localhost:10000/status/503         # api: inline JSON error
  curl -i -H 'host: api.localhost'  localhost:10000/checkout           # route rule by Envoy route name
  curl -s localhost:9901/stats | grep custom_error_pages               # counters
  curl -s localhost:9901/stats/prometheus | grep custom_error_pages    # the same, per rule and outcome as labels
Counters: http://127.0.0.1:9901/stats/prometheus (Prometheus format, rule and outcome as labels);
a Grafana dashboard for them: envoy/grafana/custom-error-pages.json (docs/observability.md).
Access log lines (original status, rule, outcome, cache state) are printed below. Ctrl-C to stop.

TXT
wait
