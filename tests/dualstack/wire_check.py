"""Decodes an underlay capture (tcpdump -w, any link type) of VXLAN traffic between two
dual-stack nodes and reports, as JSON, how pod packets crossed the wire, for
tests/dualstack_lab.rs:

  vxlan6         VXLAN datagrams (UDP PORT) over an outer IPv6 header
  vxlan4         VXLAN datagrams (UDP PORT) over an outer IPv4 header
  v6InV6         VXLAN over IPv6 whose inner frame is IPv6 from one pod address to the other
                 (either way), with the marker in its payload; outer6 lists their outer
                 (source, destination) pairs
  v6InV4         the same inner IPv6 pod packets inside VXLAN over IPv4
  v4InV6         inner IPv4 packets inside VXLAN over IPv6 (IPv4 pods stay on the IPv4 VTEP)
  vnis           the VNIs seen
  clearV6        IPv6 packets between the two pod addresses directly on the underlay (not
                 encapsulated)

Usage: python3 wire_check.py PCAP PORT POD6_A POD6_B MARKER
"""
import json
import sys

from scapy.all import IP, UDP, VXLAN, IPv6, PcapReader, bind_layers, raw

pcap, port, pod_a, pod_b, marker = (sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4],
                                    sys.argv[5].encode())
pods = {pod_a, pod_b}
# Scapy binds VXLAN to 4789 only; Flannel's (and the Linux default) port is 8472.
bind_layers(UDP, VXLAN, dport=port)
bind_layers(UDP, VXLAN, sport=port)



def outermost_ip(p):
    """The first IPv4 or IPv6 header of p (`IPv6 in p` would also find an inner one)."""
    layer = p
    while layer:
        if isinstance(layer, (IP, IPv6)):
            return layer
        layer = layer.payload
    return None


out = {"packets": 0, "vxlan6": 0, "vxlan4": 0, "v6InV6": 0, "v6InV4": 0, "v4InV6": 0,
       "clearV6": 0, "vnis": [], "outer6": []}
with PcapReader(pcap) as packets:
    for p in packets:
        out["packets"] += 1
        outer = outermost_ip(p)
        if outer is None:
            continue
        if isinstance(outer, IPv6) and {outer.src, outer.dst} == pods:
            out["clearV6"] += 1
            continue
        if UDP not in outer or port not in (outer[UDP].sport, outer[UDP].dport):
            continue
        if VXLAN not in outer[UDP]:
            continue
        six = isinstance(outer, IPv6)
        out["vxlan6" if six else "vxlan4"] += 1
        vx = outer[UDP][VXLAN]
        if vx.vni not in out["vnis"]:
            out["vnis"].append(vx.vni)
        inner = vx.payload
        if IPv6 in inner:
            i6 = inner[IPv6]
            if {i6.src, i6.dst} == pods and marker in raw(i6.payload):
                if six:
                    out["v6InV6"] += 1
                    pair = [outer.src, outer.dst]
                    if pair not in out["outer6"]:
                        out["outer6"].append(pair)
                else:
                    out["v6InV4"] += 1
        elif IP in inner and six:
            out["v4InV6"] += 1
print(json.dumps(out))
