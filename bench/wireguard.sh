#!/usr/bin/env bash
# twill's WireGuard against a hand-built wireguard-go tunnel and the hand-built kernel VXLAN,
# in one run: bench/cluster.sh with BACKENDS="wireguard". A 3-node lab (`twill lab up
# --backend wireguard`); between h1 and h2, interleaved in every repetition: twill's pods,
# pods behind wireguard-go + wg in the same host netns (UDP 51821), and pods behind kernel
# VXLAN. Single-stream TCP (goals: >= 2x wireguard-go, >= 0.5x kernel VXLAN), 4 streams
# (reported), 64 B round trip (goal <= 1.2x wireguard-go), CPU s per GB (machine-wide, and
# the twill agents / the wireguard-go processes); then join to first encrypted pod packet
# (h3's agent leaves and starts again; goal < 1 s). See bench/cluster.sh for the method;
# output in bench/results/cluster-*.txt.
#
# Usage (as root):  bash bench/wireguard.sh     (REPS, T, LAT_S, LAT_TOOL, JOIN_REPS, TWILL as
#                                                for cluster.sh; BACKENDS=wireguard-routed
#                                                for twill's pods in routed mode)
#   bash bench/wireguard.sh --clean              removes what a killed run left behind
set -euo pipefail
case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
BACKENDS=${BACKENDS:-wireguard} exec bash "$(dirname "$0")/cluster.sh" "$@"
