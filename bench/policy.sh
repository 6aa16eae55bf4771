#!/usr/bin/env bash
# Network policy at scale in a 2-host twill lab (vxlan, bridge pods): time to program 1000
# NetworkPolicies over 1000 endpoints, time for a new pod to be let in by a policy on another
# host, and pod-to-pod TCP throughput with no policy, with the 1000 policies in force, and with
# the same number of rules as a linear iptables chain instead (the baseline), interleaved in
# one run. Prints per sample, min/median/max, ratios and the goals (MET / NOT MET); the whole
# output goes to bench/results/policy-<UTC timestamp>.txt.
#
# `twill lab up --nodes 2 --backend vxlan --pods-per-node 0`, then (driver bench/policy.py,
# run inside the lab's underlay netns next to etcd):
#   setup  namespaces ns00..ns09 with labels (/twill/namespaces/); REAL_PODS pods made by the
#          twill plugin as a runtime calls it (CNI ADD in the host netns, CNI_ARGS
#          K8S_POD_NAMESPACE/K8S_POD_NAME, runtimeConfig.labels; netns twl-<lab>-h<i>-p<j>):
#          the server (ns00, app=server) on h2, the iperf3 client (ns01, role=client) and
#          others on h1 and h2; the other ENDPOINTS - REAL_PODS endpoints as records in etcd
#          (/twill/endpoints/<ns>/<name>, node fake-node-NN so no host has them as local, one
#          address each in /24s of 10.244.0.0/16 that no host leases), 10 namespaces, 25 apps.
#   1.     POLICIES NetworkPolicies (podSelector / namespaceSelector / ipBlock with except /
#          ports and port ranges / egress with DNS; SERVER_POLICIES of them select the server
#          with rules the client's connections never match; ns00/zz-allow-clients, the only
#          rule that lets role=client pods in on 5201 and 7000, sorts last) written through
#          etcd's Txn RPC (v3 JSON gateway) in as few transactions as the lab's etcd accepts
#          (default --max-txn-ops 128: 8 of them). Per host: commit (end of the last
#          transaction) -> the nft transaction that put them in force (NEWGEN events of
#          nfnetlink group NFTABLES, one listening socket per host netns: exact, no polling),
#          -> status.json shows them (the agent writes its policy status on a 1 s tick), and
#          the agent's lastApplyUs (compile + nft). Also the size of table inet twill-policy
#          and the rules on the server's ingress path. Goal < 1 s.
#          Repeated every time step 3 puts the policies back (one sample each).
#   2.     REPS times: a new pod (ns01, role=client) on h1 by CNI ADD; from the ADD's return, a
#          new non-blocking connect to the server's :7000 every 2 ms from inside the pod (each
#          given 50 ms) until one completes; also h2's first nft transaction and h2's
#          status.json endpoint count, relative to the ADD's return; then CNI DEL. Goal: the
#          connection within 100 ms.
#   3.     REPS rounds of iperf3 -t T, 1 stream, client pod h1 -> server pod h2 in three states,
#          order rotated every round: none (policies deleted), policy (POLICIES back in force),
#          iptables (policies deleted; in h2's netns a chain TWB jumped to from FORWARD with
#          IPT_RULES rules `-s 172.x.y.z/32 -d <server> -p tcp --dport N -j ACCEPT` that the
#          flow never matches, then its ACCEPT; iptables-nft; removed after the run, and the
#          table ip filter it made with it). Ratios of medians policy/none (goal >= 0.9) and
#          iptables/none. twill's table accepts established packets first, so its rules are
#          met by each connection's first packet; the iptables chain by every packet.
# Everything runs in the lab's namespaces; the root namespace is never changed. Every step is
# bounded by `timeout`; the lab (with its pods, servers and iptables rules) is removed on
# exit, whatever happens.
#
# Usage (as root):  bash bench/policy.sh
#   REPS=5  T=5  POLICIES=1000  ENDPOINTS=1000  REAL_PODS=20  SERVER_POLICIES=250  IPT_RULES=1000
#   TWILL=path/to/twill (default target/release/twill, copied first)
#   bash bench/policy.sh --clean    takes down labs left by a SIGKILLed run (pb<hex>)
set -euo pipefail
. "$(dirname "$0")/lib-cluster.sh"

case "${1:-}" in
  --clean)
    need_root "run as root"
    clean_labs pb 90
    rm -rf /tmp/twpb-run.*
    exit 0 ;;
  *) common_arg "${1:-}" ;;
esac

need_root
int_settings REPS=5 T=5 POLICIES=1000 ENDPOINTS=1000 REAL_PODS=20 SERVER_POLICIES=250 IPT_RULES=1000
[ "$REPS" -le 50 ] || die "REPS must be <= 50"
[ "$T" -le 60 ] || die "T must be <= 60"
[ "$REAL_PODS" -ge 4 ] || die "REAL_PODS must be >= 4"
[ "$ENDPOINTS" -gt "$REAL_PODS" ] || die "ENDPOINTS must be > REAL_PODS"
[ "$SERVER_POLICIES" -lt "$POLICIES" ] || die "SERVER_POLICIES must be < POLICIES"
need_cmds "apt-get install iproute2 python3 etcd-server iperf3 nftables iptables" \
  ip python3 timeout etcd iperf3 nft iptables iptables-restore
need_twill_lab

RUN=$(run_id)
NAME=pb$RUN
WORK=$(mktemp -d /tmp/twpb-run.XXXXXX)
TW=$WORK/twill
cleanup() {
  lab_down_quiet "$NAME"
  kill_lab_netns "$NAME"
}
on_exit cleanup

start_output policy

say_header policy
use_twill "$TW"
echo "# lab $NAME; REPS=$REPS T=${T}s POLICIES=$POLICIES ENDPOINTS=$ENDPOINTS REAL_PODS=$REAL_PODS" \
  "SERVER_POLICIES=$SERVER_POLICIES IPT_RULES=$IPT_RULES; $(nft --version); $(iptables --version);" \
  "iperf3 $(iperf3 --version | head -1 | awk '{print $2}')"

t0=$SECONDS
bg_wait timeout 300 "$TW" lab up --nodes 2 --backend vxlan --pods-per-node 0 --name "$NAME" \
  || die "twill lab up failed"
echo "lab up in $((SECONDS - t0)) s"
STATE=/run/twill/lab/$NAME/state.json
[ -f "$STATE" ] || die "$STATE missing after lab up"
UNS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["underlayNs"])' "$STATE")

rc=0
bg_wait ip netns exec "$UNS" env LAB_STATE="$STATE" REPS="$REPS" T="$T" POLICIES="$POLICIES" \
  ENDPOINTS="$ENDPOINTS" REAL_PODS="$REAL_PODS" SERVER_POLICIES="$SERVER_POLICIES" \
  IPT_RULES="$IPT_RULES" PYTHONUNBUFFERED=1 \
  timeout $((REPS * (3 * T + 60) + 240)) python3 "$HERE/policy.py" || rc=$?
[ "$rc" = 0 ] || echo "warning: the driver ended with status $rc"

t0=$SECONDS
timeout 90 "$TW" lab down --name "$NAME" >/dev/null || echo "warning: lab down failed"
echo "lab down in $((SECONDS - t0)) s"
echo "written to $OUT"
exit "$rc"
