"""Decodes an underlay capture (tcpdump -w, any link type) and reports, as JSON, what crossed
the wire during pod traffic, for tests/wireguard_lab.rs:

  wgTypes      WireGuard messages on the port, by type (1 initiation, 2 response, 3 cookie,
               4 transport)
  notWireguard datagrams on the port that are not well-formed WireGuard messages (type 1-4,
               reserved bytes zero, the exact length of types 1-3, type 4 at least 32 bytes);
               a UDP GSO super-datagram (captured on a veth before segmentation) counts as its
               segments: type-4 messages of one size, each with the same header (type and
               receiver index), the last one possibly shorter
  unpadded     type-4 messages whose encrypted part is not a multiple of 16 bytes (the
               whitepaper's padding, which hides packet sizes; receivers accept either)
  clearPod     packets between hosts that must encrypt which carry a pod packet in the
               clear: an outer IPv4 header between pod addresses, or, anywhere in the
               payload (VXLAN, udp, ipip), an IPv4 header with a valid checksum between pod
               addresses
  marker       packets between such hosts whose bytes contain the marker
  clearAllowed pod packets seen in the clear between the host pairs allowed to be clear

Usage: python3 wire_check.py PCAP PORT MARKER POD_NET [A-B ...]   (A-B: a pair of underlay
addresses whose traffic may be clear, e.g. same-subnet hosts with CrossSubnet encryption)
"""
import ipaddress
import json
import struct
import sys

from scapy.all import IP, UDP, PcapReader, raw

pcap, port, marker, pod_net = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), sys.argv[4]
net = ipaddress.ip_network(pod_net)
allowed = {frozenset(p.split("-")) for p in sys.argv[5:]}
LENGTHS = {1: 148, 2: 92, 3: 64}


def in_pods(a):
    return ipaddress.ip_address(a) in net


def wireguard_messages(b):
    """The WireGuard messages of datagram b as [(type, length)], or None if it is not made
    of well-formed ones (see notWireguard above)."""
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


def checksum_ok(h):
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s == 0xFFFF


def embedded_pod_packet(b):
    """True if b holds an IPv4 header (valid checksum) between two pod addresses."""
    i = b.find(b"\x45")
    while 0 <= i <= len(b) - 20:
        h = b[i:i + 20]
        src, dst = ".".join(map(str, h[12:16])), ".".join(map(str, h[16:20]))
        if in_pods(src) and in_pods(dst) and checksum_ok(h):
            return True
        i = b.find(b"\x45", i + 1)
    return False


out = {"packets": 0, "wgTypes": {}, "notWireguard": [], "clearPod": [], "marker": [],
       "clearAllowed": 0, "unpadded": 0}
with PcapReader(pcap) as packets:
    for p in packets:
        if IP not in p:
            continue
        ip = p[IP]
        out["packets"] += 1
        pair = frozenset((ip.src, ip.dst))
        what = "%s > %s %s" % (ip.src, ip.dst, p.summary())
        clear = (in_pods(ip.src) and in_pods(ip.dst)) or embedded_pod_packet(raw(ip.payload))
        if UDP in ip and port in (ip[UDP].sport, ip[UDP].dport):
            messages = wireguard_messages(raw(ip[UDP].payload))
            if messages is None:
                out["notWireguard"].append(what)
            for t, length in messages or []:
                out["wgTypes"][str(t)] = out["wgTypes"].get(str(t), 0) + 1
                out["unpadded"] += int(t == 4 and (length - 32) % 16 != 0)
        if pair in allowed:
            out["clearAllowed"] += int(clear)
            continue
        if clear:
            out["clearPod"].append(what)
        if marker in raw(ip):
            out["marker"].append(what)
for k in ("notWireguard", "clearPod", "marker"):
    out[k + "Count"] = len(out[k])
    out[k] = out[k][:5]   # examples are enough for a failure message
print(json.dumps(out))
