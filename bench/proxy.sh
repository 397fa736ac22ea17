#!/usr/bin/env bash
# Benchmark of jalur proxy against direct, Envoy 1.40, nginx and haproxy; one hop and two hops.
#
#   bench/proxy.sh            # installs what it needs, builds, runs every row, writes bench/RESULTS.md
#
# Each proxy is pinned to CPU $BENCH_PROXY_CPU (0); the backend (nginx serving a small static
# response), the control plane and the load generators (wrk, oha) run on CPU $BENCH_LOAD_CPU (1).
# Everything binds 127.0.0.1 on ports the kernel hands out. Every process started here is stopped
# on exit. See bench/README.md for the columns. Knobs (environment):
#   BENCH_ROWS            rows to run (default: all, in this order)
#   BENCH_CONNS=32 BENCH_WARMUP=3 BENCH_MAX_DURATION=10     closed-loop max-rps run (wrk)
#   BENCH_RATE=1000 BENCH_FIXED_DURATION=15                 open-loop fixed-rate run (oha)
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1   the CPUs (both 1: a diagnostic without the cross-CPU hop)
#   BENCH_NO_INSTALL=1    skip apt/cargo install and the build (use what is there)
#   BENCH_NO_RESULTS=1    print the table but leave bench/RESULTS.md alone
#   BENCH_JALUR=PATH      the jalur binary to run (default: target/release/jalur)
#   BENCH_NOTE="..."      a line added to the notes of RESULTS.md
#   BENCH_NICE=-10        run every benchmarked process (proxies, backend, load) at this nice
#                         level, to shield it from other work on a shared machine (default: 0)
#   BENCH_PERF=1          profile: `perf record` each proxy of the row during the max-rps run
#                         into bench/out/ROW/perf.PID.data (BENCH_PERF_CALLGRAPH: dwarf, the
#                         default, or fp); the sampling costs that run a few % of its throughput
#   BENCH_MESH_H2=1       the sidecar pairs talk HTTP/2 to each other (a DestinationRule with
#                         h2UpgradePolicy: UPGRADE on the echo-* hosts), as Istio meshes often do
#   BENCH_STRACE=1        count each proxy's syscalls (`strace -c -f`) during the fixed-rate run
#                         into bench/out/ROW/strace.PID.txt (strace slows that run: its CPU
#                         columns are then not comparable)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ALL_ROWS="direct jalur-1 envoy-1 nginx-1 haproxy-1 jalur-2 envoy-2 nginx-2 haproxy-2 jalur-2-mtls envoy-2-mtls
  jalur-2-mtls-authz envoy-2-mtls-authz jalur-gw-mutual envoy-gw-mutual haproxy-gw-mutual"
ROWS="${BENCH_ROWS:-$ALL_ROWS}"
CONNS="${BENCH_CONNS:-32}"
WARMUP="${BENCH_WARMUP:-3}"
MAX_DURATION="${BENCH_MAX_DURATION:-10}"
RATE="${BENCH_RATE:-1000}"
FIXED_DURATION="${BENCH_FIXED_DURATION:-15}"
HANDSHAKE_DURATION="${BENCH_HANDSHAKE_DURATION:-5}"
PROXY_CPU="${BENCH_PROXY_CPU:-0}"
LOAD_CPU="${BENCH_LOAD_CPU:-1}"
OUT="$ROOT/bench/out"          # raw outputs of the last run (ignored by git)
HOST="backend.default.svc.cluster.local"
BODY="hello from the bench backend"

say() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "FATAL: $*"; exit 1; }

