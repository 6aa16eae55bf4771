"""Forges one tunnel packet on an IPv6 underlay, as an attacker would, for
tests/ipv6_only_tunnel.rs: an ICMPv6 echo request from INNER_SRC to INNER_DST (its payload
MARKER, hex, repeated) sent from SRC to the tunnel of DST, in Flannel's udp framing (a UDP
datagram to PORT whose payload is the inner packet) or as ip6tnl sends it (next header 41,
the inner packet right after the outer IPv6 header, which the kernel writes). Standard
library only.

Usage: python3 forge.py udp|ipip SRC DST PORT INNER_SRC INNER_DST MARKER
"""
import socket
import struct
import sys

mode, src, dst, port, inner_src, inner_dst, marker = sys.argv[1:8]
a = socket.inet_pton(socket.AF_INET6, inner_src)
b = socket.inet_pton(socket.AF_INET6, inner_dst)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


icmp = struct.pack("!BBHHH", 128, 0, 0, 0x7777, 1) + bytes.fromhex(marker) * 8
pseudo = a + b + struct.pack("!I", len(icmp)) + b"\0\0\0\x3a"
icmp = icmp[:2] + struct.pack("!H", checksum(pseudo + icmp)) + icmp[4:]
inner = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 64) + a + b + icmp

if mode == "udp":
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.sendto(inner, (dst, int(port)))
elif mode == "ipip":
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 41)
    s.bind((src, 0))
    s.sendto(inner, (dst, 0))
else:
    sys.exit("mode must be udp or ipip")
