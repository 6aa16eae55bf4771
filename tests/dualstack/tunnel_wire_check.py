"""Decodes an underlay capture (tcpdump -w, any link type) of the userspace tunnel (udp or
ipip backend) between two dual-stack nodes and reports, as JSON, how pod IPv6 packets crossed
the wire, for tests/dualstack_lab.rs:

  udp6      IPv4 UDP datagrams to or from PORT whose payload is an IPv6 packet from one pod
            address to the other (either way) with the marker in it (Flannel's udp framing)
  ipip6     IPv4 packets of protocol 41 carrying such an IPv6 packet (IPv6 in IPv4)
  outer4    the (source, destination) pairs of the outer IPv4 headers of both
  udp6in6   the same over an IPv6 underlay (IPv6-only clusters, tests/ipv6only_lab.rs): IPv6
            UDP datagrams to or from PORT carrying such a packet
  ipip6in6  IPv6 packets of next header 41 carrying such a packet (ip6tnl's framing)
  outer6    the (source, destination) pairs of the outer IPv6 headers of those two
  clearV6   IPv6 packets between the two pod addresses directly on the underlay (not
            encapsulated)

Usage: python3 tunnel_wire_check.py PCAP PORT POD6_A POD6_B MARKER
"""
import json
import sys

from scapy.all import IP, UDP, IPv6, PcapReader, raw

pcap, port, pod_a, pod_b, marker = (sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4],
                                    sys.argv[5].encode())
pods = {pod_a, pod_b}


def outermost_ip(p):
    """The first IPv4 or IPv6 header of p (`IPv6 in p` would also find an inner one)."""
    layer = p
    while layer:
        if isinstance(layer, (IP, IPv6)):
            return layer
        layer = layer.payload
    return None


def is_pod_packet(data):
    """data is an IPv6 packet between the two pods carrying the marker."""
    if len(data) < 40 or data[0] >> 4 != 6:
        return False
    inner = IPv6(data)
    return {inner.src, inner.dst} == pods and marker in raw(inner.payload)


out = {"packets": 0, "udp6": 0, "ipip6": 0, "clearV6": 0, "outer4": [],
       "udp6in6": 0, "ipip6in6": 0, "outer6": []}
with PcapReader(pcap) as packets:
    for p in packets:
        out["packets"] += 1
        outer = outermost_ip(p)
        if outer is None:
            continue
        v6 = isinstance(outer, IPv6)
        if v6 and {outer.src, outer.dst} == pods:
            out["clearV6"] += 1
            continue
        if (outer.nh if v6 else outer.proto) == 41:
            kind = "ipip6"
            data = raw(outer.payload)
        elif UDP in outer and port in (outer[UDP].sport, outer[UDP].dport):
            kind = "udp6"
            data = raw(outer[UDP].payload)
        else:
            continue
        if is_pod_packet(data):
            out[kind + ("in6" if v6 else "")] += 1
            pairs = out["outer6" if v6 else "outer4"]
            pair = [outer.src, outer.dst]
            if pair not in pairs:
                pairs.append(pair)
print(json.dumps(out))
