# shellcheck shell=bash
# Issue 11's rows, sourced by bench/proxy.sh (which owns the processes, the snapshots and the
# report). Two questions:
#
# 1. What does an AuthorizationPolicy of 50 rules cost at a sidecar? Rows `jalur-2-mtls-authz`
#    and `envoy-2-mtls-authz` are the mTLS pairs of `jalur-2-mtls` / `envoy-2-mtls` with one ALLOW
#    policy on the server sidecar: 49 rules that do not match the load (paths, methods, request
#    headers and principals mixed) and, last, the one that does (the client's principal, GET, `/`).
#    Added CPU per request and added p99 = the authz row minus its plain mTLS row, same run.
#    Before measuring, a request to a path no rule allows must get 403: a build that does not
#    enforce AuthorizationPolicy skips the row with that message instead of measuring nothing.
# 2. How many new TLS handshakes per second per core does a MUTUAL gateway take? Rows
#    `jalur-gw-mutual`, `envoy-gw-mutual` (Envoy beside `jalur agent`, which serves it the
#    gateway's certificate files over SDS) and `haproxy-gw-mutual` (`bind ... ssl crt ... ca-file
#    ... verify required`), all with the same certificate, key and client CA. openssl s_time
#    opens connections one at a time with a client certificate, a full handshake each (`-new`:
#    no resumption), for BENCH_HANDSHAKE_DURATION s; the gateway's CPU over the run gives
#    handshakes per proxy CPU-second. A gateway that does not answer over mutual TLS (a build
#    without gateway MUTUAL) skips its row with that message.

ISSUE11_ROWS="jalur-2-mtls-authz envoy-2-mtls-authz jalur-gw-mutual envoy-gw-mutual haproxy-gw-mutual"
GW_HOST="gw.bench.test"
GWTLS="$WORK/gw-tls"
AUTHZ_DENIED_PATH="/bench-authz-no-rule-allows-this"

# The gateway's server certificate (SAN gw.bench.test and 127.0.0.1) and a client certificate,
# both from one test CA; EC P-256 everywhere so every proxy does the same kind of handshake.
issue11_certs() {
  mkdir -p "$GWTLS"
  local d="$GWTLS"
  openssl ecparam -name prime256v1 -genkey -noout -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench gateway CA" -days 2 -out "$d/ca.pem" 2>/dev/null
  local who
  for who in server client; do
    openssl ecparam -name prime256v1 -genkey -noout -out "$d/$who.ec.key" 2>/dev/null
    # PKCS#8: every proxy here reads it.
    openssl pkcs8 -topk8 -nocrypt -in "$d/$who.ec.key" -out "$d/$who.key"
    openssl req -new -key "$d/$who.key" -subj "/CN=$who.bench.test" -out "$d/$who.csr" 2>/dev/null
  done
  printf 'subjectAltName=DNS:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' "$GW_HOST" >"$d/server.ext"
  printf 'subjectAltName=DNS:client.bench.test\nextendedKeyUsage=clientAuth\n' >"$d/client.ext"
  for who in server client; do
    openssl x509 -req -in "$d/$who.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/$who.ext" -out "$d/$who.pem" 2>/dev/null || die "could not sign the $who certificate"
  done
  cat "$d/server.pem" "$d/server.key" >"$d/server-combined.pem" # haproxy's `crt` wants both
}

# 49 rules that do not match the load, then the one that does. CLIENT_SA: the caller's account.
authz_policy() { # APP CLIENT_SA
  local app="$1" client="$2" i
  cat <<EOF
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: $app-50-rules, namespace: default}
spec:
  selector: {matchLabels: {app: $app}}
  action: ALLOW
  rules:
EOF
  for i in $(seq 1 49); do
    case $((i % 3)) in
    0) cat <<EOF
  - from: [{source: {principals: ["cluster.local/ns/default/sa/other-$i"]}}]
    to: [{operation: {methods: [GET], paths: ["/"]}}]
EOF
      ;;
    1) cat <<EOF
  - to: [{operation: {paths: ["/api/v$i/*", "*.v$i.json"], methods: [POST, PUT]}}]
EOF
      ;;
    2) cat <<EOF
  - from: [{source: {principals: ["cluster.local/ns/default/sa/$client"]}}]
    to: [{operation: {paths: ["/"]}}]
    when: [{key: "request.headers[x-tenant]", values: ["tenant-$i"]}]