# ---------------------------------------------------------------- install and build
install_tools() {
  local missing=()
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
  command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
  command -v ss >/dev/null 2>&1 || missing+=(iproute2)
  command -v pgrep >/dev/null 2>&1 || missing+=(procps)
  if ((${#missing[@]} > 0)); then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! command -v oha >/dev/null 2>&1 && [[ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/oha" ]]; then
    say "cargo install oha --locked (once; a few minutes)"
    cargo install oha --locked
  fi
  scripts/install-peers
  say "cargo build --release -p jalur"
  cargo build --release -p jalur 2>&1 | tail -n 2 >&2
}

if [[ -z "${BENCH_NO_INSTALL:-}" ]]; then
  install_tools
fi
export PATH="$PATH:/usr/sbin:${CARGO_HOME:-$HOME/.cargo}/bin"
JALUR="${BENCH_JALUR:-$ROOT/target/release/jalur}" # BENCH_JALUR: another build (smoke checks)
ENVOY="$(ls "$ROOT"/.venv/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1 || true)"
NGINX="$(command -v nginx)"
HAPROXY="$(command -v haproxy)"
[[ -x "$JALUR" ]] || die "no $JALUR (cargo build --release -p jalur)"
[[ -x "$ENVOY" ]] || die "no Envoy in .venv (scripts/install-peers)"
for t in wrk oha curl taskset ss pgrep python3; do command -v "$t" >/dev/null 2>&1 || die "$t missing"; done
(($(nproc) >= 2)) || die "needs 2 CPUs (proxy on $PROXY_CPU, load on $LOAD_CPU)"

# ---------------------------------------------------------------- processes
WORK="$(mktemp -d /tmp/jalur-bench.XXXXXX)"
ALL_PIDS=()
LAST_PID=""

NICE="${BENCH_NICE:-0}"
# pin CPU CMD...: run CMD on that CPU only, at nice level $NICE (taskset and nice exec the
# command, so a background pin's $! is the command's own pid).
pin() {
  local cpu="$1"
  shift
  taskset -c "$cpu" nice -n "$NICE" "$@"
}

# spawn CPU LOGFILE CMD...: start CMD in the background pinned to CPU; LAST_PID is its pid.
spawn() {
  local cpu="$1" log="$2"
  shift 2
  taskset -c "$cpu" nice -n "$NICE" "$@" >"$log" 2>&1 </dev/null &
  LAST_PID=$!
  ALL_PIDS+=("$LAST_PID")
}

# The pid and its descendants (nginx master + worker).
tree() {
  local pid
  for pid in "$@"; do
    [[ -d /proc/$pid ]] || continue
    echo "$pid"
    local kids
    kids="$(pgrep -P "$pid" 2>/dev/null || true)"
    # shellcheck disable=SC2086
    if [[ -n "$kids" ]]; then tree $kids; fi
  done
  return 0
}

stop() {
  local pids=() pid i
  for pid in "$@"; do
    # shellcheck disable=SC2046
    pids+=($(tree "$pid"))
  done
  ((${#pids[@]} > 0)) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for i in $(seq 50); do
    local alive=0
    for pid in "${pids[@]}"; do [[ -d /proc/$pid ]] && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e # stop everything even if one step fails
  if ((${#ALL_PIDS[@]} > 0)); then
    stop "${ALL_PIDS[@]}"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free loopback ports from the kernel (held together so they are distinct).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# wait_http PORT HOSTHEADER SECONDS: until GET / answers 200.
wait_http() {
  local port="$1" host="$2" deadline=$((SECONDS + $3)) code
  while ((SECONDS < deadline)); do
    code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$port/" || true)"
    [[ "$code" == 200 ]] && return 0
    sleep 0.2
  done
  return 1
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# utime+stime in clock ticks (fields 14 and 15, counted after the ")" closing comm).
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}' || echo 0; }

# snapshot FILE PIDS...: wall clock, the per-CPU lines of /proc/stat, each proxy pid's
# utime+stime, the same for the processes of the load CPU (backend, control plane), and the CPU
# seconds of this shell's finished children (`times`: the load generator once it has exited).
LOAD_PIDS=()
snapshot() {
  local file="$1" pid
  shift
  {
    echo "wall $(date +%s.%N)"
    grep '^cpu[0-9]' /proc/stat
    for pid in "$@"; do echo "pid $pid $(cpu_ticks "$pid")"; done
    # shellcheck disable=SC2046
    for pid in $(tree "${LOAD_PIDS[@]+"${LOAD_PIDS[@]}"}"); do echo "lpid $pid $(cpu_ticks "$pid")"; done
    echo "times (shell, then children):"
    times
  } >"$file"
}

# sample_rss FILE PIDS...: one line per 100 ms with each pid's VmRSS (kB), until killed.
sample_rss() {
  local file="$1"
  shift
  while true; do
    local line="" pid
    for pid in "$@"; do line+="$(rss_kb "$pid") "; done
    echo "$line" >>"$file"
    sleep 0.1
  done
}

# ---------------------------------------------------------------- backend and control plane
mkdir -p "$WORK"/{backend,config,logs}
read -r BACKEND_PORT XDS_PORT STATUS_PORT TLS_PORT <<<"$(free_ports 4)"

nginx_conf_common() {
  cat <<EOF
worker_processes 1;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $1/tmp_body;
  proxy_temp_path $1/tmp_proxy;
  fastcgi_temp_path $1/tmp_fcgi;
  uwsgi_temp_path $1/tmp_uwsgi;
  scgi_temp_path $1/tmp_scgi;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
EOF
}

{
  nginx_conf_common "$WORK/backend"
  cat <<EOF
  server {
    listen 127.0.0.1:$BACKEND_PORT reuseport;
    location / { default_type text/plain; return 200 "$BODY\n"; }
  }
}
EOF
} >"$WORK/backend/nginx.conf"
spawn "$LOAD_CPU" "$WORK/logs/backend.log" "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log" -g 'daemon off;'
BACKEND_PID=$LAST_PID

cat >"$WORK/config/backend.yaml" <<EOF
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [$HOST]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 80, name: http, protocol: HTTP}
  workloadSelector:
    labels: {app: backend}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: backend-v1, namespace: default}
spec:
  address: 127.0.0.1
  ports: {http: $BACKEND_PORT}
  labels: {app: backend, version: v1}
EOF
# No retries anywhere, so nothing hides a failed request. echo-jalur / echo-envoy are the services
# the two-hop server sidecars register for themselves when they connect.
for h in "$HOST" echo-jalur.default.svc.cluster.local echo-envoy.default.svc.cluster.local \
  echo-jalur-mtls.default.svc.cluster.local echo-envoy-mtls.default.svc.cluster.local; do
  cat >>"$WORK/config/vs.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ${h%%.*}, namespace: default}
spec:
  hosts: [$h]
  http:
  - retries: {attempts: 0}
    route:
    - destination: {host: $h}
EOF
done
# The mTLS rows' server sidecars accept mutual TLS only (STRICT), so a plaintext request through
# them cannot pass for an mTLS one.
for app in echo-jalur-mtls echo-envoy-mtls; do
  cat >>"$WORK/config/vs.yaml" <<EOF
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: $app, namespace: default}
spec:
  selector: {matchLabels: {app: $app}}
  mtls: {mode: STRICT}
EOF
done
if [[ -n "${BENCH_MESH_H2:-}" ]]; then
  for h in echo-jalur echo-envoy echo-jalur-mtls echo-envoy-mtls; do
    cat >>"$WORK/config/vs.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: $h-h2, namespace: default}
spec:
  host: $h.default.svc.cluster.local
  trafficPolicy:
    connectionPool:
      http: {h2UpgradePolicy: UPGRADE}
EOF
  done
fi
# Issue 11's rows (AuthorizationPolicy at a sidecar, MUTUAL gateway handshakes): bench/issue11.sh.
# shellcheck source=bench/issue11.sh
source "$ROOT/bench/issue11.sh"
issue11_config "$WORK/config"
# Plaintext xDS (15010) for the plain rows, TLS xDS + the CA (15012) for the mTLS rows.
spawn "$LOAD_CPU" "$WORK/logs/control.log" env RUST_LOG=warn "$JALUR" control --config "$WORK/config" \
  --xds-addr "127.0.0.1:$XDS_PORT" --insecure-xds --xds-tls-addr "127.0.0.1:$TLS_PORT" \
  --state-dir "$WORK/state" --status-addr "127.0.0.1:$STATUS_PORT" --registry-grace 0s
CONTROL_PID=$LAST_PID
LOAD_PIDS=("$BACKEND_PID" "$CONTROL_PID")
XDS="127.0.0.1:$XDS_PORT"

wait_http "$BACKEND_PORT" "$HOST" 20 || die "backend nginx did not answer: $(cat "$WORK/backend/error.log" 2>/dev/null)"
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$STATUS_PORT/ready" && break
  sleep 0.2
done
curl -sf -o /dev/null "http://127.0.0.1:$STATUS_PORT/ready" || die "jalur control not ready: $(tail -n 20 "$WORK/logs/control.log")"
say "backend nginx on 127.0.0.1:$BACKEND_PORT (cpu $LOAD_CPU), jalur control xDS on $XDS"

# ---------------------------------------------------------------- proxies
# Each start_* sets ENTRY_PORT (where the load generator connects), ENTRY_HOST (Host header),
# ROW_PIDS (the proxy processes measured) and ROW_CHECK (a port that must carry a connection from
# the first hop to the second: proof the request went through both sidecars), or returns 1.

start_jalur_sidecar() { # NAME [--service S --app-port P ...]; sets OUT_PORT IN_PORT LAST_PID
  local name="$1"
  shift
  local a h s
  read -r OUT_PORT IN_PORT a h s <<<"$(free_ports 5)"
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" env RUST_LOG=warn "$JALUR" proxy --xds "${SIDECAR_XDS:-$XDS}" \
    --namespace default --listen-address 127.0.0.1 --instance-ip 127.0.0.1 \
    --outbound-port "$OUT_PORT" --inbound-port "$IN_PORT" --admin-addr "127.0.0.1:$a" \
    --health-addr "127.0.0.1:$h" --stats-addr "127.0.0.1:$s" --drain-timeout 1s "$@"
}

# A bootstrap token for one service account, from the control plane's API.
token_for() { # SA FILE
  "$JALUR" token create --control "127.0.0.1:$STATUS_PORT" -n default --service-account "$1" >"$2" ||
    die "jalur token create failed for $1"
}

start_jalur_mtls_sidecar() { # NAME SA [jalur proxy args...]; sets OUT_PORT IN_PORT LAST_PID
  local name="$1" sa="$2"
  shift 2
  mkdir -p "$WORK/$name"
  token_for "$sa" "$WORK/$name/token"
  SIDECAR_XDS="https://127.0.0.1:$TLS_PORT" start_jalur_sidecar "$name" \
    --root-cert "$WORK/state/ca/trust-bundle.pem" --token-file "$WORK/$name/token" \
    --service-account "$sa" "$@"
}

# Envoy beside `jalur agent`, as Istio runs Envoy beside pilot-agent: the agent gets the
# certificate, serves it over SDS and writes Envoy's bootstrap. The agent idles on the load CPU
# and is not counted in the row (pilot-agent is not counted in Istio's sidecar figures either).
start_envoy_mtls_sidecar() { # NAME SA [jalur agent args...]; sets OUT_PORT IN_PORT LAST_PID
  local name="$1" sa="$2" dir="$WORK/$1" admin
  shift 2
  read -r OUT_PORT IN_PORT admin <<<"$(free_ports 3)"
  mkdir -p "$dir"
  token_for "$sa" "$dir/token"
  spawn "$LOAD_CPU" "$WORK/logs/$name-agent.log" env RUST_LOG=warn "$JALUR" agent \
    --xds-address "https://127.0.0.1:$TLS_PORT" --root-cert "$WORK/state/ca/trust-bundle.pem" \
    --token-file "$dir/token" --namespace default --service-account "$sa" \
    --sds-socket "$dir/sds.sock" --envoy-bootstrap "$dir/bootstrap.json" --delta \
    --workload-name "$sa-x" --listen-address 127.0.0.1 --inbound-port "$IN_PORT" \
    --outbound-port "$OUT_PORT" --envoy-admin "127.0.0.1:$admin" "$@"
  ROW_EXTRA_PIDS+=("$LAST_PID")
  for _ in $(seq 150); do [[ -s "$dir/bootstrap.json" ]] && break; sleep 0.2; done
  [[ -s "$dir/bootstrap.json" ]] || die "jalur agent wrote no bootstrap: $(tail -n 20 "$WORK/logs/$name-agent.log")"
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" "$ENVOY" --concurrency 1 --disable-hot-restart \
    --log-level warn -c "$dir/bootstrap.json"
}

start_envoy_sidecar() { # NAME WORKLOAD [JSON metadata fields]; sets OUT_PORT IN_PORT LAST_PID
  local name="$1" workload="$2" extra="${3:-}"
  read -r OUT_PORT IN_PORT <<<"$(free_ports 2)"
  local dir="$WORK/$name"
  mkdir -p "$dir"
  cat >"$dir/bootstrap.json" <<EOF
{
  "node": {
    "id": "sidecar~127.0.0.1~$workload.default~default.svc.cluster.local",
    "cluster": "$workload.default",
    "metadata": {
      "NAMESPACE": "default",
      "JALUR_LISTEN_ADDRESS": "127.0.0.1",
      "JALUR_OUTBOUND_PORT": "$OUT_PORT",
      "JALUR_INBOUND_PORT": "$IN_PORT"$extra
    }
  },
  "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
  "dynamic_resources": {
    "ads_config": {
      "api_type": "DELTA_GRPC",
      "transport_api_version": "V3",
      "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]
    },
    "cds_config": {"ads": {}, "resource_api_version": "V3"},
    "lds_config": {"ads": {}, "resource_api_version": "V3"}
  },
  "static_resources": {
    "clusters": [{
      "name": "xds",
      "type": "STATIC",
      "connect_timeout": "1s",
      "load_assignment": {"cluster_name": "xds", "endpoints": [{"lb_endpoints": [{"endpoint": {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": $XDS_PORT}}}}]}]},
      "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {"http2_protocol_options": {}}
        }
      }
    }]
  }
}
EOF
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" "$ENVOY" --concurrency 1 --disable-hot-restart \
    --log-level warn -c "$dir/bootstrap.json" --admin-address-path "$dir/admin-address"
}

start_nginx_proxy() { # NAME UPSTREAM_PORT; sets LISTEN_PORT LAST_PID
  local name="$1" upstream="$2" dir="$WORK/$1"
  read -r LISTEN_PORT <<<"$(free_ports 1)"
  mkdir -p "$dir"
  {
    nginx_conf_common "$dir"
    cat <<EOF
  upstream be { server 127.0.0.1:$upstream; keepalive 64; keepalive_requests 10000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$LISTEN_PORT;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
EOF
  } >"$dir/nginx.conf"
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
}

start_haproxy() { # NAME UPSTREAM_PORT; sets LISTEN_PORT LAST_PID
  local name="$1" upstream="$2" dir="$WORK/$1"
  read -r LISTEN_PORT <<<"$(free_ports 1)"
  mkdir -p "$dir"
  cat >"$dir/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend fe
  bind 127.0.0.1:$LISTEN_PORT
  default_backend be
backend be
  server s1 127.0.0.1:$upstream
EOF
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" "$HAPROXY" -db -f "$dir/haproxy.cfg"
}

start_row() {
  ROW_PIDS=()
  ROW_EXTRA_PIDS=()
  ROW_MTLS=""
  ROW_CHECK=""
  ROW_AUTHZ=""
  ENTRY_HOST="$HOST"
  case "$1" in
  direct)
    ENTRY_PORT=$BACKEND_PORT
    ;;
  jalur-1)
    start_jalur_sidecar jalur-1 --service bench-client-1
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ;;
  envoy-1)
    start_envoy_sidecar envoy-1 bench-client-envoy-1
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ;;
  nginx-1)
    start_nginx_proxy nginx-1 "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$LISTEN_PORT
    ;;
  haproxy-1)
    start_haproxy haproxy-1 "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$LISTEN_PORT
    ;;
  jalur-2)
    # Server sidecar: registers echo-jalur with its inbound port; inbound -> the backend.
    start_jalur_sidecar jalur-2-server --service echo-jalur --app-port "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    start_jalur_sidecar jalur-2-client --service bench-client-2
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-jalur.default.svc.cluster.local
    ;;
  envoy-2)
    start_envoy_sidecar envoy-2-server echo-envoy-x \
      ", \"JALUR_SERVICE\": \"echo-envoy\", \"JALUR_PORTS\": \"http:$BACKEND_PORT\", \"LABELS\": {\"app\": \"echo-envoy\"}"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    start_envoy_sidecar envoy-2-client bench-client-envoy-2
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-envoy.default.svc.cluster.local
    ;;
  nginx-2)
    start_nginx_proxy nginx-2-server "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$LISTEN_PORT
    start_nginx_proxy nginx-2-client "$LISTEN_PORT"
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$LISTEN_PORT
    ;;
  haproxy-2)
    start_haproxy haproxy-2-server "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$LISTEN_PORT
    start_haproxy haproxy-2-client "$LISTEN_PORT"
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$LISTEN_PORT
    ;;
  jalur-2-mtls)
    start_jalur_mtls_sidecar jalur-2-mtls-server echo-jalur-mtls --service echo-jalur-mtls --app-port "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    ROW_MTLS=$IN_PORT
    start_jalur_mtls_sidecar jalur-2-mtls-client bench-client-mtls --service bench-client-mtls
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-jalur-mtls.default.svc.cluster.local
    ;;
  envoy-2-mtls)
    start_envoy_mtls_sidecar envoy-2-mtls-server echo-envoy-mtls --service echo-envoy-mtls \
      --ports "http:$BACKEND_PORT" --labels app=echo-envoy-mtls
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    ROW_MTLS=$IN_PORT
    start_envoy_mtls_sidecar envoy-2-mtls-client bench-client-envoy-mtls --service bench-client-envoy-mtls
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-envoy-mtls.default.svc.cluster.local
    ;;
  *) start_row_issue11 "$1" || die "unknown row $1 (rows: $ALL_ROWS)" ;;
  esac
}

