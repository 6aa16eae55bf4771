#!/usr/bin/env bash
# Pod-to-pod TCP throughput and request/response latency of a twill cluster, per backend
# (host-gw, vxlan; udp, ipip), against a hand-built kernel baseline in the same lab,
# interleaved in one run. Prints min/median/max per side, the ratio of medians twill/baseline,
# per-repetition ratios, CPU time per GB moved, a side-by-side table of all backends and the
# goals (MET / NOT MET); the whole output goes to bench/results/cluster-<UTC timestamp>.txt.
#   host-gw, vxlan: baseline the same path by hand; throughput ratio >= 0.95, latency <= 1.05
#   udp, ipip (the tunnel on twill.tun in the agents; ipip through its kernel fast path, tc
#     BPF): baseline the kernel VXLAN path below, as for vxlan; 1-stream throughput ratio
#     >= 0.5 (4 streams reported), latency ratio <= 2.0. Pod MTUs differ by design (twill
#     1472 udp / 1480 ipip, VXLAN 1450).
#   wireguard (twill's WireGuard carrier, `lab up --backend wireguard --nodes 3`): two
#     baselines, both run interleaved with twill: the kernel VXLAN path below (unencrypted;
#     1-stream throughput >= 0.5) and a hand-built wireguard-go tunnel between the same two
#     hosts (Debian's wireguard-go + wg in the host netns, device bwg<run><k><i>, UDP 51821,
#     pods on bridge gbr0 10.251.<i>.0/24 behind it, MTU underlay - 80 like twill's; 1-stream
#     throughput >= 2.0, latency <= 1.2; CPU s per GB of the wireguard-go processes as
#     "agents"). Then join-to-first-encrypted-pod-packet (JOIN_REPS times): h3's agent stops,
#     `twill node leave` h3, its agent starts again, and the time from its start to the first
#     reply of a ping (every 10 ms) from h1's pod to h3's pod, through WireGuard; goal < 1 s.
#   Variants, same goals and baseline: B-routed runs twill's pods in routed mode (`lab up
#     --pod-mode routed`, Calico's layout: no bridge; the baseline keeps its bridge), and
#     ipip-engine and udp-engine (or ...-engine-routed) turn the kernel fast path off
#     (TWILL_NO_KERNEL_PATH=1: the userspace engine alone).
#
# Per backend: `twill lab up --nodes 2 --backend B --pods-per-node 1` (pods h1-p1, h2-p1 made
# by the twill CNI plugin, routes by the twill agents), then inside the same two host netns a
# baseline by hand: bridge bbr0 10.250.<i>.1/24, pod netns twl-<lab>-h<i>-b (veth into bbr0,
# 10.250.<i>.2/24, default via .1); host-gw: `10.250.<j>.0/24 via <peer underlay ip>`; vxlan:
# kernel VXLAN bvx0 (VNI 100, dstport 4790, nolearning, local <underlay ip>, dev eth0, MTU
# 1450, 10.250.<i>.0/32) with Flannel's per-peer onlink route + permanent neigh + fdb, and the
# baseline pods at MTU 1450 (host-gw: the underlay MTU). Then REPS repetitions; in each, per
# metric, twill and baseline back to back (odd reps twill first, even reps baseline first):
#   tcp1  iperf3 -t T, 1 stream, server in the destination pod (h2), client in h1's pod
#   tcp4  the same with -P 4
#         each iperf run also gives CPU s per GB moved (GB: iperf3's end.sum_received.bytes):
#         "total", the machine-wide busy time of /proc/stat over the run (it includes iperf3
#         itself and anything else the shared machine does; only same-run ratios count), for
#         every side; "agents", utime+stime of both hosts' twill agents (/proc/<pid>/stat,
#         pids from state.json) over the run, for twill udp/ipip, where the tunnel is theirs
#   rr    64-byte TCP ping-pong for LAT_S s, median RTT (sockperf if installed, else python;
#         LAT_TOOL=python|sockperf|ping forces one; the tool is named in the output)
# On this 2-vCPU VM absolute round trips swing ~10x (about 12 us while other work keeps the
# CPUs busy, about 100 us when they idle: wake-up latency); only the same-run ratios count.
# Everything runs in the lab's namespaces; the root namespace is never changed. Every load is
# bounded by `timeout`. The baseline and the lab are removed on exit, whatever happens.
#
# Usage (as root):  bash bench/cluster.sh
#   REPS=5  T=5  LAT_S=3  BACKENDS="host-gw vxlan"  LAT_TOOL=auto  JOIN_REPS=5 (wireguard)
#   BACKENDS="vxlan udp ipip"   the userspace tunnels next to twill's kernel VXLAN, one run
#                               (bench/tunnel.sh does just that)
#   TWILL=path/to/twill   (default target/release/twill; copied first so a build cannot swap it)
#   bash bench/cluster.sh --aa     A/A calibration without twill: the "twill" side is a second
#                                  hand-built path of the same kind (bridge twill0, 10.244/16,
#                                  VXLAN VNI 1 port 8472); shows the harness and the noise floor
#                                  (host-gw and vxlan only)
#   bash bench/cluster.sh --clean  removes labs/netns left by a run killed with SIGKILL
#
# IPv6 (issue 15): IP_FAMILY=dual bash bench/cluster.sh  (BACKENDS host-gw, vxlan, udp, ipip;
# the others carry no IPv6 pod traffic yet and are refused). Each lab comes up with `twill lab
# up ... --ip-family dual` (IPv6 ULA underlay fd00:<c>::<d>/64 next to the IPv4 one, IPv6 pool
# fd00:10:244::/56, pods with an IPv4 and an IPv6 address). Three sides, interleaved (the order
# rotates by one each rep), same pods and hosts:
#   twill       twill's IPv6 pod-to-pod path: iperf3 / round trip to h2-p1's IPv6 address
#   baseline    the same IPv6 path by hand: bbr0 gets fd00:250:<i>::1/64 too, the baseline pod
#               fd00:250:<i>::2/64 (IPv6 default via ::1); host-gw: `ip -6 route add
#               fd00:250:<j>::/64 via <peer underlay IPv6> dev eth0`; vxlan: kernel VXLAN bvx6
#               (VNI 100, port 4790, nolearning, local <underlay IPv6>, dev eth0, MTU underlay -
#               70, fd00:250:<i>::/128; Flannel's flannel-v6 scheme, as twill6.<VNI>) with
#               per-peer onlink route via fd00:250:<j>::, permanent NDP neighbour and FDB entry
#               to the peer's underlay IPv6; baseline pods at MTU underlay - 70 (vxlan) or the
#               underlay's (host-gw); the IPv4 baseline of the same pods stays as above
#   twill-ipv4  twill's IPv4 path between the same pods (informative: ratio IPv6 / IPv4)
# Goals vs the hand-built IPv6 path: throughput ratio >= 0.95, latency ratio <= 1.05; rows are
# labelled host-gw-ipv6 / vxlan-ipv6; output in bench/results/cluster-ipv6-<UTC timestamp>.txt.
# udp and ipip (IPv6 pod packets over the IPv4 underlay through twill.tun) are measured against
# the hand-built kernel VXLAN over IPv6 (1-stream >= 0.5, latency <= 2.0, as for IPv4) and,
# the goal that matters, against twill's IPv4 path of the same pods: throughput >= 0.8.
#   IP_FAMILY=dual bash bench/cluster.sh --aa   the same without twill (both "twill" paths
#                               hand-built: fd00:244:<i>::/64, twill6.1 VNI 1 port 8472)
set -euo pipefail
. "$(dirname "$0")/lib-cluster.sh"

