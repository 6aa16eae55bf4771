#!/usr/bin/env python3
"""Driver for bench/newlease.sh: time from a new node's lease in etcd to its route on every
host of a twill lab (and from the lease's deletion to the route's removal everywhere).

Started by newlease.sh inside the lab's underlay netns (where etcd listens). It reads the lab's
state.json, opens one rtnetlink socket per host netns (setns into the host, socket, setns back)
subscribed to IPv4 route events, and then per repetition:
  1. picks a /24 of the cluster network that no lease holds, and a fake lease for it
     (node newlease<k>, publicNet 192.168.100.<200+k>/24, backend vxlan, a fresh VTEP MAC);
  2. t0, PUT of the lease through etcd's v3 JSON gateway (the Put RPC; no process start-up);
  3. waits, with the sockets in select() and the hosts' status.json stat()ed every 5 ms, until
     every host has emitted RTM_NEWROUTE for the subnet with protocol 117 ("kernel") and lists
     the peer as programmed ("status");
  4. checks once with `ip -n <host> -j route show proto 117` that every host has the route;
  5. deletes the lease and measures the same until the route is gone on every host.
Reports min/median/max over the repetitions of the slowest host (and of the fastest), goal < 1 s.
Environment: LAB_STATE (state.json path), REPS (10), NL_WAIT (s, 30).
"""
import base64
import ctypes
import ipaddress
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time

from benchlib import setns, LEASE_PREFIX as PREFIX, b64, etcd_post, lab_etcd, prefix_range, say

E = os.environ
STATE = json.load(open(E["LAB_STATE"]))
REPS = int(E.get("REPS", "10"))
WAIT = float(E.get("NL_WAIT", "30"))
GOAL = 1.0
RTMGRP_IPV4_ROUTE = 0x40
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTA_DST = 1
PROTO = 117
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
ETCD, ETCD_TLS = lab_etcd(STATE)
HOSTS = sorted(STATE["hosts"], key=lambda h: h["index"])


def etcd(path, body):
    return etcd_post(ETCD, path, body, 30, ETCD_TLS)


def leased_subnets():
    r = etcd("/v3/kv/range", prefix_range(PREFIX, keys_only=True))
    out = set()
    for kv in r.get("kvs", []):
        k = base64.b64decode(kv["key"]).decode()
        a, _, n = k[len(PREFIX):].partition("-")
        out.add("%s/%s" % (a, n))
    return out


def route_socket(netns):
    """An rtnetlink socket in netns, subscribed to IPv4 route events."""
    me = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        setns("/run/netns/" + netns)
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((0, RTMGRP_IPV4_ROUTE))
        s.setblocking(False)
    finally:
        if LIBC.setns(me, CLONE_NEWNET) != 0:
            sys.exit("cannot return to the original netns")
        os.close(me)
    return s


def route_events(sock):
    """(type, dst/len, protocol) of every route message waiting on sock."""
    out = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            return out
        off = 0
        while off + 16 <= len(data):
            ln, typ = struct.unpack_from("=IH", data, off)
            if ln < 16:
                break
            if typ in (RTM_NEWROUTE, RTM_DELROUTE) and ln >= 28:
                fam, dlen, _, _, table, proto = struct.unpack_from("=BBBBBB", data, off + 16)
                a = off + 28
                dst = None
                while a + 4 <= off + ln:
                    alen, atyp = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atyp == RTA_DST and fam == socket.AF_INET and alen >= 8:
                        dst = socket.inet_ntoa(data[a + 4:a + 8])
                    a += (alen + 3) & ~3
                if fam == socket.AF_INET and dst:
                    out.append((typ, "%s/%d" % (dst, dlen), proto))
            off += (ln + 3) & ~3


def status_has(path, subnet):
    """True/False whether status.json lists subnet as programmed; None if unreadable."""
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, ValueError):
        return None
    return any(p.get("subnet") == subnet and p.get("programmed") for p in st.get("peers", []))


def wait_all(socks, subnet, adding, t0):
    """Times (from t0) per host of the kernel event and of status.json, or None on timeout."""
    want = RTM_NEWROUTE if adding else RTM_DELROUTE
    kern = {h["index"]: None for h in HOSTS}
    stat = {h["index"]: None for h in HOSTS}
    files = {h["index"]: os.path.join(h["dataDir"], "status.json") for h in HOSTS}
    seen = {i: None for i in files}
    by_fd = {s.fileno(): i for i, s in socks.items()}
    while True:
        r, _, _ = select.select(list(socks.values()), [], [], 0.005)
        now = time.perf_counter()
        for s in r:
            i = by_fd[s.fileno()]
            for typ, dst, proto in route_events(s):
                if typ == want and dst == subnet and proto == PROTO and kern[i] is None:
                    kern[i] = now - t0
        for i, f in files.items():
            if stat[i] is not None:
                continue
            try:
                st = os.stat(f)
            except OSError:
                continue
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == seen[i]:
                continue
            seen[i] = key
            has = status_has(f, subnet)
            if has is not None and has == adding:
                stat[i] = time.perf_counter() - t0
        if all(v is not None for v in kern.values()) and all(v is not None for v in stat.values()):
            return kern, stat
        if now - t0 > WAIT:
            return kern, stat