EOF
      ;;
    esac
  done
  cat <<EOF
  - from: [{source: {principals: ["cluster.local/ns/default/sa/$client"]}}]
    to: [{operation: {methods: [GET], paths: ["/"]}}]
EOF
}

# Config of issue 11's rows, written before the control plane starts: the authz pairs' services,
# STRICT mTLS and policies, and one Gateway per gateway row on its own port and labels.
issue11_config() {
  local cfg="$1" h app
  read -r JGW_PORT EGW_PORT HGW_PORT <<<"$(free_ports 3)"
  issue11_certs
  for app in echo-jalur-authz echo-envoy-authz; do
    h="$app.default.svc.cluster.local"
    cat >>"$cfg/issue11.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: $app, namespace: default}
spec:
  hosts: [$h]
  http:
  - retries: {attempts: 0}
    route:
    - destination: {host: $h}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: $app, namespace: default}
spec:
  selector: {matchLabels: {app: $app}}
  mtls: {mode: STRICT}
EOF
  done
  authz_policy echo-jalur-authz bench-client-authz >>"$cfg/issue11.yaml"
  authz_policy echo-envoy-authz bench-client-envoy-authz >>"$cfg/issue11.yaml"
  local gw port
  for gw in jalur envoy; do
    [[ $gw == jalur ]] && port=$JGW_PORT || port=$EGW_PORT
    cat >>"$cfg/issue11.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: bench-gw-$gw, namespace: default}
spec:
  selector: {bench: $gw-gw}
  servers:
  - port: {number: $port, name: https, protocol: HTTPS}
    hosts: [$GW_HOST]
    tls:
      mode: MUTUAL
      serverCertificate: $GWTLS/server.pem
      privateKey: $GWTLS/server.key
      caCertificates: $GWTLS/ca.pem
EOF
  done
  cat >>"$cfg/issue11.yaml" <<EOF
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench-gw, namespace: default}
spec:
  hosts: [$GW_HOST]
  gateways: [bench-gw-jalur, bench-gw-envoy]
  http:
  - retries: {attempts: 0}
    route:
    - destination: {host: $HOST, port: {number: 80}}
EOF
}

start_haproxy_mutual() { # NAME PORT; sets LAST_PID
  local name="$1" port="$2" dir="$WORK/$1"
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
  bind 127.0.0.1:$port ssl crt $GWTLS/server-combined.pem ca-file $GWTLS/ca.pem verify required
  default_backend be
backend be
  server s1 127.0.0.1:$BACKEND_PORT
EOF
  spawn "$PROXY_CPU" "$WORK/logs/$name.log" "$HAPROXY" -db -f "$dir/haproxy.cfg"
}

# start_row's cases for issue 11's rows; returns 1 for any other row.
start_row_issue11() {
  case "$1" in
  jalur-2-mtls-authz)
    start_jalur_mtls_sidecar jalur-2-mtls-authz-server echo-jalur-authz --service echo-jalur-authz --app-port "$BACKEND_PORT"
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    start_jalur_mtls_sidecar jalur-2-mtls-authz-client bench-client-authz --service bench-client-authz
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-jalur-authz.default.svc.cluster.local
    ROW_AUTHZ=1
    ;;
  envoy-2-mtls-authz)
    start_envoy_mtls_sidecar envoy-2-mtls-authz-server echo-envoy-authz --service echo-envoy-authz \
      --ports "http:$BACKEND_PORT" --labels app=echo-envoy-authz
    ROW_PIDS=("$LAST_PID")
    ROW_CHECK=$IN_PORT
    start_envoy_mtls_sidecar envoy-2-mtls-authz-client bench-client-envoy-authz --service bench-client-envoy-authz
    ROW_PIDS+=("$LAST_PID")
    ENTRY_PORT=$OUT_PORT
    ENTRY_HOST=echo-envoy-authz.default.svc.cluster.local
    ROW_AUTHZ=1
    ;;
  jalur-gw-mutual)
    start_jalur_sidecar jalur-gw-mutual --role gateway --service bench-gw-jalur --labels bench=jalur-gw
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$JGW_PORT
    ;;
  envoy-gw-mutual)
    start_envoy_mtls_sidecar envoy-gw-mutual bench-gw-envoy --service bench-gw-envoy --labels bench=envoy-gw \
      --node-id "router~127.0.0.1~bench-gw-envoy-x.default~default.svc.cluster.local"
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$EGW_PORT
    ;;
  haproxy-gw-mutual)
    start_haproxy_mutual haproxy-gw-mutual "$HGW_PORT"
    ROW_PIDS=("$LAST_PID")
    ENTRY_PORT=$HGW_PORT
    ;;
  *) return 1 ;;
  esac
}