AA=0
case "${1:-}" in
  --aa) AA=1 ;;
  --clean)
    need_root "run as root"
    clean_labs bc 60
    for ns in $(netns_list | grep -E '^twl-bc[0-9a-f]{4}[0-9]+-' || true); do
      kill_netns "$ns" && echo "deleted netns $ns"
    done
    rm -rf /tmp/twcl-run.*
    rm -f /var/run/wireguard/bwgbc*.sock   # wireguard-go baselines killed with SIGKILL
    exit 0 ;;
  *) common_arg "${1:-}" ;;
esac

need_root
int_settings REPS=5 T=5 LAT_S=3 JOIN_REPS=5
BACKENDS=${BACKENDS:-host-gw vxlan}
for b in $BACKENDS; do
  case $b in
    host-gw|vxlan) ;;
    wireguard|wireguard-routed|udp|ipip|ipip-engine|udp-engine|udp-routed|ipip-routed|ipip-engine-routed|udp-engine-routed)
      [ "$AA" = 0 ] || die "--aa: BACKENDS may only be host-gw and vxlan, not $b" ;;
    *) die "BACKENDS: host-gw, vxlan, udp, ipip, ipip-engine, udp-engine, wireguard, and each of udp/ipip/ipip-engine/udp-engine/wireguard with -routed, not $b" ;;
  esac
