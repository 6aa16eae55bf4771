#!/usr/bin/env bash
# Convergence of one twill agent on N new VXLAN peers (default 1000) vs the kernel floor, in
# one run, interleaved. Prints per repetition and min/median/max, the ratio of medians
# twill/baseline for add and delete and the goal (<= 2x, MET / NOT MET); the whole output goes
# to bench/results/converge-<UTC timestamp>.txt.
#
# Setup (all in namespaces named twc-<run id>-*): an underlay netns -u running etcd on
# 192.168.77.1:2379 (--max-txn-ops 100000, data dir on tmpfs), a host netns -h (eth0
# 192.168.77.2/24, veth to -u) where `twill cluster init` writes a vxlan cluster with Network
# 10.128.0.0/9, SubnetLen 24 and `twill agent --iface eth0` runs until status.json says inSync;
# a baseline netns -b with its own veth and a hand-made kernel VXLAN bvx0 (VNI 1, port 8472).
# Per repetition (odd: twill first, even: baseline first), driver bench/converge.py:
#   twill add     N fake leases (distinct 10.128.x.0/24 other than the agent's own, public IPs
#                 192.168.77.11.. and beyond, distinct VTEP MACs) in ONE etcd transaction
#                 (v3 JSON gateway, i.e. the Txn RPC; TWC_WRITER=etcdctl uses `etcdctl txn`);
#                 time from just before the request until status.json lists N programmed peers
#                 (polled every 5 ms), then `ip route show proto 117 | wc -l` == N is checked
#   twill rss     then the agent's VmRSS and VmHWM (/proc/PID/status)
#   twill steady  then (TWC_STEADY s, after 2 s to settle) nothing changes: the agent's CPU time
#                 (utime+stime, plus reaped children's, /proc/PID/stat) over the window, as CPU
#                 ms per s (mean and the busiest 1 s) and per resync interval, and the number of
#                 status.json writes (one per reconcile): a resync that rescans the world shows
#                 up here; status.json and the kernel must still hold N peers / N routes after it
#   twill delete  one transaction of N deletes; until 0 peers in status.json and 0 routes
#   baseline      `ip -batch` of the N routes + N neighbours plus `bridge -batch` of the N fdb
#                 entries into -b (sum of both processes' wall time); the same for deletes
# The summary adds min/median/max of VmRSS, VmHWM and steady CPU. With TWILL_BEFORE, the
# twill phases run for both binaries in each repetition (odd: after, before, baseline; even:
# baseline, before, after), one agent at a time (SIGTERM, then the other binary starts on the
# same data dir and lease), and a last section prints after/before ratios of the medians of
# add, delete, VmRSS, VmHWM and steady CPU.
# The root namespace is never changed; everything is removed on exit.
#
# Usage (as root):  bash bench/converge.sh
#   N=1000  REPS=3  TWILL=path/to/twill (default target/release/twill, copied first)
#   TWC_WAIT=120    seconds to wait for one convergence before calling it failed
#   TWC_STEADY=30   seconds of the steady-state window per repetition (0: no steady phase)
#   TWC_RESYNC=     passed as `twill agent --resync SECS` (to each binary that has the flag);
#                   unset: the agent's default (60 s). Use e.g. TWC_RESYNC=10 TWC_STEADY=30 so
#                   the window holds resyncs.
#   TWILL_BEFORE=path/to/twill  also run the agent phases with this binary ("before") and
#                   compare; TWILL is "after". Both are copied first.
#   TWC_TLS=1       etcd speaks only TLS with --client-cert-auth (CA and certificates made
#                   with openssl in the run's work dir); the agent, cluster init and the driver
#                   use client certificates. Compare with a TWC_TLS=0 run for the cost of TLS.
#   bash bench/converge.sh --baseline-only   no agent: the etcd txns and the baseline only
#   bash bench/converge.sh --clean           removes twc-* netns left by a SIGKILLed run
set -euo pipefail
. "$(dirname "$0")/lib-cluster.sh"

