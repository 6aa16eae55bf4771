"""Counts IPv4 route events of one routing protocol in the current network namespace, as they
happen, and prints a line when the count reaches each target (run inside the namespace by
bench/bgp.py: `ip netns exec NS python3 route_events.py PROTO`).

Reads the kernel's route notifications (rtnetlink group RTMGRP_IPV4_ROUTE) on a raw socket
with a large receive buffer and looks at two header bytes per message, so it costs far less
than `ip monitor` (which formats every route) and far less than polling `ip route` (a dump of
10,000 routes takes ~25 ms). Times are taken when a batch of notifications is read.

stdin commands, one per line: `expect NAME TARGET` (the count to reach; below the current
count means counting down). stdout: `mark NAME UNIXTIME` once per target, and `ready` when the
socket is subscribed. A lost notification (ENOBUFS) is reported as `lost` and counting stops."""
import os
import select
import socket
import struct
import sys
import threading
import time

RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLMSG_HDR = struct.Struct("=IHHII")


def main():
    proto = int(sys.argv[1])
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
    s.bind((0, RTMGRP_IPV4_ROUTE))
    lock = threading.Lock()
    state = {"count": 0, "targets": {}, "done": set()}

    def commands():
        for line in sys.stdin:
            f = line.split()
            if len(f) == 3 and f[0] == "expect":
                with lock:
                    state["targets"][f[1]] = (int(f[2]), int(f[2]) > state["count"])
                    check(time.time())
        os._exit(0)

    def check(now):
        for name, (target, up) in state["targets"].items():
            c = state["count"]
            if name not in state["done"] and (c >= target if up else c <= target):
                state["done"].add(name)
                print("mark %s %.6f" % (name, now), flush=True)

    threading.Thread(target=commands, daemon=True).start()
    print("ready", flush=True)
    buf = bytearray(1 << 20)
    while True:
        select.select([s], [], [])
        try:
            n = s.recv_into(buf)
        except OSError:
            print("lost", flush=True)
            return
        now = time.time()
        off, delta = 0, 0
        while off + 16 <= n:
            length, kind, _, _, _ = NLMSG_HDR.unpack_from(buf, off)
            if length < 16:
                break
            # struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
            if kind in (RTM_NEWROUTE, RTM_DELROUTE) and buf[off + 16] == socket.AF_INET \
                    and buf[off + 16 + 5] == proto:
                delta += 1 if kind == RTM_NEWROUTE else -1
            off += (length + 3) & ~3
        if delta:
            with lock:
                state["count"] += delta
                check(now)


main()