done
IP_FAMILY=${IP_FAMILY:-ipv4}
case $IP_FAMILY in
  ipv4) ;;
  dual)
    for b in $BACKENDS; do
      case $b in
        host-gw|vxlan|udp|ipip) ;;
        *) die "IP_FAMILY=dual: BACKENDS may only be host-gw, vxlan, udp and ipip (twill carries IPv6 pod traffic on those only so far), not $b" ;;
      esac
    done ;;
  *) die "IP_FAMILY must be ipv4 or dual, not $IP_FAMILY" ;;
esac
export REPS T LAT_S JOIN_REPS
case " $BACKENDS " in
  *" wireguard"*) need_cmds "apt-get install wireguard-go wireguard-tools" wireguard-go wg ;;
esac
need_cmds "apt-get install iproute2 iperf3 python3 iputils-ping" ip bridge iperf3 python3 timeout ping
if [ "$AA" = 0 ]; then
  need_twill_lab
  need_cmds "apt-get install etcd-server" etcd
fi

RUN=$(run_id)
WORK=$(mktemp -d /tmp/twcl-run.XXXXXX)
LABS=()
k=0
for b in $BACKENDS; do LABS+=("bc$RUN$k"); k=$((k + 1)); done   # bc1a2b0, bc1a2b1, ...
TW=$WORK/twill

cleanup() {
  local n ns
  for n in "${LABS[@]}"; do
    kill_netns "twl-$n-h1-b"
    kill_netns "twl-$n-h2-b"
    for ns in $(netns_list | grep -E "^twl-$n-h[0-9]+-p[0-9]+$" || true); do   # iperf3 etc.
      ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    done
    [ "$AA" = 1 ] || lab_down_quiet "$n"
    kill_lab_netns "$n"
  done
  wggo_stop
}
on_exit cleanup

if [ "$IP_FAMILY" = dual ]; then start_output cluster-ipv6; else start_output cluster; fi
LOG=$WORK/rows.jsonl

say_header cluster
if [ "$AA" = 0 ]; then
  use_twill "$TW"
else
  echo "# A/A MODE: no twill; the 'twill' side is a second hand-built kernel path (calibration)"
fi
echo "# REPS=$REPS T=${T}s LAT_S=${LAT_S}s backends: $BACKENDS; iperf3 $(iperf3 --version | head -1 | awk '{print $2}')"
[ "$IP_FAMILY" = ipv4 ] || echo "# IP_FAMILY=dual: twill's IPv6 pod path vs the same IPv6 path by hand; twill's IPv4 path alongside"

declare -A HNS HIP TPOD TIP AGENT WGPID HIP6 TIP6
MTU_U=1500
VXLAN_OVERHEAD=50   # outer IPv4 + UDP + VXLAN + inner Ethernet; 70 over an IPv6 underlay
[ "$IP_FAMILY" = ipv4 ] || VXLAN_OVERHEAD=70