BASELINE_ONLY=0
case "${1:-}" in
  --baseline-only) BASELINE_ONLY=1 ;;
  --clean)
    need_root "run as root"
    for ns in $(netns_list | grep -E '^twc-[0-9a-f]{4}-[uhb]$' || true); do
      kill_netns "$ns" && echo "deleted netns $ns"
    done
    rm -rf /tmp/twc-run.* /dev/shm/twc-etcd.*
    exit 0 ;;
  *) common_arg "${1:-}" ;;
esac

need_root
int_settings N=1000 REPS=3 TWC_WAIT=120
TWC_TLS=${TWC_TLS:-0}
TWC_STEADY=${TWC_STEADY:-30}
[[ $TWC_STEADY =~ ^[0-9]+$ ]] || die "TWC_STEADY must be a number of seconds (0: no steady phase)"
TWC_RESYNC=${TWC_RESYNC:-}
[ -z "$TWC_RESYNC" ] || [[ $TWC_RESYNC =~ ^[1-9][0-9]*$ ]] || die "TWC_RESYNC must be a positive integer"
TWILL_BEFORE=${TWILL_BEFORE:-}
[ "$N" -le 30000 ] || die "N must be <= 30000 (fake underlay addresses run out)"
need_cmds "apt-get install iproute2 python3 etcd-server etcd-client" ip bridge python3 timeout etcd etcdctl
if [ "$BASELINE_ONLY" = 0 ]; then
  need_twill
  "$TWILL" agent --help >/dev/null 2>&1 || die "$TWILL has no 'agent' subcommand (build a newer twill)"
  "$TWILL" cluster init --help >/dev/null 2>&1 || die "$TWILL has no 'cluster init' subcommand"
  if [ -n "$TWILL_BEFORE" ]; then
    [ -x "$TWILL_BEFORE" ] || die "TWILL_BEFORE=$TWILL_BEFORE is not an executable"
    "$TWILL_BEFORE" agent --help >/dev/null 2>&1 || die "$TWILL_BEFORE has no 'agent' subcommand"
  fi
fi
NB=1
[ -z "$TWILL_BEFORE" ] || [ "$BASELINE_ONLY" = 1 ] || NB=2

RUN=$(run_id)
U=twc-$RUN-u H=twc-$RUN-h B=twc-$RUN-b
WORK=$(mktemp -d /tmp/twc-run.XXXXXX)
EDATA=$(mktemp -d /dev/shm/twc-etcd.XXXXXX 2>/dev/null || mktemp -d /tmp/twc-etcd.XXXXXX)
STORE=etcd://192.168.77.1:2379
cleanup() {
  local ns
  for ns in "$H" "$B" "$U"; do   # agent first, etcd last
    netns_list | grep -qx "$ns" && kill_netns "$ns"
  done
  rm -rf "$EDATA"
}
on_exit cleanup

start_output converge

say_header convergence
if [ "$BASELINE_ONLY" = 0 ]; then
  use_twill "$WORK/twill"
  if [ "$NB" = 2 ]; then
    cp "$TWILL_BEFORE" "$WORK/twill-before"
    echo "# twill before (TWILL_BEFORE): $TWILL_BEFORE ($(stat -c %y "$TWILL_BEFORE" | cut -d. -f1), sha256 $(sha256sum "$TWILL_BEFORE" | cut -c1-12)); the one above is after"
  fi
else
  echo "# BASELINE ONLY: no agent; etcd transactions and ip/bridge -batch only"
  [ -z "$TWILL_BEFORE" ] || echo "# TWILL_BEFORE ignored (no agent)"
fi
echo "# N=$N REPS=$REPS; $(etcd --version | head -1); $(ip -V); netns $U $H $B; etcd data in $EDATA"
if [ "$BASELINE_ONLY" = 0 ]; then
  echo "# steady state: TWC_STEADY=$TWC_STEADY s per repetition; TWC_RESYNC=${TWC_RESYNC:-(agent default)}"
fi