# New mutual-TLS connections per second into a server sidecar's inbound listener: openssl s_time
# (one connection at a time, a full handshake each, no resumption) presents a workload
# certificate the mesh root signed, and the server sidecar's CPU over the run gives handshakes
# per proxy CPU-second.
measure_handshakes() { # DIR PORT SERVER_PID
  local dir="$1" port="$2" server="$3" ca="$WORK/state/ca" client="$WORK/hs-client"
  if [[ ! -s "$client/cert.pem" ]]; then
    mkdir -p "$client"
    openssl ecparam -name prime256v1 -genkey -noout -out "$client/key.pem" 2>/dev/null
    openssl req -new -key "$client/key.pem" -subj "/" -out "$client/csr.pem" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://cluster.local/ns/default/sa/bench-handshakes\nextendedKeyUsage=clientAuth,serverAuth\n' >"$client/ext"
    openssl x509 -req -in "$client/csr.pem" -CA "$ca/root-cert.pem" -CAkey "$ca/root-key.pem" \
      -CAcreateserial -days 1 -extfile "$client/ext" -out "$client/cert.pem" 2>/dev/null ||
      { say "could not sign the handshake client's certificate"; return 0; }
  fi
  say "$(basename "$dir"): openssl s_time ${HANDSHAKE_DURATION}s of new mTLS connections to 127.0.0.1:$port"
  snapshot "$dir/snap_hs_before" "$server"
  pin "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time "$HANDSHAKE_DURATION" \
    -cert "$client/cert.pem" -key "$client/key.pem" -CAfile "$ca/root-cert.pem" >"$dir/s_time.txt" 2>&1 || true
  snapshot "$dir/snap_hs_after" "$server"
}

