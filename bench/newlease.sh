#!/usr/bin/env bash
# Time from a new node's lease in etcd to its route on every host of a 5-node twill lab
# (vxlan), and from the lease's deletion to the route's removal everywhere. Prints per
# repetition and min/median/max, and the goal (every repetition < 1 s: MET / NOT MET); the
# whole output goes to bench/results/newlease-<UTC timestamp>.txt.
#
# `twill lab up --nodes 5 --backend vxlan --pods-per-node 0` (1 if the lab refuses 0), then
# REPS times (driver bench/newlease.py, run inside the lab's underlay netns next to etcd): PUT
# one fake lease (an unused 10.244.x.0/24, publicNet 192.168.100.2xx/24, a fresh VTEP MAC)
# through etcd's v3 JSON gateway and wait until all 5 hosts have the route: measured with one
# rtnetlink socket per host netns subscribed to route events (RTM_NEWROUTE for the subnet with
# protocol 117; no polling, so the waiting costs the hosts nothing), and also by stat()ing
# each host's status.json every 5 ms until it lists the peer as programmed; `ip -j route show
# proto 117` on each host confirms at the end. Then the lease is deleted and the removal timed
# the same way. No extra lease is left behind; the lab is taken down on exit, whatever happens.
#
# Usage (as root):  bash bench/newlease.sh
#   REPS=10  NODES=5  NL_WAIT=30 (s per convergence before calling it failed)
#   TWILL=path/to/twill (default target/release/twill, copied first)
#   LAB_ARGS="--plain-etcd" (extra `lab up` arguments; the lab's etcd speaks TLS with client
#   certificates by default, --plain-etcd compares against plain HTTP)
#   bash bench/newlease.sh --clean    takes down labs left by a SIGKILLed run (nl<hex>)
set -euo pipefail
. "$(dirname "$0")/lib-cluster.sh"

case "${1:-}" in
  --clean)
    need_root "run as root"
    clean_labs nl 90
    rm -rf /tmp/twnl-run.*
    exit 0 ;;
  *) common_arg "${1:-}" ;;
esac

need_root
int_settings REPS=10 NODES=5 NL_WAIT=30
[ "$REPS" -le 50 ] || die "REPS must be <= 50"
need_cmds "apt-get install iproute2 python3 etcd-server" ip python3 timeout etcd
need_twill_lab

RUN=$(run_id)
NAME=nl$RUN
WORK=$(mktemp -d /tmp/twnl-run.XXXXXX)
TW=$WORK/twill
cleanup() {
  lab_down_quiet "$NAME"
  kill_lab_netns "$NAME"
}
on_exit cleanup

start_output newlease

say_header new-lease
use_twill "$TW"
LAB_ARGS=${LAB_ARGS:-}
echo "# NODES=$NODES REPS=$REPS lab $NAME ${LAB_ARGS:+(lab up $LAB_ARGS)}"

t0=$SECONDS
PODS=0
if ! bg_wait timeout 300 "$TW" lab up --nodes "$NODES" --backend vxlan --pods-per-node 0 --name "$NAME" $LAB_ARGS; then
  echo "lab up with --pods-per-node 0 failed; retrying with 1"
  timeout 90 "$TW" lab down --name "$NAME" >/dev/null 2>&1 || true
  PODS=1
  bg_wait timeout 300 "$TW" lab up --nodes "$NODES" --backend vxlan --pods-per-node 1 --name "$NAME" $LAB_ARGS \
    || die "twill lab up failed"
fi
echo "lab up ($PODS pods per node) in $((SECONDS - t0)) s"
STATE=/run/twill/lab/$NAME/state.json
[ -f "$STATE" ] || die "$STATE missing after lab up"
UNS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["underlayNs"])' "$STATE")

bg_wait ip netns exec "$UNS" env LAB_STATE="$STATE" REPS="$REPS" NL_WAIT="$NL_WAIT" \
  timeout $((REPS * (2 * NL_WAIT + 30) + 60)) python3 "$HERE/newlease.py"

t0=$SECONDS
timeout 90 "$TW" lab down --name "$NAME" >/dev/null || echo "warning: lab down failed"
echo "lab down in $((SECONDS - t0)) s"
echo "written to $OUT"
