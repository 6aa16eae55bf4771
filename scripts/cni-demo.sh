#!/usr/bin/env bash
# A short demo of the twill CNI plugin on one host, entirely inside network namespaces:
# a "host" namespace, two container namespaces ADDed through the plugin exactly as a runtime
# calls it, a ping between them, then DEL. Leaves nothing behind.
set -euo pipefail
cd "$(dirname "$0")/.."
TWILL=${TWILL:-target/release/twill}
[ -x "$TWILL" ] || cargo build --release
TWILL=$(readlink -f "$TWILL")
id=$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')
HOST=twdemo-host-$id; A=twdemo-a-$id; B=twdemo-b-$id
DATA=$(mktemp -d /tmp/twill-demo.XXXXXX)
cleanup() { for n in $A $B $HOST; do ip netns del "$n" 2>/dev/null || true; done; rm -rf "$DATA"; }
trap cleanup EXIT
CONF=$(cat <<JSON
{"cniVersion":"1.1.0","name":"twillnet","type":"twill","mode":"bridge","bridge":"twill0",
 "ranges":["10.88.0.0/16","fd88::/64"],"ipMasq":true,"dataDir":"$DATA"}
JSON
)
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cni() { # cni VERB CONTAINER NETNS
  ip netns exec "$HOST" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CNI_COMMAND="$1" \
    CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$3" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni \
    "$TWILL" <<<"$CONF"
}
for n in $HOST $A $B; do ip netns add "$n"; ip -n "$n" link set lo up; done

say "ADD container a (netns $A)"
RA=$(cni ADD ctr-a "$A"); echo "$RA" | python3 -m json.tool
say "ADD container b (netns $B)"
RB=$(cni ADD ctr-b "$B"); echo "$RB" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("b got", [i["address"] for i in r["ips"]])'
IPB=$(echo "$RB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"].split("/")[0])')
IPB6=$(echo "$RB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][1]["address"].split("/")[0])')

say "host namespace: bridge, veths, twill's nftables table"
ip -n "$HOST" -br addr show
ip netns exec "$HOST" nft list table inet twill | sed -n 1,30p
say "container a"
ip -n "$A" -br addr show dev eth0; ip -n "$A" route; ip -n "$A" -6 route show default
say "ping a -> b ($IPB, $IPB6)"
ip netns exec "$A" ping -c 3 -i 0.2 "$IPB"
ip netns exec "$A" ping -6 -c 3 -i 0.2 "$IPB6"
say "CHECK, then DEL both"
CHK=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); c["prevResult"]=json.loads(sys.argv[2]); print(json.dumps(c))' "$CONF" "$RA")
ip netns exec "$HOST" env -i CNI_COMMAND=CHECK CNI_CONTAINERID=ctr-a CNI_NETNS=/var/run/netns/$A CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$TWILL" <<<"$CHK" && echo "CHECK ctr-a: ok"
cni DEL ctr-a "$A"; cni DEL ctr-b "$B"
echo "links left on the host: $(ip -n "$HOST" -br link | awk '{print $1}' | tr '\n' ' ')"
echo "addresses still allocated: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["allocations"]))' "$DATA/ipam/twillnet/state.json")"
say "done: the demo's namespaces are removed on exit"
