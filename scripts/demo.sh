#!/usr/bin/env bash
# twill's demo: a virtual 3-node cluster on this machine, built from network namespaces.
# A real etcd, a real `twill agent` per node (VXLAN backend, Flannel's scheme), two pods per
# node attached by the real CNI plugin, the pod-to-pod ping matrix, then everything removed.
# IP_FAMILY=dual makes it dual-stack (host-gw or vxlan). Run as root after `cargo build --release`. The single-host CNI demo is scripts/cni-demo.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
TWILL=${TWILL:-target/release/twill}
NAME=${NAME:-demo}
BACKEND=${BACKEND:-vxlan}
IP_FAMILY=${IP_FAMILY:-ipv4}   # dual: pods get IPv6 too, and the matrix has a ping -6 half
[ -x "$TWILL" ] || { echo "demo: $TWILL not found: run cargo build --release" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
trap '"$TWILL" lab down --name "$NAME" >/dev/null 2>&1 || true' EXIT
"$TWILL" lab down --name "$NAME" >/dev/null 2>&1 || true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "twill lab up --nodes 3 --backend $BACKEND --ip-family $IP_FAMILY --pods-per-node 2"
"$TWILL" lab up --name "$NAME" --nodes 3 --backend "$BACKEND" --ip-family "$IP_FAMILY" --pods-per-node 2
step "twill status on node h1 (what its agent programmed for each peer)"
"$TWILL" lab exec --name "$NAME" h1 -- "$TWILL" status --data-dir "/run/twill/lab/$NAME/h1"
step "kernel state on h1: routes (proto 117), ARP and FDB of the VXLAN device"
"$TWILL" lab exec --name "$NAME" h1 -- ip route show proto 117
"$TWILL" lab exec --name "$NAME" h1 -- ip neigh show dev twill.1 || true
"$TWILL" lab exec --name "$NAME" h1 -- bridge fdb show dev twill.1 || true
if [ "$IP_FAMILY" = dual ]; then
  step "IPv6 on h1: routes (proto 117), NDP and FDB of the IPv6 VXLAN device"
  "$TWILL" lab exec --name "$NAME" h1 -- ip -6 route show proto 117
  "$TWILL" lab exec --name "$NAME" h1 -- ip -6 neigh show dev twill6.1 || true
  "$TWILL" lab exec --name "$NAME" h1 -- bridge fdb show dev twill6.1 || true
fi
step "pod-to-pod reachability matrix"
"$TWILL" lab ping --name "$NAME"
step "twill lab down"
"$TWILL" lab down --name "$NAME"
trap - EXIT
echo "demo done: every namespace, process and file of the lab is gone"