# ---------------------------------------------------------------- one row
run_row() {
  local row="$1" dir="$OUT/$1"
  mkdir -p "$dir"
  say "$row: starting"
  start_row "$row"
  printf '%s\n' "$row" >"$dir/name"
  if ! wait_http "$ENTRY_PORT" "$ENTRY_HOST" 60; then
    say "$row: no 200 through 127.0.0.1:$ENTRY_PORT (Host: $ENTRY_HOST) within 60 s; skipped"
    echo "did not answer 200 within 60 s" >"$dir/failed"
    for f in "$WORK"/logs/"$row"*.log; do [[ -f "$f" ]] && cp "$f" "$dir/"; done
    stop "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
    return 0
  fi
  # The check: status, headers and body through the whole path.
  curl -si -m 5 -H "Host: $ENTRY_HOST" "http://127.0.0.1:$ENTRY_PORT/" >"$dir/check.txt" || true
  if ! grep -q "$BODY" "$dir/check.txt"; then
    say "$row: the check request did not return the backend's body"
    echo "check request did not return the backend body" >"$dir/failed"
    stop "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
    return 0
  fi
  if [[ -n "$ROW_CHECK" ]]; then
    # Two hops: the first hop must hold a connection to the second hop's listener.
    if ! ss -Htn state established "( dport = :$ROW_CHECK )" | grep -q .; then
      say "$row: no connection into the second hop (port $ROW_CHECK) after the check request"
      echo "no connection into the second hop" >"$dir/failed"
      stop "${ROW_PIDS[@]}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
      return 0
    fi
    echo "second hop 127.0.0.1:$ROW_CHECK carries the traffic" >>"$dir/check.txt"
  fi
  if [[ -n "$ROW_AUTHZ" ]] && ! authz_enforced "$dir"; then
    skip_row "$dir" "skipped: a path no rule allows was not refused with 403, so this build does not enforce AuthorizationPolicy (issue 11)"
    return 0
  fi
  local pids=() pid
  for pid in "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}"; do
    # shellcheck disable=SC2046
    pids+=($(tree "$pid"))
  done
  printf '%s\n' "${pids[@]+"${pids[@]}"}" >"$dir/pids"
  sleep 1
  for pid in "${pids[@]+"${pids[@]}"}"; do rss_kb "$pid"; done >"$dir/rss_idle"
  for pid in "${pids[@]+"${pids[@]}"}"; do echo "$pid $(awk '/^Threads:/ {print $2}' "/proc/$pid/status") threads"; done >"$dir/threads"

  local url="http://127.0.0.1:$ENTRY_PORT/" sampler
  say "$row: warmup ${WARMUP}s, then wrk ${MAX_DURATION}s at $CONNS connections"
  pin "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" -H "Host: $ENTRY_HOST" "$url" >"$dir/warmup.txt" 2>&1 || true
  sample_rss "$dir/rss_max" "${pids[@]+"${pids[@]}"}" &
  sampler=$!
  ALL_PIDS+=("$sampler")
  local perfs=()
  if [[ -n "${BENCH_PERF:-}" ]]; then
    for pid in "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}"; do
      # perf runs on the load CPU so its own work is not charged to the proxy core.
      taskset -c "$LOAD_CPU" perf record -q -F 999 --call-graph "${BENCH_PERF_CALLGRAPH:-dwarf}" \
        -p "$pid" -o "$dir/perf.$pid.data" >"$dir/perf.$pid.log" 2>&1 &
      perfs+=($!)
      ALL_PIDS+=($!)
    done
    sleep 0.5 # perf attaches before the measured run starts
  fi
  snapshot "$dir/snap_max_before" "${pids[@]+"${pids[@]}"}"
  pin "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${MAX_DURATION}s" --latency -H "Host: $ENTRY_HOST" "$url" >"$dir/wrk.txt" 2>&1 || true
  snapshot "$dir/snap_max_after" "${pids[@]+"${pids[@]}"}"
  for pid in "${perfs[@]+"${perfs[@]}"}"; do
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true

  say "$row: oha ${FIXED_DURATION}s at $RATE rps (open loop, latency correction)"
  sample_rss "$dir/rss_fixed" "${pids[@]+"${pids[@]}"}" &
  sampler=$!
  ALL_PIDS+=("$sampler")
  local straces=()
  if [[ -n "${BENCH_STRACE:-}" ]]; then
    for pid in "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}"; do
      taskset -c "$LOAD_CPU" strace -c -f -q -p "$pid" -o "$dir/strace.$pid.txt" 2>/dev/null &
      straces+=($!)
      ALL_PIDS+=($!)
    done
    sleep 0.5 # strace attaches before the measured run starts
  fi
  snapshot "$dir/snap_fixed_before" "${pids[@]+"${pids[@]}"}"
  pin "$LOAD_CPU" oha --no-tui --output-format json -z "${FIXED_DURATION}s" -q "$RATE" \
    --latency-correction -w -c "$CONNS" --host "$ENTRY_HOST" "$url" >"$dir/oha.json" 2>"$dir/oha.err" || true
  snapshot "$dir/snap_fixed_after" "${pids[@]+"${pids[@]}"}"
  for pid in "${straces[@]+"${straces[@]}"}"; do
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  kill "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true

  if [[ -n "$ROW_MTLS" ]]; then measure_handshakes "$dir" "$ROW_MTLS" "${ROW_PIDS[0]}"; fi

  : >"$dir/alive"
  for pid in "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}"; do
    if [[ -d /proc/$pid ]]; then echo "$pid alive" >>"$dir/alive"; else echo "$pid DIED" >>"$dir/alive"; fi
  done
  stop "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
  for f in "$WORK"/logs/"$row"*.log; do [[ -f "$f" ]] && cp "$f" "$dir/"; done
  return 0
}