read_lab() {   # fills HNS/HIP/AGENT (host netns, underlay ip, agent pid) and TPOD/TIP (twill pods)
  # (and in a dual-stack lab HIP6/TIP6: the hosts' underlay IPv6 and the pods' IPv6 addresses)
  local st=/run/twill/lab/$1/state.json
  [ -f "$st" ] || die "$st missing after lab up"
  eval "$(python3 - "$st" <<'PY'
import json, shlex, sys
s = json.load(open(sys.argv[1]))
for h in s["hosts"]:
    print("HNS[%d]=%s HIP[%d]=%s AGENT[%d]=%s" % (h["index"], shlex.quote(h["netns"]), h["index"],
          h["ip"], h["index"], int(h.get("agentPid", h.get("agent_pid")) or 0)))
    if h.get("ip6"):
        print("HIP6[%d]=%s" % (h["index"], shlex.quote(h["ip6"])))
for p in s["pods"]:
    if p["index"] == 1:
        print("TPOD[%d]=%s TIP[%d]=%s" % (p["host"], shlex.quote(p["netns"]), p["host"], p["ip"]))
        if p.get("ip6"):
            print("TIP6[%d]=%s" % (p["host"], shlex.quote(p["ip6"])))
PY
)"
  [ -n "${TPOD[1]:-}" ] && [ -n "${TPOD[2]:-}" ] || die "state.json of $1 has no pods h1-p1/h2-p1"
}

# path_up MODE PREFIX BRIDGE VXDEV VNI PORT MACTAG PODSUFFIX PROTO: a bridge per host with
# PREFIX.<i>.1/24, a pod netns <host netns>-PODSUFFIX at PREFIX.<i>.2, and the inter-host path
# by hand (plain routes, Flannel-style VXLAN, or wggo: a wireguard-go tunnel, device VXDEV<i>
# on UDP PORT). Pod MTU: underlay - VXLAN_OVERHEAD for vxlan (1450; 1430 with IP_FAMILY=dual,
# whose IPv6 VXLAN needs it), 1420 for wggo, underlay's for host-gw.
path_up() {
  local mode=$1 pfx=$2 br=$3 vx=$4 vni=$5 port=$6 tag=$7 suf=$8 proto=$9 i j h p mtu
  mtu=$MTU_U; [ "$mode" = vxlan ] && mtu=$((MTU_U - VXLAN_OVERHEAD))
  [ "$mode" = wggo ] && mtu=$((MTU_U - 80))
  for i in 1 2; do
    h=${HNS[$i]} p=${HNS[$i]}-$suf
    ip netns add "$p"
    ip -n "$p" link set lo up
    ip -n "$h" link add "$br" type bridge
    ip -n "$h" addr add "$pfx.$i.1/24" dev "$br"
    ip -n "$h" link set "$br" up
    ip link add "v$suf" netns "$h" type veth peer name eth0 netns "$p"
    ip -n "$h" link set "v$suf" mtu "$mtu" master "$br" up
    ip -n "$p" link set eth0 mtu "$mtu" up
    ip -n "$p" addr add "$pfx.$i.2/24" dev eth0
    ip -n "$p" route add default via "$pfx.$i.1"
    if [ "$mode" = vxlan ]; then
      ip -n "$h" link add "$vx" type vxlan id "$vni" dstport "$port" nolearning \
        local "${HIP[$i]}" dev eth0
      ip -n "$h" link set "$vx" address "02:$tag:00:00:00:0$i" mtu "$mtu" up
      ip -n "$h" addr add "$pfx.$i.0/32" dev "$vx"
    elif [ "$mode" = wggo ]; then
      wggo_start "$h" "$vx$i" "$port" "$i"
      ip -n "$h" link set "$vx$i" mtu "$mtu" up
      ip -n "$h" addr add "$pfx.$i.0/32" dev "$vx$i"
    fi
  done
  for i in 1 2; do
    j=$((3 - i)) h=${HNS[$i]}
    if [ "$mode" = vxlan ]; then
      ip -n "$h" neigh add "$pfx.$j.0" lladdr "02:$tag:00:00:00:0$j" dev "$vx" nud permanent
      bridge -n "$h" fdb append "02:$tag:00:00:00:0$j" dev "$vx" dst "${HIP[$j]}" self permanent
      ip -n "$h" route add "$pfx.$j.0/24" via "$pfx.$j.0" dev "$vx" onlink proto "$proto"
    elif [ "$mode" = wggo ]; then
      ip netns exec "$h" wg set "$vx$i" peer "$(wg pubkey < "$WORK/$vx$j.key")" \
        endpoint "${HIP[$j]}:$port" allowed-ips "$pfx.$j.0/24"
      ip -n "$h" route add "$pfx.$j.0/24" dev "$vx$i" proto "$proto"
    else
      ip -n "$h" route add "$pfx.$j.0/24" via "${HIP[$j]}" dev eth0 proto "$proto"
    fi
  done
}