# An authz row measures a policy only if the policy is enforced: a path no rule allows gets 403.
authz_enforced() { # DIR
  local code
  code="$(curl -s -o "$1/authz_denied.txt" -m 5 -w '%{http_code}' -H "Host: $ENTRY_HOST" \
    "http://127.0.0.1:$ENTRY_PORT$AUTHZ_DENIED_PATH" || true)"
  echo "GET $AUTHZ_DENIED_PATH -> $code" >>"$1/check.txt"
  [[ "$code" == 403 ]]
}

# skip_row DIR MESSAGE: the row is reported as skipped with MESSAGE, its processes stopped.
skip_row() {
  say "$(basename "$1"): $2"
  echo "$2" >"$1/failed"
  for f in "$WORK"/logs/"$(basename "$1")"*.log; do [[ -f "$f" ]] && cp "$f" "$1/"; done
  stop "${ROW_PIDS[@]+"${ROW_PIDS[@]}"}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
}

gw_curl() { # PORT [curl args...]: GET / over TLS to the gateway, trusting the test CA
  local port="$1"
  shift
  curl -s -m 3 --cacert "$GWTLS/ca.pem" --resolve "$GW_HOST:$port:127.0.0.1" "$@" "https://$GW_HOST:$port/"
}

# A MUTUAL gateway row: checked (the client certificate gets the backend's body, no certificate
# gets no answer), then new handshakes for BENCH_HANDSHAKE_DURATION s.
run_handshake_row() {
  local row="$1" dir="$OUT/$1" ok=""
  mkdir -p "$dir"
  : >"$dir/handshake_row"
  say "$row: starting"
  start_row "$row"
  printf '%s\n' "$row" >"$dir/name"
  for _ in $(seq 150); do
    if gw_curl "$ENTRY_PORT" --cert "$GWTLS/client.pem" --key "$GWTLS/client.key" >"$dir/check.txt" 2>&1 &&
      grep -q "$BODY" "$dir/check.txt"; then
      ok=1
      break
    fi
    sleep 0.2
  done
  if [[ -z "$ok" ]]; then
    skip_row "$dir" "skipped: no answer over mutual TLS on 127.0.0.1:$ENTRY_PORT within 30 s (needs gateway MUTUAL with certificate files, issue 11; for Envoy, jalur agent serving them over SDS)"
    return 0
  fi
  if gw_curl "$ENTRY_PORT" >>"$dir/check.txt" 2>&1; then
    skip_row "$dir" "skipped: a client without a certificate got an answer: not a MUTUAL gateway"
    return 0
  fi
  local pids=() pid
  for pid in "${ROW_PIDS[@]}"; do
    # shellcheck disable=SC2046
    pids+=($(tree "$pid"))
  done
  printf '%s\n' "${pids[@]}" >"$dir/pids"
  say "$row: openssl s_time ${HANDSHAKE_DURATION}s of new mutual-TLS connections to 127.0.0.1:$ENTRY_PORT"
  snapshot "$dir/snap_hs_before" "${pids[@]}"
  pin "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$ENTRY_PORT" -new -time "$HANDSHAKE_DURATION" \
    -cert "$GWTLS/client.pem" -key "$GWTLS/client.key" -CAfile "$GWTLS/ca.pem" >"$dir/s_time.txt" 2>&1 || true
  snapshot "$dir/snap_hs_after" "${pids[@]}"
  : >"$dir/alive"
  for pid in "${ROW_PIDS[@]}"; do
    if [[ -d /proc/$pid ]]; then echo "$pid alive" >>"$dir/alive"; else echo "$pid DIED" >>"$dir/alive"; fi
  done
  stop "${ROW_PIDS[@]}" "${ROW_EXTRA_PIDS[@]+"${ROW_EXTRA_PIDS[@]}"}"
  for f in "$WORK"/logs/"$row"*.log; do [[ -f "$f" ]] && cp "$f" "$dir/"; done
}
