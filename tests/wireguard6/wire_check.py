"""Decodes an underlay capture (tcpdump -w, any link type) of a dual-stack lab with WireGuard
and reports, as JSON, how pod IPv6 packets crossed the wire, for tests/wireguard6_lab.rs:

  wgTypes       WireGuard messages on the port (over UDP of either underlay family), by type
                (1 initiation, 2 response, 3 cookie, 4 transport); a UDP GSO super-datagram
                (captured on a veth before segmentation) counts as its segments
  notWireguard  datagrams on the port that are not well-formed WireGuard messages
  clearPod6     packets between hosts that must encrypt which carry a pod IPv6 packet in the
                clear: an outer IPv6 header between pod addresses, or anywhere in the payload
                (VXLAN, udp, ipip) an IPv6 header between pod addresses whose payload length
                fits the rest
  marker        packets between such hosts whose bytes contain the marker
  clearAllowed  pod IPv6 packets seen in the clear between the host pairs allowed to be clear
  notIpv6       packets whose outer header is IPv4 (an IPv6-only underlay has none)

Usage: python3 wire_check.py PCAP PORT MARKER POD_NET6 [A-B ...]   (A-B: a pair of underlay
addresses, of either family, whose traffic may be clear)
"""
import ipaddress
import json
import sys

from scapy.all import IP, UDP, IPv6, PcapReader, raw

pcap, port, marker, pod_net6 = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
net6 = ipaddress.ip_network(pod_net6)
allowed = {frozenset(str(ipaddress.ip_address(a)) for a in p.split("-")) for p in sys.argv[5:]}
LENGTHS = {1: 148, 2: 92, 3: 64}


def in_pods(a):
    a = ipaddress.ip_address(a)
    return a.version == 6 and a in net6


def wireguard_messages(b):
    """The WireGuard messages of datagram b as [(type, length)], or None if it is not made
    of well-formed ones."""
    if len(b) < 4 or b[0] not in (1, 2, 3, 4) or b[1:4] != b"\0\0\0":
        return None
    if b[0] in LENGTHS:
        return [(b[0], len(b))] if len(b) == LENGTHS[b[0]] else None
    if len(b) < 32:
        return None
    size = b.find(b[:8], 32)
    if size < 0:
        return [(4, len(b))]
    segments = [b[i:i + size] for i in range(0, len(b), size)]
    if any(seg[:8] != b[:8] or len(seg) < 32 for seg in segments):
        return None
    return [(4, len(seg)) for seg in segments]


def embedded_pod_packet6(b):
    """True if b holds an IPv6 header between two pod addresses that fits b."""
    i = b.find(b"\x60")
    while 0 <= i <= len(b) - 40:
        h = b[i:i + 40]
        if h[0] >> 4 == 6:
            plen = int.from_bytes(h[4:6], "big")
            src = str(ipaddress.IPv6Address(h[8:24]))
            dst = str(ipaddress.IPv6Address(h[24:40]))
            if in_pods(src) and in_pods(dst) and i + 40 + plen <= len(b):
                return True
        i = b.find(b"\x60", i + 1)
    return False


def outermost_ip(p):
    layer = p
    while layer:
        if isinstance(layer, (IP, IPv6)):
            return layer
        layer = layer.payload
    return None


out = {"packets": 0, "wgTypes": {}, "notWireguard": [], "clearPod6": [], "marker": [],
       "clearAllowed": 0, "notIpv6": []}
with PcapReader(pcap) as packets:
    for p in packets:
        ip = outermost_ip(p)
        if ip is None:
            continue
        out["packets"] += 1
        pair = frozenset((str(ipaddress.ip_address(ip.src)), str(ipaddress.ip_address(ip.dst))))
        what = "%s > %s %s" % (ip.src, ip.dst, p.summary())
        clear = (in_pods(ip.src) and in_pods(ip.dst)) or embedded_pod_packet6(raw(ip.payload))
        if isinstance(ip, IP):
            out["notIpv6"].append(what)
        if UDP in ip and port in (ip[UDP].sport, ip[UDP].dport):
            messages = wireguard_messages(raw(ip[UDP].payload))
            if messages is None:
                out["notWireguard"].append(what)
            for t, _ in messages or []:
                out["wgTypes"][str(t)] = out["wgTypes"].get(str(t), 0) + 1
        if pair in allowed:
            out["clearAllowed"] += int(clear)
            continue
        if clear:
            out["clearPod6"].append(what)
        if marker in raw(ip):
            out["marker"].append(what)
for k in ("notWireguard", "clearPod6", "marker", "notIpv6"):
    out[k + "Count"] = len(out[k])
    out[k] = out[k][:5]   # examples are enough for a failure message
print(json.dumps(out))