# wggo_start NETNS DEV PORT I: wireguard-go in the foreground (pid in WGPID[I], log in $WORK),
# a new private key ($WORK/DEV.key, 0600), listening on PORT; waits for its control socket.
# path6_add MODE PREFIX6 BRIDGE VXDEV6 VNI PORT MACTAG PODSUFFIX PROTO: the IPv6 twin of a
# path_up path (same bridge and pods): BRIDGE gets PREFIX6:<i>::1/64, the pod PREFIX6:<i>::2/64
# with an IPv6 default via ::1; host-gw: PREFIX6:<j>::/64 via the peer's underlay IPv6 (HIP6);
# vxlan: VXDEV6 (local HIP6, MTU underlay - 70, PREFIX6:<i>::/128) with Flannel-v6's per-peer
# onlink route, permanent NDP neighbour and FDB entry. Addresses skip DAD (nodad): nothing
# else uses them, and a tentative address would make the first pings fail.
path6_add() {
  local mode=$1 pfx=$2 br=$3 vx=$4 vni=$5 port=$6 tag=$7 suf=$8 proto=$9 i j h p
  for i in 1 2; do
    h=${HNS[$i]} p=${HNS[$i]}-$suf
    ip -n "$h" addr add "$pfx:$i::1/64" dev "$br" nodad
    ip -n "$p" addr add "$pfx:$i::2/64" dev eth0 nodad
    ip -n "$p" -6 route add default via "$pfx:$i::1"
    if [ "$mode" = vxlan ]; then
      ip -n "$h" link add "$vx" type vxlan id "$vni" dstport "$port" nolearning \
        local "${HIP6[$i]}" dev eth0
      ip -n "$h" link set "$vx" address "02:$tag:00:00:06:0$i" mtu $((MTU_U - 70)) up
      ip -n "$h" addr add "$pfx:$i::/128" dev "$vx" nodad
    fi
  done
  for i in 1 2; do
    j=$((3 - i)) h=${HNS[$i]}
    if [ "$mode" = vxlan ]; then
      ip -n "$h" neigh add "$pfx:$j::" lladdr "02:$tag:00:00:06:0$j" dev "$vx" nud permanent
      bridge -n "$h" fdb append "02:$tag:00:00:06:0$j" dev "$vx" dst "${HIP6[$j]}" self permanent
      ip -n "$h" -6 route add "$pfx:$j::/64" via "$pfx:$j::" dev "$vx" onlink proto "$proto"
    else
      ip -n "$h" -6 route add "$pfx:$j::/64" via "${HIP6[$j]}" dev eth0 proto "$proto"
    fi
  done
}

path6_down() {   # PREFIX6 VXDEV6 (before path_down, which removes the bridge and pods)
  local i
  for i in 1 2; do
    ip -n "${HNS[$i]}" link del "$2" 2>/dev/null || true
    ip -n "${HNS[$i]}" -6 route del "$1:$((3 - i))::/64" 2>/dev/null || true
  done
}

wggo_start() {
  local k
  (umask 077; wg genkey > "$WORK/$2.key")
  ip netns exec "$1" wireguard-go -f "$2" >"$WORK/$2.log" 2>&1 &
  WGPID[$4]=$!
  for k in $(seq 50); do [ -S "/var/run/wireguard/$2.sock" ] && break; sleep 0.1; done
  ip netns exec "$1" wg set "$2" private-key "$WORK/$2.key" listen-port "$3" \
    || die "wireguard-go $2 in $1 did not start: $(cat "$WORK/$2.log")"
}