# resync_of BIN LABEL: sets RESYNC_ARGS (`--resync $TWC_RESYNC` if BIN's agent has the flag and
# TWC_RESYNC is set) and RESYNC_S (the interval, s, BIN's agent will use; empty: unknown)
resync_of() {
  local line
  RESYNC_ARGS=() RESYNC_S=
  line=$("$1" agent --help 2>/dev/null | grep -E -- '--resync[ =]' || true)
  if [ -z "$line" ]; then
    echo "# $2: 'twill agent' has no --resync flag${TWC_RESYNC:+: TWC_RESYNC ignored for it}"
  elif [ -n "$TWC_RESYNC" ]; then
    RESYNC_ARGS=(--resync "$TWC_RESYNC") RESYNC_S=$TWC_RESYNC
  else
    RESYNC_S=$(grep -oE 'default: [0-9]+' <<<"$line" | grep -oE '[0-9]+' || true)
  fi
}
json_argv() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@"; }

# --- namespaces: underlay (etcd) <-> host (agent); baseline with its own veth pair
for ns in "$U" "$H" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add eth0 netns "$H" type veth peer name toh netns "$U"
ip -n "$U" addr add 192.168.77.1/24 dev toh
ip -n "$U" link set toh up
ip -n "$H" addr add 192.168.77.2/24 dev eth0
ip -n "$H" link set eth0 up
ip link add eth0 netns "$B" type veth peer name peer0 netns "$B"
ip -n "$B" addr add 192.168.77.2/24 dev eth0
ip -n "$B" link set peer0 up
ip -n "$B" link set eth0 up
ip -n "$B" link add bvx0 type vxlan id 1 dstport 8472 nolearning local 192.168.77.2 dev eth0
ip -n "$B" link set bvx0 address 02:b0:00:00:00:01 mtu 1450 up

# --- etcd (bounded: the whole run must end within the timeout)
LIFE=$((REPS * NB * (8 * TWC_WAIT + 2 * TWC_STEADY + 150) + 600))
SCHEME=http ETCD_TLS=() TWILL_TLS=() CTL_TLS=()
if [ "$TWC_TLS" = 1 ]; then
  need_cmds "apt-get install openssl" openssl
  P=$WORK/pki
  mkdir -m 700 "$P"
  ossl() { openssl "$@" >/dev/null 2>&1 || die "openssl $1 failed"; }
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=twc-ca -keyout "$P/ca-key.pem" -out "$P/ca.pem"
  for who in server client; do
    if [ $who = server ]; then
      ext='subjectAltName=IP:192.168.77.1,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth'
    else
      ext='extendedKeyUsage=clientAuth'
    fi
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$who" \
      -keyout "$P/$who-key.pem" -out "$P/$who.csr"
    printf "$ext\n" >"$P/$who.ext"
    ossl x509 -req -in "$P/$who.csr" -CA "$P/ca.pem" -CAkey "$P/ca-key.pem" -CAcreateserial \
      -days 2 -extfile "$P/$who.ext" -out "$P/$who.pem"
  done
  SCHEME=https
  ETCD_TLS=(--client-cert-auth --trusted-ca-file "$P/ca.pem" --cert-file "$P/server.pem"
    --key-file "$P/server-key.pem")
  TWILL_TLS=(--etcd-cafile "$P/ca.pem" --etcd-certfile "$P/client.pem" --etcd-keyfile "$P/client-key.pem")
  CTL_TLS=(--cacert "$P/ca.pem" --cert "$P/client.pem" --key "$P/client-key.pem")
  echo "# etcd over TLS with client certificates (TWC_TLS=1)"
fi
ip netns exec "$U" timeout "$LIFE" etcd --name twc --data-dir "$EDATA/data" \
  --listen-client-urls $SCHEME://192.168.77.1:2379 --advertise-client-urls $SCHEME://192.168.77.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster twc=http://127.0.0.1:2380 --initial-cluster-state new \
  --max-txn-ops 100000 --max-request-bytes 33554432 "${ETCD_TLS[@]}" >"$WORK/etcd.log" 2>&1 &
disown
for k in $(seq 100); do
  ip netns exec "$H" timeout 3 etcdctl --endpoints $SCHEME://192.168.77.1:2379 "${CTL_TLS[@]}" \
    endpoint health >/dev/null 2>&1 && break
  [ "$k" = 100 ] && { tail -20 "$WORK/etcd.log"; die "etcd did not become healthy"; }
  sleep 0.2
