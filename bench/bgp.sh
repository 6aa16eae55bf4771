#!/usr/bin/env bash
# BGP table convergence: N prefixes (default 10000) sent by a BIRD 2 source to a twill node
# (the real agent, which installs them as kernel routes) and, in the same run, interleaved,
# to a second BIRD that exports them to its kernel table (`protocol kernel`). Prints
# per repetition and min/median/max: session establishment, time until all N are in the RIB
# (twill: the agent's copy of the Loc-RIB, from its debug log; BIRD: its "Got END-OF-RIB"
# trace) and in the kernel (the kernel's route notifications, counted as they arrive by
# route_events.c, built here with gcc), counted from the session's Established; and convergence after the
# source's link goes down (hold time 3 s, until 0 routes are left in each kernel). Ratios
# twill/BIRD of the medians; goal <= 1x. While a table is sent, the source BIRD is woken every
# 10 ms for both receivers alike (see `Waker` in bgp.py: BIRD 2.0.12 otherwise holds the tail
# of a feed to a receiver that never fills its socket until its next wake-up).
# Output also goes to bench/results/bgp-<UTC timestamp>.txt.
#
# Setup (namespaces tgb-<run id>-*): a hub netns -u with bridge br0; the source -a
# (10.9.0.1, AS 65001, N static blackhole /24s from 100.64.0.0/10), the twill node -t
# (10.9.0.2, AS 65000, embedded store, `backend: bgp`) and the BIRD learner -b (10.9.0.3,
# AS 65002), each with eth0 on br0. Per repetition the agent and both BIRDs start fresh; the
# source's sessions start disabled and are enabled one at a time (`birdc enable`),
# alternating which goes first; the link-down step then has both up.
# The root namespace is never changed; everything is removed on exit.
#
# Usage (as root):  bash bench/bgp.sh
#   N=10000  REPS=3  TWILL=path/to/twill (default target/release/twill, copied first)
#   TGB_KEEP=DIR   copy each repetition's agent log (debug level) to DIR
#   bash bench/bgp.sh --clean      removes tgb-* netns left by a SIGKILLed run
set -euo pipefail
. "$(dirname "$0")/lib-cluster.sh"

case "${1:-}" in
  --clean)
    need_root "run as root"
    for ns in $(netns_list | grep -E '^tgb-[0-9a-f]{4}-[uatb]$' || true); do
      kill_netns "$ns" && echo "deleted netns $ns"
    done
    rm -rf /tmp/tgb-run.*
    exit 0 ;;
  *) common_arg "${1:-}" ;;
esac

need_root
int_settings N=10000 REPS=3
[ "$N" -le 60000 ] || die "N must be <= 60000 (the /24s of 100.64.0.0/10 run out)"
need_cmds "apt-get install iproute2 python3 bird2 gcc" ip python3 bird birdc timeout gcc
need_twill

RUN=$(run_id)
U=tgb-$RUN-u A=tgb-$RUN-a T=tgb-$RUN-t B=tgb-$RUN-b
WORK=$(mktemp -d /tmp/tgb-run.XXXXXX)
cleanup() {
  local ns
  for ns in "$T" "$B" "$A" "$U"; do
    netns_list | grep -qx "$ns" && kill_netns "$ns"
  done
}
on_exit cleanup

start_output bgp
say_header "BGP convergence"
use_twill "$WORK/twill"
gcc -O2 -Wall -o "$WORK/route_events" "$HERE/route_events.c"
echo "# N=$N REPS=$REPS; $(bird --version 2>&1 | head -1); netns $U $A $T $B"

ip netns add "$U"
ip -n "$U" link add br0 type bridge
ip -n "$U" link set br0 up
i=1
for ns in "$A" "$T" "$B"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add eth0 netns "$ns" type veth peer name p$i netns "$U"
  ip -n "$U" link set p$i master br0 up
  ip -n "$ns" addr add 10.9.0.$i/24 dev eth0
  ip -n "$ns" link set eth0 up
  i=$((i + 1))
done
ip netns exec "$T" sysctl -qw net.ipv4.ip_forward=1

bg_wait env N="$N" REPS="$REPS" TGB_KEEP="${TGB_KEEP:-}" TGB_A="$A" TGB_T="$T" TGB_B="$B" TGB_WORK="$WORK" \
  TGB_TWILL="$WORK/twill" TGB_EVENTS="$WORK/route_events" timeout $((REPS * 300 + 120)) python3 "$HERE/bgp.py"
echo "written to $OUT"