wggo_stop() {   # SIGTERM every wireguard-go this run started; remove their control sockets
  local i
  for i in "${!WGPID[@]}"; do
    kill -TERM "${WGPID[$i]}" 2>/dev/null && wait "${WGPID[$i]}" 2>/dev/null || true
    unset "WGPID[$i]"
  done
  rm -f /var/run/wireguard/bwgbc"$RUN"*.sock
}

path_down() {   # PREFIX BRIDGE VXDEV PODSUFFIX
  local i h
  for i in 1 2; do
    h=${HNS[$i]}
    ip netns del "$h-$4" 2>/dev/null || true
    ip -n "$h" link del "$3" 2>/dev/null || true
    ip -n "$h" link del "$2" 2>/dev/null || true
    ip -n "$h" route del "$1.$((3 - i)).0/24" 2>/dev/null || true
  done
}

aa_up() {   # a lab-shaped topology without twill: underlay bridge, 2 hosts, "twill" pods
  local n=$1 mode=$2 i
  ip netns add "twl-$n-u"
  ip -n "twl-$n-u" link set lo up
  ip -n "twl-$n-u" link add br0 type bridge
  ip -n "twl-$n-u" addr add 192.168.100.1/24 dev br0
  ip -n "twl-$n-u" link set br0 up
  for i in 1 2; do
    HNS[$i]=twl-$n-h$i HIP[$i]=192.168.100.$((10 + i))
    ip netns add "${HNS[$i]}"
    ip -n "${HNS[$i]}" link set lo up
    ip link add eth0 netns "${HNS[$i]}" type veth peer name "h$i" netns "twl-$n-u"
    ip -n "twl-$n-u" link set "h$i" master br0 up
    ip -n "${HNS[$i]}" addr add "${HIP[$i]}/24" dev eth0
    ip -n "${HNS[$i]}" link set eth0 up
    ip netns exec "${HNS[$i]}" sysctl -qw net.ipv4.ip_forward=1
    TPOD[$i]=twl-$n-h$i-p1 TIP[$i]=10.244.$i.2
    if [ "$IP_FAMILY" = dual ]; then
      HIP6[$i]=fd00:100::$((10 + i)) TIP6[$i]=fd00:244:$i::2
      ip -n "${HNS[$i]}" addr add "${HIP6[$i]}/64" dev eth0 nodad
      ip netns exec "${HNS[$i]}" sysctl -qw net.ipv6.conf.all.forwarding=1
    fi
  done
  path_up "$mode" 10.244 twill0 twill.1 1 8472 aa p1 117
  [ "$IP_FAMILY" = ipv4 ] || path6_add "$mode" fd00:244 twill0 twill6.1 1 8472 aa p1 117
}