# ---------------------------------------------------------------- run
rm -rf "$OUT"
mkdir -p "$OUT"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "nproc: $(nproc)"
  echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "kernel: $(uname -r)"
  echo "loadavg_start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "jalur: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD -- crates 2>/dev/null || echo ' (+ local changes)')"
  echo "envoy: $("$ENVOY" --version 2>/dev/null | grep -o 'version: [^ ]*' | head -n1 | cut -d' ' -f2 | cut -d/ -f2)"
  echo "nginx: $("$NGINX" -v 2>&1 | sed 's/.*nginx\///')"
  echo "haproxy: $("$HAPROXY" -v 2>&1 | head -n1 | awk '{print $3}')"
  echo "wrk: $(wrk -v 2>&1 | head -n1 | awk '{print $2}')"
  echo "oha: $(oha --version 2>&1 | awk '{print $2}')"
  echo "conns: $CONNS"
  echo "warmup: $WARMUP"
  echo "max_duration: $MAX_DURATION"
  echo "rate: $RATE"
  echo "fixed_duration: $FIXED_DURATION"
  echo "clk_tck: $(getconf CLK_TCK)"
  echo "nice: $NICE"
  echo "proxy_cpu: $PROXY_CPU"
  echo "load_cpu: $LOAD_CPU"
  echo "note: ${BENCH_NOTE:-}${BENCH_MESH_H2:+ (HTTP/2 between the sidecars of each pair)}"
} >"$OUT/machine"
grep '^cpu ' /proc/stat >"$OUT/stat_before"
START=$SECONDS
for row in $ROWS; do
  case "$row" in
  *-gw-mutual) run_handshake_row "$row" ;;
  *) run_row "$row" ;;
  esac
done
grep '^cpu ' /proc/stat >"$OUT/stat_after"
echo "loadavg_end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine"
echo "runtime_s: $((SECONDS - START))" >>"$OUT/machine"
cp "$WORK/logs/control.log" "$OUT/control.log" 2>/dev/null || true

RESULTS_ARG="$ROOT/bench/RESULTS.md"
[[ -n "${BENCH_NO_RESULTS:-}" ]] && RESULTS_ARG=""
python3 "$ROOT/bench/report.py" "$OUT" "$ROWS" "$RESULTS_ARG"
