#!/bin/bash
# A stand-in for the twill binary, so the lab's orchestration (etcd, detached agents, leases,
# CNI ADD in the host namespace, convergence, ping matrix, faults, down) is tested before the
# real agent exists. It speaks the same interfaces as the real one, minimally:
#   - CNI ADD (CNI_COMMAND set): a bridge cni0 with the node's .1, one veth per pod.
#   - cluster init --store URL [--etcd-cafile CA --etcd-certfile C --etcd-keyfile K] -f FILE:
#     checks the file and that etcd answers from this host (over TLS with the client
#     certificate when given, with etcdctl).
#   - agent --store URL [--etcd-* ...] --node-name hN --iface eth0 --data-dir D: subnet 10.244.N.0/24,
#     writes D/node.json, then host-gw: a route to every peer on its own underlay subnet,
#     "skipped" for the others; writes D/status.json in the agent's `status --json` format.
#   - status --data-dir D --json: prints D/status.json.
# Named *fail-agent*, the agent of h2 fails at start (to test cleanup after a failed up).
set -u

die() { echo "fake twill: $*" >&2; exit 1; }

# `etcd://IP:PORT` answers /health from this namespace (bash's /dev/tcp, no curl needed); with
# CA, CERT and KEY over TLS with that client certificate (etcdctl).
etcd_ok() {
  local hp=${1#etcd://} resp
  if [ -n "${2:-}" ]; then
    timeout 10 etcdctl --endpoints "https://$hp" --cacert "$2" --cert "$3" --key "$4" \
      --dial-timeout 3s endpoint health >/dev/null 2>&1
    return
  fi
  exec 3<>"/dev/tcp/${hp%:*}/${hp#*:}" || return 1
  printf 'GET /health HTTP/1.0\r\n\r\n' >&3
  resp=$(timeout 2 cat <&3)
  exec 3<&-
  [[ $resp == *'"health":"true"'* ]]
}

json_field() { # json_field FILE KEY  (flat JSON written by this script or serde_json)
  sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1"
}

cni_add() {
  local conf dir node i n pod ip
  conf=$(cat)
  dir=$(printf '%s' "$conf" | sed -n 's/.*"dataDir":"\([^"]*\)".*/\1/p')
  [ -f "$dir/node.json" ] || { echo '{"cniVersion":"1.1.0","code":11,"msg":"no node.json"}'; exit 1; }
  node=$(json_field "$dir/node.json" node); i=${node#h}
  n=$(( $(cat "$dir/fake-pods" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$dir/fake-pods"
  pod=$(basename "$CNI_NETNS"); ip=10.244.$i.$((n + 1))
  if ! ip link show cni0 >/dev/null 2>&1; then
    ip link add cni0 type bridge && ip addr add "10.244.$i.1/24" dev cni0 && ip link set cni0 up || exit 1
  fi
  ip link add "vp$n" type veth peer name "$CNI_IFNAME" netns "$pod" || exit 1
  ip link set "vp$n" master cni0 up
  ip -n "$pod" addr add "$ip/24" dev "$CNI_IFNAME"
  ip -n "$pod" link set "$CNI_IFNAME" up
  ip -n "$pod" route add default via "10.244.$i.1"
  printf '{"cniVersion":"1.1.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"%s/24","gateway":"10.244.%s.1","interface":0}]}\n' \
    "$CNI_IFNAME" "$CNI_NETNS" "$ip" "$i"
}

agent() {
  local store="" node="" dir="" ca="" cert="" key="" me i peers sep p pnode pip psub path prog
  while [ $# -gt 0 ]; do
    case $1 in
      --store) store=$2; shift 2 ;;
      --etcd-cafile) ca=$2; shift 2 ;;
      --etcd-certfile) cert=$2; shift 2 ;;
      --etcd-keyfile) key=$2; shift 2 ;;
      --node-name) node=$2; shift 2 ;;
      --data-dir) dir=$2; shift 2 ;;
      *) shift ;;
    esac
  done
  [ -n "$node" ] && [ -d "$dir" ] || die "agent: bad arguments"
  case $(basename "$0") in *fail-agent*) [ "$node" = h2 ] && die "agent $node: injected failure" ;; esac
  case $store in etcd://*) etcd_ok "$store" "$ca" "$cert" "$key" || die "agent: etcd at $store does not answer" ;; esac
  trap 'echo "fake agent $node: stopping"; exit 0' TERM INT
  me=$(ip -4 -o addr show dev eth0 | awk '{print $4}'); me=${me%/*}
  i=${node#h}
  printf '{"node":"%s","subnet":"10.244.%s.0/24","publicIp":"%s"}\n' "$node" "$i" "$me" > "$dir/node.json.tmp"
  mv "$dir/node.json.tmp" "$dir/node.json"
  echo "fake agent $node: lease 10.244.$i.0/24 on $me"
  while true; do
    peers=""; sep=""
    for p in "$(dirname "$dir")"/h*/node.json; do
      [ -f "$p" ] || continue
      pnode=$(json_field "$p" node); [ "$pnode" = "$node" ] && continue
      pip=$(json_field "$p" publicIp); psub=$(json_field "$p" subnet)
      if [ "${pip%.*}" = "${me%.*}" ]; then
        ip route replace "$psub" via "$pip" && prog=true || prog=false
        path='{"via":"direct"}'
      else
        prog=false; path='{"via":"skipped","reason":"not on this L2 segment"}'
      fi
      peers="$peers$sep{\"node\":\"$pnode\",\"subnet\":\"$psub\",\"publicIp\":\"$pip\",\"path\":$path,\"programmed\":$prog}"
      sep=","
    done
    printf '{"node":"%s","subnet":"10.244.%s.0/24","backend":"host-gw","publicIp":"%s","inSync":true,"peers":[%s]}\n' \
      "$node" "$i" "$me" "$peers" > "$dir/status.json.tmp"
    mv "$dir/status.json.tmp" "$dir/status.json"
    sleep 0.3
  done
}

if [ -n "${CNI_COMMAND:-}" ]; then
  [ "$CNI_COMMAND" = ADD ] || { echo '{"cniVersion":"1.1.0","code":4,"msg":"fake: ADD only"}'; exit 1; }
  cni_add
  exit
fi
case ${1:-} in
  cluster)
    [ "${2:-}" = init ] || die "usage: cluster init --store URL [--etcd-...] -f FILE"
    shift 2
    store="" file="" ca="" cert="" key=""
    while [ $# -gt 0 ]; do
      case $1 in
        --store) store=$2; shift 2 ;;
        --etcd-cafile) ca=$2; shift 2 ;;
        --etcd-certfile) cert=$2; shift 2 ;;
        --etcd-keyfile) key=$2; shift 2 ;;
        -f) file=$2; shift 2 ;;
        *) die "cluster init: unknown argument $1" ;;
      esac
    done
    [ -n "$store" ] && [ -n "$file" ] || die "usage: cluster init --store URL [--etcd-...] -f FILE"
    grep -q '"Network": "10.244.0.0/16"' "$file" || die "bad net-conf $file"
    case $store in
      etcd://*) etcd_ok "$store" "$ca" "$cert" "$key" || die "etcd at $store does not answer" ;;
      embedded:*) ;;
      *) die "bad store $store" ;;
    esac
    echo "fake cluster init: ok" ;;
  agent) shift; agent "$@" ;;
  status)
    [ "${2:-}" = --data-dir ] || die "usage: status --data-dir D --json"
    cat "$3/status.json" 2>/dev/null || die "status: agent has written no status yet" ;;
  *) die "unknown command ${1:-}" ;;
esac