pingable() {   # SRC_NS DST_IP TRIES
  local k
  for k in $(seq "$3"); do
    ip netns exec "$1" timeout 5 ping -c 2 -i 0.2 -W 1 -q "$2" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

run_backend() {
  local b=$1 n=$2 i mt mb base=$1 agents=() lab_backend=$1 no_kernel_path=false pod_mode=bridge
  local nodes=2 extra=() family=() label=$1 dst_twill dst_base=10.250.2.2
  if [ "$IP_FAMILY" = dual ]; then
    family=(--ip-family dual) label=$1-ipv6 dst_base=fd00:250:2::2   # rows: host-gw-ipv6, ...
  fi
  # agents: --agents PID,PID for the tunnels; they are measured against kernel VXLAN
  case $b in *-routed) lab_backend=${lab_backend%-routed} pod_mode=routed ;; esac
  case $lab_backend in *-engine) lab_backend=${lab_backend%-engine} no_kernel_path=true ;; esac
  case $lab_backend in udp|ipip|wireguard) base=vxlan ;; esac
  [ "$lab_backend" = wireguard ] && nodes=3   # h3 for the join measurement
  base=${base%-routed}
  echo
  echo "==== backend $b (lab $n)$([ "$IP_FAMILY" = ipv4 ] || echo ", IPv6 pod path") ===="
  local t0=$SECONDS
  if [ "$AA" = 1 ]; then
    aa_up "$n" "$b"
  else
    TWILL_NO_KERNEL_PATH=$no_kernel_path bg_wait timeout 300 "$TW" lab up --nodes "$nodes" \
      --backend "$lab_backend" --pod-mode "$pod_mode" --pods-per-node 1 --name "$n" \
      "${family[@]}" || die "twill lab up --backend $lab_backend failed"
    read_lab "$n"
  fi
  echo "lab up in $((SECONDS - t0)) s: hosts ${HNS[1]} (${HIP[1]}), ${HNS[2]} (${HIP[2]}); twill pods ${TIP[1]} -> ${TIP[2]}"
  if [ "$IP_FAMILY" = dual ]; then
    [ -n "${HIP6[1]:-}" ] && [ -n "${HIP6[2]:-}" ] && [ -n "${TIP6[1]:-}" ] && [ -n "${TIP6[2]:-}" ] \
      || die "lab $n has no IPv6 underlay or pod addresses in its state.json (a twill without 'lab up --ip-family dual'?)"
    echo "IPv6: hosts ${HIP6[1]}, ${HIP6[2]}; twill pods ${TIP6[1]} -> ${TIP6[2]}"
  fi
  MTU_U=$(ip -n "${HNS[1]}" -j link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["mtu"])')
  for i in 1 2; do
    if [ "$(ip netns exec "${HNS[$i]}" sysctl -n net.ipv4.ip_forward)" != 1 ]; then
      echo "note: ip_forward was 0 in ${HNS[$i]}; set to 1 (the baseline needs it)"
      ip netns exec "${HNS[$i]}" sysctl -qw net.ipv4.ip_forward=1
    fi
    if [ "$IP_FAMILY" = dual ] && [ "$(ip netns exec "${HNS[$i]}" sysctl -n net.ipv6.conf.all.forwarding)" != 1 ]; then
      echo "note: IPv6 forwarding was 0 in ${HNS[$i]}; set to 1 (the baseline needs it)"
      ip netns exec "${HNS[$i]}" sysctl -qw net.ipv6.conf.all.forwarding=1
    fi
  done
  path_up "$base" 10.250 bbr0 bvx0 100 4790 b0 b 118
  [ "$IP_FAMILY" = ipv4 ] || path6_add "$base" fd00:250 bbr0 bvx6 100 4790 b0 b 118
  mt=$(ip -n "${TPOD[1]}" -j link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["mtu"])')
  mb=$(ip -n "${HNS[1]}-b" -j link show eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["mtu"])')
  if [ "$base" = "$b" ]; then
    echo "pod MTU: twill $mt, baseline $mb (underlay $MTU_U)$([ "$mt" = "$mb" ] || echo '  <-- DIFFERENT')"
  else
    echo "pod MTU: twill $b $mt, baseline kernel VXLAN $mb (underlay $MTU_U; different encapsulations)"
    for i in 1 2; do
      [ "${AGENT[$i]:-0}" -gt 0 ] && [ -d "/proc/${AGENT[$i]}" ] || die "no running agent for ${HNS[$i]} in state.json"
      echo "${HNS[$i]}: agent pid ${AGENT[$i]}; $( (ip -n "${HNS[$i]}" -o link show twill.tun \
        || ip -n "${HNS[$i]}" -o link show twill.wg) 2>/dev/null | awk '{print $2, $4, $5}' || true)"
    done
    agents=(--agents "${AGENT[1]},${AGENT[2]}")
  fi
  echo "h1 routes to the peer: twill: $(ip -n "${HNS[1]}" route show proto 117 | tr '\n' ';')"
  echo "                       baseline: $(ip -n "${HNS[1]}" route show proto 118 | tr '\n' ';')"
  if [ "$IP_FAMILY" = dual ]; then
    echo "h1 IPv6 routes to the peer: twill: $(ip -n "${HNS[1]}" -6 route show proto 117 | tr '\n' ';')"
    echo "                            baseline: $(ip -n "${HNS[1]}" -6 route show proto 118 | tr '\n' ';')"
    [ "$base" != vxlan ] || echo "h1 VXLAN devices: $(ip -n "${HNS[1]}" -o link show type vxlan \
      | awk '{print $2, $4, $5}' | tr '\n' ';')"
  fi
  pingable "${TPOD[1]}" "${TIP[2]}" 15 || die "twill pod ${TIP[1]} cannot ping ${TIP[2]} ($b)"
  pingable "${HNS[1]}-b" 10.250.2.2 5 || die "baseline pod 10.250.1.2 cannot ping 10.250.2.2 ($b)"
  if [ "$IP_FAMILY" = dual ]; then
    pingable "${TPOD[1]}" "${TIP6[2]}" 15 || die "twill pod ${TIP6[1]} cannot ping ${TIP6[2]} ($b)"
    pingable "${HNS[1]}-b" fd00:250:2::2 5 || die "baseline pod fd00:250:1::2 cannot ping fd00:250:2::2 ($b)"
    extra=(--extra twill-ipv4 "${TPOD[1]}" "${TPOD[2]}" "${TIP[2]}")
  fi
  dst_twill=${TIP[2]}
  [ "$IP_FAMILY" = ipv4 ] || dst_twill=${TIP6[2]}
  if [ "$lab_backend" = wireguard ]; then
    path_up wggo 10.251 gbr0 "bwg$n" 0 51821 - g 119
    pingable "${HNS[1]}-g" 10.251.2.2 5 || die "wireguard-go pod 10.251.1.2 cannot ping 10.251.2.2"
    echo "wireguard-go baseline: $(wireguard-go --version | head -1), pids ${WGPID[1]} ${WGPID[2]}"
    extra=(--extra wireguard-go "${HNS[1]}-g" "${HNS[2]}-g" 10.251.2.2
           --extra-agents "${WGPID[1]},${WGPID[2]}")
  fi
  echo "both paths pass traffic; measuring (REPS=$REPS, T=${T}s, LAT_S=${LAT_S}s)"
  bg_wait timeout $((REPS * 2 * (2 * T + LAT_S + 90) + 60)) python3 "$HERE/cluster.py" measure \
    --backend "$label" --log "$LOG" \
    --twill "${TPOD[1]}" "${TPOD[2]}" "$dst_twill" \
    --base "${HNS[1]}-b" "${HNS[2]}-b" "$dst_base" \
    "${agents[@]}" "${extra[@]}" \
    || echo "warning: measurement of $b ended early (rc $?)"
  [ "$IP_FAMILY" = ipv4 ] || path6_down fd00:250 bvx6
  path_down 10.250 bbr0 bvx0 b
  if [ "$lab_backend" = wireguard ]; then
    path_down 10.251 gbr0 "bwg$n" g
    wggo_stop
    bg_wait timeout $((JOIN_REPS * 60 + 30)) python3 "$HERE/cluster.py" join --backend "$b" \
      --log "$LOG" --lab "$n" --twill "$TW" --host 3 --from 1 \
      || echo "warning: join measurement of $b ended early (rc $?)"
  fi
  if [ "$AA" = 1 ]; then
    kill_lab_netns "$n"
  else
    t0=$SECONDS
    timeout 90 "$TW" lab down --name "$n" >/dev/null || echo "warning: lab down $n failed"
    echo "lab down in $((SECONDS - t0)) s"
  fi
}

START=$SECONDS
k=0
for b in $BACKENDS; do
  run_backend "$b" "${LABS[$k]}"
  k=$((k + 1))
done
echo
[ -s "$LOG" ] && python3 "$HERE/cluster.py" report "$LOG"
echo "bench wall time $((SECONDS - START)) s"
echo "written to $OUT"