def kernel_has(subnet):
    out = {}
    for h in HOSTS:
        r = subprocess.run(["ip", "-n", h["netns"], "-j", "route", "show", "proto", str(PROTO)],
                           capture_output=True, text=True, timeout=30)
        routes = json.loads(r.stdout or "[]")
        out[h["index"]] = any(x.get("dst") == subnet for x in routes)
    return out


def fmt(v):
    return "   -   " if v is None else "%6.1f ms" % (v * 1e3)


def agg(d):
    v = list(d.values())
    return None if any(x is None for x in v) else max(v)


def main():
    say("lab %s: %d hosts, backend %s, etcd %s; %d repetitions" % (
        STATE["name"], len(HOSTS), STATE["backend"], ETCD, REPS))
    socks = {h["index"]: route_socket(h["netns"]) for h in HOSTS}
    net = ipaddress.ip_network("10.244.0.0/16")
    cands = [str(s) for s in reversed(list(net.subnets(new_prefix=24)))]
    taken = leased_subnets()
    free = [c for c in cands if c not in taken]
    written = []
    res = {"add_k": [], "add_s": [], "add_first": [], "del_k": [], "del_s": []}
    try:
        for k in range(1, REPS + 1):
            subnet = free[k - 1]
            key = PREFIX + subnet.replace("/", "-")
            lease = {"node": "newlease%d" % k, "subnet": subnet,
                     "publicNet": "192.168.100.%d/24" % (200 + k), "backend": "vxlan",
                     "vtepMac": "02:fe:00:00:%02x:%02x" % (os.getpid() & 255, k)}
            for s in socks.values():
                route_events(s)   # drop anything stale
            t0 = time.perf_counter()
            etcd("/v3/kv/put", {"key": b64(key), "value": b64(json.dumps(lease))})
            written.append(key)
            kern, stat = wait_all(socks, subnet, True, t0)
            ok = kernel_has(subnet)
            ka, sa = agg(kern), agg(stat)
            got = [v for v in kern.values() if v is not None]
            first = min(got) if got else None
            say("rep %2d %s add: all hosts kernel %s, status %s; first host %s; per host %s%s" % (
                k, subnet, fmt(ka), fmt(sa), fmt(first),
                " ".join("h%d=%s" % (i, fmt(v).strip()) for i, v in kern.items()),
                "" if all(ok.values()) else "  <-- route missing on %s" % [
                    "h%d" % i for i, v in ok.items() if not v]))
            if ka is not None and all(ok.values()):
                res["add_k"].append(ka)
                res["add_first"].append(first)
            if sa is not None:
                res["add_s"].append(sa)
            for s in socks.values():
                route_events(s)
            t0 = time.perf_counter()
            etcd("/v3/kv/deleterange", {"key": b64(key)})
            written.remove(key)
            kern, stat = wait_all(socks, subnet, False, t0)
            ok = kernel_has(subnet)
            kd, sd = agg(kern), agg(stat)
            say("rep %2d %s del: all hosts kernel %s, status %s%s" % (
                k, subnet, fmt(kd), fmt(sd),
                "" if not any(ok.values()) else "  <-- route still on %s" % [
                    "h%d" % i for i, v in ok.items() if v]))
            if kd is not None and not any(ok.values()):
                res["del_k"].append(kd)
            if sd is not None:
                res["del_s"].append(sd)
    finally:
        for key in written:   # leave no fake lease behind
            etcd("/v3/kv/deleterange", {"key": b64(key)})
    say()
    say("== summary: new lease -> route on all %d hosts (%d repetitions) ==" % (len(HOSTS), REPS))
    labels = [("add_k", "lease PUT -> route on all hosts (kernel event)"),
              ("add_first", "lease PUT -> route on the first host"),
              ("add_s", "lease PUT -> all status.json programmed"),
              ("del_k", "lease DELETE -> route gone on all hosts"),
              ("del_s", "lease DELETE -> peer gone from all status.json")]
    for key, label in labels:
        v = res[key]
        if v:
            say("  %-48s min %s  median %s  max %s  (n=%d)" % (
                label, fmt(min(v)), fmt(statistics.median(v)), fmt(max(v)), len(v)))
        else:
            say("  %-48s no successful repetition" % label)
    say()
    say("== goal ==")
    v = res["add_k"]
    if len(v) == REPS:
        med, mx = statistics.median(v), max(v)
        say("new lease to routes on all %d hosts: median %.1f ms, max %.1f ms (goal < 1 s: %s)" % (
            len(HOSTS), med * 1e3, mx * 1e3, "MET" if mx < GOAL else "NOT MET"))
    else:
        say("new lease to routes on all %d hosts: %d of %d repetitions converged (goal < 1 s: NOT MET)" % (
            len(HOSTS), len(v), REPS))


if __name__ == "__main__":
    main()
