#!/usr/bin/env bash
# The tunnel backends side by side with kernel VXLAN, in one run: bench/cluster.sh with
# BACKENDS="vxlan udp ipip ipip-engine udp-engine" (udp, ipip: the kernel fast path;
# ipip-engine, udp-engine: the same backend with the fast path off, the userspace engine alone). Per backend a 2-node lab: pod-to-pod TCP throughput (1 and 4
# streams) and 64 B request/response latency of twill vs a hand-built kernel VXLAN path in the
# same lab, interleaved; CPU s per GB moved (machine-wide, and for udp/ipip the two agents that
# run the tunnel engine); goals for udp and ipip: 1-stream throughput >= 0.5x kernel VXLAN,
# latency <= 2x. See bench/cluster.sh for the method; output in bench/results/cluster-*.txt.
#
# Usage (as root):  bash bench/tunnel.sh        (REPS, T, LAT_S, LAT_TOOL, TWILL as for cluster.sh;
#                                                 BACKENDS overrides the five)
#   bash bench/tunnel.sh --clean                 removes what a killed run left behind
set -euo pipefail
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
BACKENDS=${BACKENDS:-vxlan udp ipip ipip-engine udp-engine} exec bash "$(dirname "$0")/cluster.sh" "$@"