done
echo "etcd healthy"

STATUS=$WORK/agent/status.json
if [ "$BASELINE_ONLY" = 0 ]; then
  printf '{"Network":"10.128.0.0/9","SubnetLen":24,"Backend":{"Type":"vxlan"}}\n' >"$WORK/net-conf.json"
  ip netns exec "$H" timeout 30 "$WORK/twill" cluster init --store "$STORE" "${TWILL_TLS[@]}" \
    -f "$WORK/net-conf.json"
  mkdir -p "$WORK/agent"
  AGENT_ARGS=(agent --store "$STORE" "${TWILL_TLS[@]}" --node-name twc --iface eth0
    --data-dir "$WORK/agent")
  resync_of "$WORK/twill" after
  AGENT_AFTER=$(json_argv "$WORK/twill" "${AGENT_ARGS[@]}" "${RESYNC_ARGS[@]}")
  RESYNC_AFTER=$RESYNC_S RESYNC_ARGS_AFTER=("${RESYNC_ARGS[@]}")
  AGENT_BEFORE= RESYNC_BEFORE=
  if [ "$NB" = 2 ]; then
    resync_of "$WORK/twill-before" before
    AGENT_BEFORE=$(json_argv "$WORK/twill-before" "${AGENT_ARGS[@]}" "${RESYNC_ARGS[@]}")
    RESYNC_BEFORE=$RESYNC_S
  fi
  t0=$SECONDS
  ip netns exec "$H" timeout "$LIFE" "$WORK/twill" "${AGENT_ARGS[@]}" "${RESYNC_ARGS_AFTER[@]}" \
    >"$WORK/agent.log" 2>&1 &
  disown
  for k in $(seq 300); do
    python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1])).get("inSync") else 1)' \
      "$STATUS" 2>/dev/null && break
    [ "$k" = 300 ] && { tail -30 "$WORK/agent.log"; die "agent not inSync after 60 s"; }
    sleep 0.2
  done
  echo "agent inSync after $((SECONDS - t0)) s; $(ip -n "$H" -d link show twill.1 2>/dev/null | grep -o 'vxlan id [0-9]* .*dstport [0-9]*' || echo 'no twill.1 device?')"
fi

bg_wait ip netns exec "$H" env N="$N" REPS="$REPS" TWC_ETCD=$SCHEME://192.168.77.1:2379 \
  TWC_PKI="${P:-}" \
  TWC_STATUS="$STATUS" TWC_HOST="$H" TWC_BASE="$B" TWC_WORK="$WORK" \
  TWC_WRITER="${TWC_WRITER:-gateway}" TWC_WAIT="$TWC_WAIT" BASELINE_ONLY="$BASELINE_ONLY" \
  TWC_STEADY="$TWC_STEADY" TWC_LIFE="$LIFE" TWC_AGENT_AFTER="${AGENT_AFTER:-}" \
  TWC_AGENT_BEFORE="${AGENT_BEFORE:-}" TWC_RESYNC_AFTER="${RESYNC_AFTER:-}" \
  TWC_RESYNC_BEFORE="${RESYNC_BEFORE:-}" \
  timeout $((REPS * NB * (4 * TWC_WAIT + TWC_STEADY + 75) + 300)) python3 "$HERE/converge.py"
if [ "$BASELINE_ONLY" = 0 ]; then
  echo "agent log: $(wc -l <"$WORK/agent.log") lines, $(grep -ciE 'error|warn' "$WORK/agent.log" || true) with error/warn"
  grep -iE 'error|warn' "$WORK/agent.log" | tail -5 || true
  if [ "$NB" = 2 ]; then
    echo "agent (before) log: $(wc -l <"$WORK/agent-before.log" 2>/dev/null || echo 0) lines, $(grep -ciE 'error|warn' "$WORK/agent-before.log" 2>/dev/null || true) with error/warn"
    grep -iE 'error|warn' "$WORK/agent-before.log" 2>/dev/null | tail -5 || true
  fi
fi
echo "written to $OUT"
