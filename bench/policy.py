#!/usr/bin/env python3
"""Driver for bench/policy.sh: network policy at scale in a 2-host twill lab (see the header
of policy.sh for the method). Started by policy.sh inside the lab's underlay netns (where etcd
listens); reaches the hosts and pods with setns() (sockets) and `ip netns exec` (tools).

Steps:
  setup  10 namespaces with labels; REAL_PODS pods through the twill plugin (CNI ADD run in
         the host netns as a runtime would, with K8S_POD_NAMESPACE/K8S_POD_NAME and
         runtimeConfig.labels); the rest of ENDPOINTS as endpoint records in etcd on fake
         nodes, in /24s of 10.244.0.0/16 that no host leases.
  scale  POLICIES NetworkPolicies written in as few etcd transactions as the lab's etcd takes
         (its default --max-txn-ops is 128); per host, the time from the commit to the nft
         transaction that installed them (NEWGEN events of NFNLGRP_NFTABLES, one netlink
         socket per host netns), to status.json showing them (written on a 1 s tick), and
         the agent's own lastApplyUs; the size of inet twill-policy.
  new    a new pod labelled role=client on h1 (CNI ADD), then from its ADD's return until its
         first TCP connection to the isolated server on h2 succeeds (a new non-blocking
         connect every 2 ms from inside the pod, each given 50 ms); also the first nft
         transaction on h2 and h2's status.json endpoint count; CNI DEL after each rep.
  tput   iperf3 -t T, 1 stream, client pod on h1 -> server pod on h2, REPS rounds of three
         states (order rotated each round): none (no policy), policy (the POLICIES in force;
         the server's ingress chain holds the rules of every policy selecting it, the one
         allowing the client last), iptables (twill's policies removed, IPT_RULES
         non-matching rules then an ACCEPT in a chain jumped to from FORWARD in h2's netns).
Environment: LAB_STATE, REPS (5), T (5), POLICIES (1000), ENDPOINTS (1000), REAL_PODS (20),
IPT_RULES (1000), SERVER_POLICIES (250: how many of the policies select the server pod).
"""
import base64
import ctypes
import errno
import ipaddress
import json
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.error

from benchlib import setns, LEASE_PREFIX, b64, etcd_post, lab_etcd, prefix_range, say

E = os.environ
STATE = json.load(open(E["LAB_STATE"]))
REPS = int(E.get("REPS", "5"))
T = int(E.get("T", "5"))
N_POL = int(E.get("POLICIES", "1000"))
N_EP = int(E.get("ENDPOINTS", "1000"))
N_REAL = int(E.get("REAL_PODS", "20"))
N_IPT = int(E.get("IPT_RULES", "1000"))
N_SRV_POL = int(E.get("SERVER_POLICIES", "250"))
LAB = STATE["name"]
HOSTS = {h["index"]: h for h in STATE["hosts"]}
ETCD, ETCD_TLS = lab_etcd(STATE)
TWILL = STATE["twill"]
N_NS = 10
PROBE_PORT = 7000
IPERF_PORT = 5201
POL_PREFIX = "/twill/policy/"
EP_PREFIX = "/twill/endpoints/"
NS_PREFIX = "/twill/namespaces/"
GOAL_PROGRAM, GOAL_NEW, GOAL_TPUT = 1.0, 0.100, 0.9

CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
NETLINK_NETFILTER, NFNLGRP_NFTABLES = 12, 7
NFT_MSG_NEWGEN = (10 << 8) | 15   # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWGEN (15)
SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, SO_RCVBUFFORCE = 270, 1, 33
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LISTENER = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            "s.bind(('0.0.0.0',%d))\ns.listen(4096)\nwhile True:\n c,_=s.accept()\n c.close()\n"
            % PROBE_PORT)


# ------------------------------------------------------------------ small helpers

def now():
    return time.perf_counter()


def ms(v):
    return "   -   " if v is None else "%7.1f ms" % (v * 1e3)


def mmm(v, f=ms):
    v = [x for x in v if x is not None]
    if not v:
        return "no samples"
    return "min %s  median %s  max %s  (n=%d)" % (f(min(v)), f(statistics.median(v)), f(max(v)),
                                                   len(v))


def run(cmd, timeout=60, check=True, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError("%s: rc %d: %s" % (" ".join(cmd[:6]), r.returncode,
                                              (r.stderr or r.stdout).strip()[-400:]))
    return r


def in_netns(netns, fn):
    """fn() run by this thread inside netns (sockets it makes stay there)."""
    me = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        setns("/run/netns/" + netns)
        return fn()
    finally:
        if LIBC.setns(me, CLONE_NEWNET) != 0:
            sys.exit("cannot return to the original netns")
        os.close(me)


# ------------------------------------------------------------------ etcd

TXN_OPS = [None]   # ops per transaction the lab's etcd accepts (None: not known yet)


def etcd(path, body, timeout=60):
    return etcd_post(ETCD, path, body, timeout, ETCD_TLS)


def txn(ops):
    """Writes ops ({"requestPut": ...} / {"requestDeleteRange": ...}) in as few transactions
    as etcd accepts. Returns (start, end, number of transactions)."""
    t0 = now()
    n = 0
    i = 0
    while i < len(ops):
        size = TXN_OPS[0] or len(ops)
        chunk = ops[i:i + size]
        try:
            r = etcd("/v3/kv/txn", {"success": chunk}, timeout=120)
        except urllib.error.HTTPError as e:
            msg = e.read().decode(errors="replace")
            if ("too many operations" in msg or "too large" in msg) and size > 1:
                TXN_OPS[0] = min(128, size // 2) if "too many" in msg else size // 2
                continue
            raise RuntimeError("etcd txn: %s" % msg[:300])
        if "succeeded" not in r and "header" not in r:
            raise RuntimeError("etcd txn: %s" % str(r)[:300])
        n += 1
        i += len(chunk)
    return t0, now(), n


def put_ops(kvs):
    return [{"requestPut": {"key": b64(k), "value": b64(json.dumps(v, separators=(",", ":")))}}
            for k, v in kvs]


def del_prefix(prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    t0 = now()
    etcd("/v3/kv/deleterange", {"key": b64(prefix), "range_end": b64(end)})
    return t0, now(), 1


def count_prefix(prefix):
    r = etcd("/v3/kv/range", prefix_range(prefix, count_only=True))
    return int(r.get("count", 0))


# ------------------------------------------------------------------ nft transactions per host

class GenWatch(threading.Thread):
    """Records the time of every nftables transaction (NEWGEN) in one netns."""

    def __init__(self, netns):
        super().__init__(daemon=True)
        self.sock = in_netns(netns, lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        self.sock.bind((0, 0))
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self.gens = []
        self.overflows = 0
        self.lock = threading.Lock()

    def run(self):
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    self.overflows += 1
                    continue
                return
            t = now()
            off = 0
            while off + 16 <= len(data):
                ln, typ = struct.unpack_from("=IH", data, off)
                if ln < 16:
                    break
                if typ == NFT_MSG_NEWGEN:
                    with self.lock:
                        self.gens.append(t)
                off += (ln + 3) & ~3

    def between(self, a, b):
        with self.lock:
            return [g for g in self.gens if a <= g <= b]


# ------------------------------------------------------------------ agents' status.json

def status(i):
    try:
        with open(os.path.join(HOSTS[i]["dataDir"], "status.json")) as f:
            return json.load(f).get("policy") or {}
    except (OSError, ValueError):
        return {}


def wait_status(i, pred, limit, poll=0.005):
    """Polls h<i>'s status.json until pred(policy status); returns (time, status) or
    (None, last status)."""
    path = os.path.join(HOSTS[i]["dataDir"], "status.json")
    t0 = now()
    seen = None
    st = {}
    while now() - t0 < limit:
        try:
            s = os.stat(path)
            key = (s.st_mtime_ns, s.st_size, s.st_ino)
        except OSError:
            key = None
        if key != seen:
            seen = key
            st = status(i)
            if pred(st):
                return now(), st
        time.sleep(poll)
    return None, st


# ------------------------------------------------------------------ pods through the plugin

POD_J = {1: 0, 2: 0}


def cni(command, host, netns, ident=None):
    h = HOSTS[host]
    conf = {"cniVersion": "1.1.0", "name": "lab", "type": "twill", "mode": STATE["podMode"],
            "dataDir": h["dataDir"]}
    args = ""
    if ident:
        ns, name, labels = ident
        conf["runtimeConfig"] = {"labels": labels}
        args = "K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s" % (ns, name)
    env = {"PATH": SYSTEM_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": netns,
           "CNI_NETNS": "/run/netns/" + netns, "CNI_IFNAME": "eth0", "CNI_ARGS": args,
           "CNI_PATH": os.path.dirname(TWILL)}
    t0 = now()
    r = subprocess.run(["ip", "netns", "exec", h["netns"], TWILL], input=json.dumps(conf),
                       env=env, capture_output=True, text=True, timeout=60)
    t1 = now()
    if r.returncode != 0:
        raise RuntimeError("CNI %s of %s on h%d: %s %s" % (command, netns, host, r.stdout.strip(),
                                                           r.stderr.strip()))
    ip = None
    if command == "ADD":
        ip = json.loads(r.stdout)["ips"][0]["address"].split("/")[0]
    return t0, t1, ip


def add_pod(host, ns, name, labels):
    POD_J[host] += 1
    netns = "twl-%s-h%d-p%d" % (LAB, host, POD_J[host])
    run(["ip", "netns", "add", netns])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    try:
        t0, t1, ip = cni("ADD", host, netns, (ns, name, labels))
    except Exception:
        run(["ip", "netns", "del", netns], check=False)
        raise
    return {"host": host, "ns": ns, "name": name, "labels": labels, "netns": netns, "ip": ip,
            "add": t1 - t0, "t_add": (t0, t1)}


def del_pod(p):
    t0, t1, _ = cni("DEL", p["host"], p["netns"], (p["ns"], p["name"], p["labels"]))
    run(["ip", "netns", "del", p["netns"]], check=False)
    return t1 - t0


# ------------------------------------------------------------------ the cluster's contents

def ns_name(k):
    return "ns%02d" % k


def ns_labels(k):
    return {"team": "team%d" % (k % 4), "env": "prod" if k % 2 == 0 else "staging",
            "kubernetes.io/metadata.name": ns_name(k)}


TIERS = ["web", "api", "db", "cache"]


def app_labels(a):
    return {"app": "app%02d" % a, "tier": TIERS[a % 4], "version": "v%d" % (1 + a % 2)}


def free_subnets(count):
    r = etcd("/v3/kv/range", prefix_range(LEASE_PREFIX, keys_only=True))
    taken = set()
    for kv in r.get("kvs", []):
        k = base64.b64decode(kv["key"]).decode()[len(LEASE_PREFIX):]
        a, _, n = k.partition("-")
        taken.add(ipaddress.ip_network("%s/%s" % (a, n)))
    out = []
    for s in reversed(list(ipaddress.ip_network("10.244.0.0/16").subnets(new_prefix=24))):
        if not any(s.overlaps(t) for t in taken):
            out.append(s)
        if len(out) == count:
            return out, taken
    raise RuntimeError("no free /24s in 10.244.0.0/16")


def fake_endpoints(n):
    subnets, taken = free_subnets((n + 249) // 250)
    addrs = [str(s.network_address + 1 + k) for s in subnets for k in range(250)]
    eps = []
    for i in range(n):
        k = i % N_NS
        a = (i // N_NS) % 25
        ns = ns_name(k)
        name = "app%02d-%04d" % (a, i)
        eps.append((EP_PREFIX + "%s/%s" % (ns, name), {
            "namespace": ns, "name": name, "labels": dict(app_labels(a), **{"pod-template-hash": "h%03d" % (i % 97)}),
            "addresses": [addrs[i]], "node": "fake-node-%02d" % (i % 40), "interface": "fake%d" % i}))
    return eps, subnets, taken


def sel(match_labels=None, exprs=None):
    s = {}
    if match_labels:
        s["matchLabels"] = match_labels
    if exprs:
        s["matchExpressions"] = exprs
    return s


def pods_peer(pod=None, ns=None):
    p = {}
    if pod is not None:
        p["podSelector"] = pod
    if ns is not None:
        p["namespaceSelector"] = ns
    return {"pods": p}


def ipblock(cidr, except_=None):
    b = {"cidr": cidr}
    if except_:
        b["except"] = except_
    return {"ipBlock": b}


def port(p, proto="TCP", end=None):
    x = {"protocol": proto, "port": {"number": p}}
    if end:
        x["endPort"] = end
    return x


def netpol(ns, name, podsel, ingress=None, egress=None):
    types = ["Ingress"] + (["Egress"] if egress is not None else [])
    return (POL_PREFIX + "k8s/%s/%s" % (ns, name), {
        "kind": "NetworkPolicy", "name": name, "namespace": ns, "podSelector": podsel,
        "policyTypes": types, "ingress": ingress or [], "egress": egress or []})


def server_policy(i):
    """Policy i of those selecting the server (ns00, app=server, tier=web, role=server):
    ingress rules the client's connection (from ns01, role=client, to 5201/7000) never
    matches, so its SYN is looked up against every one of them."""
    a = i % 25
    sels = [sel({"tier": "web"}), sel(exprs=[{"key": "app", "operator": "In",
                                               "values": sorted(["server", "app%02d" % a])}]),
            sel({"role": "server"}), {}]
    rules = [
        {"peers": [pods_peer(sel({"app": "app%02d" % a})),
                   pods_peer(sel({"app": "app%02d" % ((a + 7) % 25)}), sel({"team": "team%d" % (i % 4)}))],
         "ports": [port(8000 + i % 900)]},
        {"peers": [ipblock("172.16.%d.0/24" % (i % 256), ["172.16.%d.128/28" % (i % 256)])],
         "ports": [port(9000 + i % 500, end=9010 + i % 500)]},
        {"peers": [pods_peer(sel({"role": "client"}), {})], "ports": [port(8443 + i % 50)]},
    ]
    return netpol("ns00", "srv-%04d" % i, sels[i % 4], ingress=rules[:1 + i % 3] if i % 3 else rules)


def other_policy(i, k):
    """A policy in namespace ns<k> (k >= 1) over the fake apps: the usual mix."""
    ns = ns_name(k)
    a = i % 25
    kind = i % 8
    if kind == 0 and k != 1:   # default deny + DNS egress (never in ns01, the clients')
        return netpol(ns, "deny-egress-%04d" % i, sel({"app": "app%02d" % a}), ingress=[],
                      egress=[{"peers": [ipblock("10.96.0.10/32")], "ports": [port(53, "UDP"), port(53)]},
                              {"peers": [pods_peer(sel({"app": "app%02d" % ((a + 1) % 25)}))],
                               "ports": [port(5432)]}])
    if kind == 1:
        return netpol(ns, "from-ns-%04d" % i, sel({"app": "app%02d" % a}), ingress=[
            {"peers": [pods_peer(None, sel({"env": "prod"}))], "ports": [port(8080)]}])
    if kind == 2:
        return netpol(ns, "tier-%04d" % i, sel(exprs=[{"key": "tier", "operator": "In",
                                                         "values": ["api", "db"]}]), ingress=[
            {"peers": [pods_peer(sel({"tier": "web"})), pods_peer(sel({"tier": "api"}), sel({"team": "team%d" % (k % 4)}))],
             "ports": [port(8000 + a, end=8100 + a)]}])
    if kind == 3:
        return netpol(ns, "cidr-%04d" % i, sel({"app": "app%02d" % a, "version": "v%d" % (1 + a % 2)}), ingress=[
            {"peers": [ipblock("10.%d.0.0/16" % (i % 200), ["10.%d.%d.0/24" % (i % 200, i % 256)])]},
            {"peers": [ipblock("192.168.%d.0/24" % (i % 256))], "ports": [port(443)]}])
    if kind == 4:
        return netpol(ns, "ports-%04d" % i, sel({"app": "app%02d" % a}), ingress=[
            {"ports": [port(9100 + a), port(9200 + a, "UDP")]}])
    if kind == 5:
        return netpol(ns, "monitoring-%04d" % i, sel(exprs=[{"key": "app", "operator": "Exists"}]), ingress=[
            {"peers": [pods_peer(sel({"app": "prometheus"}), sel({"team": "team%d" % (i % 4)}))],
             "ports": [port(9090), port(9091)]}])
    if kind == 6:
        return netpol(ns, "app-%04d" % i, sel({"app": "app%02d" % a}), ingress=[
            {"peers": [pods_peer(sel({"app": "app%02d" % ((a + 3) % 25)})),
                       pods_peer(sel({"app": "app%02d" % ((a + 5) % 25)})),
                       pods_peer(sel({"app": "app%02d" % a}), sel({"env": "staging"}))],
             "ports": [port(8000 + i % 500)]}])
    return netpol(ns, "mixed-%04d" % i, sel({"tier": TIERS[a % 4]}), ingress=[
        {"peers": [pods_peer(sel({"app": "app%02d" % a})), ipblock("100.64.%d.0/24" % (i % 256))],
         "ports": [port(7100 + a, end=7199 + a), port(53, "UDP")]}])


def all_policies():
    pols = [server_policy(i) for i in range(N_SRV_POL)]
    # the one that lets the clients in, last in every ordering (namespace, then name)
    pols.append(netpol("ns00", "zz-allow-clients", sel({"app": "server"}), ingress=[
        {"peers": [pods_peer(sel({"role": "client"}), {})],
         "ports": [port(IPERF_PORT), port(PROBE_PORT)]}]))
    rest = N_POL - len(pols)
    for i in range(rest):
        pols.append(other_policy(i, 1 + i % (N_NS - 1)))
    keys = [k for k, _ in pols]
    if len(set(keys)) != len(keys):
        raise RuntimeError("policy names collide")
    return pols


# ------------------------------------------------------------------ probes and tools

def connect_loop(netns, ip, port_, limit, interval=0.002, attempt=0.05):
    """From netns, a new non-blocking connect to ip:port every `interval` s (each given
    `attempt` s) until one completes; returns (time of success or None, attempts)."""
    def go():
        pending = {}
        t0 = now()
        nxt = t0
        tries = 0
        try:
            while True:
                t = now()
                if t - t0 > limit:
                    return None, tries
                if t >= nxt:
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    try:
                        s.connect((ip, port_))
                        pending[s.fileno()] = (s, t)
                    except BlockingIOError:
                        pending[s.fileno()] = (s, t)
                    except OSError:
                        s.close()
                    tries += 1
                    nxt = max(nxt + interval, t)
                for fd, (s, ts) in list(pending.items()):
                    if t - ts > attempt:
                        del pending[fd]
                        s.close()
                wait = max(0.0, nxt - now())
                if not pending:
                    time.sleep(wait)
                    continue
                _, w, _ = select.select([], [s for s, _ in pending.values()], [], wait)
                for s in w:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    tw = now()
                    if err == 0:
                        return tw, tries
                    del pending[s.fileno()]
                    s.close()
        finally:
            for s, _ in pending.values():
                s.close()
    return in_netns(netns, go)


def connect_times(netns, ip, port_, n=300):
    """n sequential TCP connects (handshake, then close) from netns; seconds each."""
    def go():
        out = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(1)
            t = now()
            try:
                s.connect((ip, port_))
                out.append(now() - t)
            except OSError:
                pass
            finally:
                s.close()
        return out
    return in_netns(netns, go)


def iperf(client, server_ip):
    r = run(["ip", "netns", "exec", client, "iperf3", "-c", server_ip, "-t", str(T), "-J",
             "--connect-timeout", "3000"], timeout=T + 60, check=False)
    try:
        j = json.loads(r.stdout)
        if "error" in j:
            return None, j["error"]
        return j["end"]["sum_received"]["bits_per_second"] / 1e9, None
    except (ValueError, KeyError) as e:
        return None, "iperf3: %s %s" % (e, (r.stderr or r.stdout)[-200:])


def nft_table(host):
    r = run(["ip", "netns", "exec", HOSTS[host]["netns"], "nft", "-j", "list", "table", "inet",
             "twill-policy"], timeout=60, check=False)
    if r.returncode != 0:
        return None
    items = json.loads(r.stdout)["nftables"]
    chains, sets, maps, rules, elems = {}, 0, 0, {}, 0
    dispatch = {}
    for it in items:
        if "chain" in it:
            chains[it["chain"]["name"]] = it["chain"]
            rules.setdefault(it["chain"]["name"], [])
        elif "set" in it:
            sets += 1
            elems += len(it["set"].get("elem", []))
        elif "map" in it:
            maps += 1
            m = it["map"]
            elems += len(m.get("elem", []))
            if m["name"].startswith("ingress-dispatch"):
                for e in m.get("elem", []):
                    try:
                        dispatch[e[0]] = list(e[1].values())[0]["target"]
                    except (AttributeError, KeyError, IndexError, TypeError):
                        pass
        elif "rule" in it:
            rules.setdefault(it["rule"]["chain"], []).append(it["rule"])
    return {"chains": len(chains), "sets": sets, "maps": maps, "elements": elems,
            "rules": sum(len(v) for v in rules.values()), "chain_rules": rules,
            "dispatch": dispatch, "bytes": len(r.stdout)}


def ingress_path(tab, ip):
    """Rules a new connection to ip meets in its ingress chain and the chains it jumps to."""
    if not tab or ip not in tab["dispatch"]:
        return None
    seen, todo, n = set(), [tab["dispatch"][ip]], 0
    while todo:
        c = todo.pop()
        if c in seen:
            continue
        seen.add(c)
        for r in tab["chain_rules"].get(c, []):
            n += 1
            for ex in r.get("expr", []):
                for verb in ("goto", "jump"):
                    if isinstance(ex, dict) and verb in ex:
                        todo.append(ex[verb]["target"])
    return n


# ------------------------------------------------------------------ the bench

class Bench:
    def __init__(self):
        self.watch = {i: GenWatch(HOSTS[i]["netns"]) for i in HOSTS}
        for w in self.watch.values():
            w.start()
        self.policies = []
        self.program = []   # per (re)application: per host commit -> nft transaction
        self.remove = []
        self.ipt_filter_existed = None

    # --- policies in and out, timed
    def _wait_applied(self, want, t_start, t_end, before):
        """After a commit: per host (time from commit end to the nft transaction that
        carried it, to status.json, lastApplyUs)."""
        out = {}
        for i in sorted(HOSTS):
            t_st, st = wait_status(i, lambda s: s.get("networkPolicies") == want and not s.get("error")
                                   and s.get("applied", 0) > before[i], 60)
            gens = self.watch[i].between(t_start, t_st or now())
            out[i] = {"nft": (gens[-1] - t_end) if (gens and t_st) else None,
                      "nft_from_first_write": (gens[-1] - t_start) if (gens and t_st) else None,
                      "status": (t_st - t_end) if t_st else None,
                      "lastApplyUs": st.get("lastApplyUs"), "applies": len(gens),
                      "error": st.get("error"), "ok": t_st is not None,
                      "overflow": self.watch[i].overflows}
        return out

    def put_policies(self, label):
        before = {i: status(i).get("applied", 0) for i in HOSTS}
        t0, t1, n = txn(put_ops(self.policies))
        res = self._wait_applied(len(self.policies), t0, t1, before)
        res["txn"] = (t1 - t0, n)
        self.program.append(res)
        self.say_apply("%s: %d policies written" % (label, len(self.policies)), res)
        return res

    def del_policies(self, label):
        before = {i: status(i).get("applied", 0) for i in HOSTS}
        t0, t1, n = del_prefix(POL_PREFIX)
        res = self._wait_applied(0, t0, t1, before)
        res["txn"] = (t1 - t0, n)
        self.remove.append(res)
        self.say_apply("%s: all policies deleted" % label, res)
        return res

    def say_apply(self, what, res):
        say("  %s (%d txn, %.1f ms); after the commit:" % (what, res["txn"][1], res["txn"][0] * 1e3))
        for i in sorted(HOSTS):
            r = res[i]
            say("    h%d: nft transaction %s (last of %d since the first write), status.json %s, "
                "lastApplyUs %s%s%s" % (i, ms(r["nft"]), r["applies"], ms(r["status"]),
                                       r["lastApplyUs"], "" if r["ok"] else "  <-- NOT APPLIED: %s" % r["error"],
                                       "  (netlink overflow: nft times may be early)" if r["overflow"] else ""))

    # --- iptables baseline in h2
    def ipt_on(self, client_ip, server_ip):
        h = HOSTS[2]["netns"]
        if self.ipt_filter_existed is None:
            r = run(["ip", "netns", "exec", h, "nft", "list", "tables"])
            self.ipt_filter_existed = "table ip filter" in r.stdout
        lines = ["*filter", ":TWB - [0:0]", "-A FORWARD -j TWB"]
        for k in range(N_IPT):
            lines.append("-A TWB -s 172.%d.%d.%d/32 -d %s -p tcp -m tcp --dport %d -j ACCEPT" % (
                16 + k // 65536 % 16, k // 256 % 256, k % 256, server_ip, 8000 + k % 1000))
        lines.append("-A TWB -s %s/32 -d %s -p tcp -m tcp --dport %d -j ACCEPT" % (
            client_ip, server_ip, IPERF_PORT))
        lines.append("COMMIT")
        run(["ip", "netns", "exec", h, "iptables-restore", "--noflush"], input="\n".join(lines) + "\n")
        r = run(["ip", "netns", "exec", h, "iptables", "-S", "TWB"])
        return len(r.stdout.splitlines()) - 1

    def ipt_counters(self):
        """(packets that entered TWB, packets its final ACCEPT took): with bridge netfilter
        on, routed packets to a bridged pod can cross FORWARD twice."""
        h = HOSTS[2]["netns"]
        fw = run(["ip", "netns", "exec", h, "iptables", "-L", "FORWARD", "-v", "-x", "-n"], check=False)
        tw = run(["ip", "netns", "exec", h, "iptables", "-L", "TWB", "-v", "-x", "-n"], check=False)
        try:
            jump = sum(int(ln.split()[0]) for ln in fw.stdout.splitlines() if " TWB " in " %s " % ln)
            last = int(tw.stdout.strip().splitlines()[-1].split()[0])
            return jump, last
        except (ValueError, IndexError):
            return None, None

    def ipt_off(self):
        h = HOSTS[2]["netns"]
        run(["ip", "netns", "exec", h, "iptables", "-D", "FORWARD", "-j", "TWB"], check=False)
        run(["ip", "netns", "exec", h, "iptables", "-F", "TWB"], check=False)
        run(["ip", "netns", "exec", h, "iptables", "-X", "TWB"], check=False)
        if self.ipt_filter_existed is False:   # leave h2 as it was: no empty base chains
            run(["ip", "netns", "exec", h, "nft", "delete", "table", "ip", "filter"], check=False)

    def main(self):
        say("lab %s: hosts %s; etcd %s; REPS=%d T=%ds POLICIES=%d ENDPOINTS=%d (%d real pods) "
            "SERVER_POLICIES=%d IPT_RULES=%d" % (
                LAB, ", ".join("h%d %s" % (i, HOSTS[i]["netns"]) for i in sorted(HOSTS)), ETCD,
                REPS, T, N_POL, N_EP, N_REAL, N_SRV_POL, N_IPT))
        # ---------------- setup
        t0 = now()
        txn(put_ops([(NS_PREFIX + ns_name(k), {"name": ns_name(k), "labels": ns_labels(k)})
                     for k in range(N_NS)]))
        real = [(2, "ns00", "server", {"app": "server", "tier": "web", "role": "server"}),
                (1, "ns01", "loadgen", {"app": "loadgen", "role": "client"})]
        for r in range(N_REAL - 2):
            k = [0, 2, 3, 4, 5, 6, 7, 8, 9][r % 9]
            a = (r * 7) % 25
            real.append((1 + r % 2, ns_name(k), "real-app%02d-%02d" % (a, r), app_labels(a)))
        pods = []
        for host, ns, name, labels in real:
            pods.append(add_pod(host, ns, name, labels))
        self.server, self.client = pods[0], pods[1]
        self.outsider = next(p for p in pods[2:] if p["host"] == 1)
        adds = [p["add"] for p in pods]
        say("setup: %d namespaces, %d pods by CNI ADD (ADD %s)" % (N_NS, len(pods), mmm(adds)))
        eps, subnets, taken = fake_endpoints(N_EP - len(pods))
        t_e0, t_e1, n = txn(put_ops(eps))
        say("setup: %d endpoint records on fake nodes in %s (hosts lease %s) written in %d txn "
            "(%d ops each at most), %.0f ms" % (len(eps), ", ".join(map(str, subnets)),
                                                ", ".join(map(str, sorted(taken))), n,
                                                TXN_OPS[0] or len(eps), (t_e1 - t_e0) * 1e3))
        for i in sorted(HOSTS):
            t, st = wait_status(i, lambda s: s.get("endpoints") == N_EP, 30)
            say("setup: h%d status.json: %s endpoints (%s)" % (i, st.get("endpoints"),
                                                               "ok" if t else "NOT ALL SEEN"))
        run(["ip", "netns", "exec", self.server["netns"], "sh", "-c",
             "iperf3 -s -D -p %d >/dev/null 2>&1" % IPERF_PORT])
        subprocess.Popen(["ip", "netns", "exec", self.server["netns"], "python3", "-c", LISTENER],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok, _ = connect_loop(self.client["netns"], self.server["ip"], PROBE_PORT, 5)
        if ok is None:
            raise RuntimeError("client %s cannot reach the server %s:%d without policy" % (
                self.client["ip"], self.server["ip"], PROBE_PORT))
        say("setup: server %s/%s %s on h2 (iperf3 :%d, listener :%d); client %s/%s %s on h1; "
            "outsider %s/%s %s on h1; %.1f s" % (
                self.server["ns"], self.server["name"], self.server["ip"], IPERF_PORT, PROBE_PORT,
                self.client["ns"], self.client["name"], self.client["ip"], self.outsider["ns"],
                self.outsider["name"], self.outsider["ip"], now() - t0))

        # ---------------- 1. scale
        say()
        say("== 1. %d policies over %d endpoints: commit -> programmed ==" % (N_POL, N_EP))
        self.policies = all_policies()
        size = sum(len(json.dumps(v)) for _, v in self.policies)
        say("  %d NetworkPolicies (%d select the server), %.0f kB of JSON" % (
            len(self.policies), N_SRV_POL + 1, size / 1e3))
        first = self.put_policies("scale")
        if not all(first[i]["ok"] for i in HOSTS):
            raise RuntimeError("policies not applied")
        tabs = {i: nft_table(i) for i in sorted(HOSTS)}
        for i in sorted(HOSTS):
            tb = tabs[i]
            if tb:
                say("  h%d inet twill-policy: %d chains, %d rules, %d sets + %d maps, %d elements "
                    "(nft -j %.0f kB)" % (i, tb["chains"], tb["rules"], tb["sets"], tb["maps"],
                                          tb["elements"], tb["bytes"] / 1e3))
        path_rules = ingress_path(tabs[2], self.server["ip"])
        say("  the server's ingress path on h2: %s rules (dispatch map -> its chains)" % path_rules)
        allowed, _ = connect_loop(self.client["netns"], self.server["ip"], PROBE_PORT, 5)
        denied, _ = connect_loop(self.outsider["netns"], self.server["ip"], PROBE_PORT, 1)
        say("  check: client -> server %s; outsider (no role=client) -> server %s" % (
            "connects" if allowed else "REFUSED (wrong!)",
            "blocked" if denied is None else "CONNECTS (wrong!)"))
        self.policy_check = (allowed is not None, denied is None)

        # ---------------- 2. new endpoint -> enforced on the other host
        say()
        say("== 2. new pod (role=client) on h1 -> its first TCP connection to the isolated server on h2 ==")
        new = []
        base_eps = status(2).get("endpoints")
        for k in range(1, REPS + 1):
            labels = {"app": "newclient", "role": "client"}
            POD_J[1] += 1
            netns = "twl-%s-h1-p%d" % (LAB, POD_J[1])
            run(["ip", "netns", "add", netns])
            run(["ip", "-n", netns, "link", "set", "lo", "up"])
            st_res = {}

            def watch_status(b=base_eps):
                st_res["t"], _ = wait_status(2, lambda s: s.get("endpoints") == b + 1, 5)
            th = threading.Thread(target=watch_status, daemon=True)
            th.start()
            a0, a1, ip = cni("ADD", 1, netns, ("ns01", "newclient-%d" % k, labels))
            t_ok, tries = connect_loop(netns, self.server["ip"], PROBE_PORT, 10)
            th.join()
            gens = self.watch[2].between(a0, a1 + 10)
            g = (gens[0] - a1) if gens else None
            r = {"add": a1 - a0, "conn": (t_ok - a1) if t_ok else None,
                 "h2nft": g, "h2status": (st_res["t"] - a1) if st_res.get("t") else None}
            new.append(r)
            say("  rep %d %s: ADD %s; ADD return -> connected %s (%d attempts); h2 first nft "
                "transaction %s, h2 status.json +1 endpoint %s" % (
                    k, ip, ms(r["add"]), ms(r["conn"]), tries, ms(r["h2nft"]), ms(r["h2status"])))
            p = {"host": 1, "ns": "ns01", "name": "newclient-%d" % k, "labels": labels,
                 "netns": netns}
            del_pod(p)
            t, _ = wait_status(2, lambda s, b=base_eps: s.get("endpoints") == b, 10)
            if t is None:
                say("  warning: h2 still counts the deleted pod's endpoint")
            time.sleep(0.2)
        self.new = new

        # ---------------- 3. throughput
        say()
        say("== 3. iperf3 1 stream h1 -> h2, T=%ds, states none / policy / iptables, %d rounds ==" % (T, REPS))
        self.del_policies("state none")
        tput = {"none": [], "policy": [], "iptables": []}
        conn = {"none": [], "policy": [], "iptables": []}
        states = ["none", "policy", "iptables"]
        have_pol = False
        for rep in range(REPS):
            order = states[rep % 3:] + states[:rep % 3]
            for s in order:
                if s == "policy":
                    self.put_policies("round %d state policy" % (rep + 1))
                    have_pol = True
                elif have_pol:
                    self.del_policies("round %d state %s" % (rep + 1, s))
                    have_pol = False
                nrules = None
                if s == "iptables":
                    nrules = self.ipt_on(self.client["ip"], self.server["ip"])
                ok, _ = connect_loop(self.client["netns"], self.server["ip"], PROBE_PORT, 5)
                if ok is None:
                    say("  round %d %s: client cannot connect; skipped" % (rep + 1, s))
                    g, err = None, "no connection"
                else:
                    c = connect_times(self.client["netns"], self.server["ip"], PROBE_PORT)
                    conn[s].append(statistics.median(c) if c else None)
                    g, err = iperf(self.client["netns"], self.server["ip"])
                if s == "iptables":
                    jump, last = self.ipt_counters()
                    self.ipt_off()
                tput[s].append(g)
                say("  round %d %-8s %s, new connection %s%s" % (
                    rep + 1, s, "%.2f Gbit/s" % g if g else "failed: %s" % err,
                    "%.0f us" % (conn[s][-1] * 1e6) if conn[s] and conn[s][-1] else "-",
                    " (chain TWB: %d rules; packets into TWB %s, taken by its ACCEPT %s)" % (
                        nrules, jump, last) if nrules else ""))
        self.tput = tput
        self.conn = conn
        self.path_rules = path_rules
        self.tabs = tabs
        self.summary()

    def summary(self):
        say()
        say("== summary ==")
        say("1. %d policies, %d endpoints (policy JSON written in %d etcd txn):" % (
            N_POL, N_EP, self.program[0]["txn"][1]))
        for i in sorted(HOSTS):
            nft = [p[i]["nft"] for p in self.program]
            say("   h%d commit -> nft transaction in force  %s" % (i, mmm(nft)))
            say("   h%d   (from the first write)            %s" % (
                i, mmm([p[i]["nft_from_first_write"] for p in self.program])))
            say("   h%d lastApplyUs (compile+apply)         %s" % (
                i, mmm([p[i]["lastApplyUs"] / 1e6 for p in self.program if p[i]["lastApplyUs"]])))
            say("   h%d commit -> status.json shows them    %s" % (i, mmm([p[i]["status"] for p in self.program])))
            say("   h%d delete all -> nft transaction       %s" % (i, mmm([p[i]["nft"] for p in self.remove])))
        worst = [max(p[i]["nft"] for i in HOSTS) if all(p[i]["nft"] is not None for i in HOSTS) else None
                 for p in self.program]
        tb = self.tabs.get(2)
        if tb:
            say("   h2 table inet twill-policy: %d chains, %d rules, %d sets, %d maps, %d elements; "
                "server's ingress path %s rules" % (tb["chains"], tb["rules"], tb["sets"], tb["maps"],
                                                    tb["elements"], self.path_rules))
        say("2. new pod on h1 -> first connection to the server on h2 (from ADD return):")
        say("   connected             %s" % mmm([r["conn"] for r in self.new]))
        say("   h2 nft transaction    %s" % mmm([r["h2nft"] for r in self.new]))
        say("   h2 status.json +1     %s" % mmm([r["h2status"] for r in self.new]))
        say("   ADD itself            %s" % mmm([r["add"] for r in self.new]))
        say("3. iperf3 1 stream, Gbit/s:")
        g = lambda v: "%.2f" % v
        for s in ("none", "policy", "iptables"):
            say("   %-9s %s" % (s, mmm(self.tput[s], g)))
        med = {s: statistics.median([x for x in v if x]) if any(self.tput[s]) else None
               for s, v in self.tput.items()}
        rp = med["policy"] / med["none"] if med["policy"] and med["none"] else None
        ri = med["iptables"] / med["none"] if med["iptables"] and med["none"] else None
        per = ["%.2f" % (p / n) for p, n in zip(self.tput["policy"], self.tput["none"]) if p and n]
        us = lambda v: "%.0f us" % (v * 1e6)
        say("   TCP connect (handshake) from the client, median of 300 per round:")
        for s in ("none", "policy", "iptables"):
            say("   %-9s %s" % (s, mmm(self.conn[s], us)))
        say("   ratio of medians policy/none %s (per round %s), iptables/none %s" % (
            "%.3f" % rp if rp else "-", " ".join(per), "%.3f" % ri if ri else "-"))
        say()
        say("== goals ==")
        ok1 = all(w is not None for w in worst) and max(worst) < GOAL_PROGRAM
        wf = [max(p[i]["nft_from_first_write"] for i in HOSTS)
              if all(p[i]["nft_from_first_write"] is not None for i in HOSTS) else None for p in self.program]
        okf = all(w is not None for w in wf) and max(wf) < GOAL_PROGRAM
        vals = lambda v: "median %s, max %s" % (ms(statistics.median([w for w in v if w is not None])),
                                                ms(max([w for w in v if w is not None]))) if any(v) else "-"
        say("%d policies programmed on both hosts after the (last) commit: %s (goal < 1 s: %s); "
            "from the first of the %d transactions: %s (%s)" % (
                N_POL, vals(worst), "MET" if ok1 else "NOT MET", self.program[0]["txn"][1], vals(wf),
                "MET" if okf else "NOT MET"))
        conns = [r["conn"] for r in self.new]
        ok2 = all(c is not None for c in conns) and statistics.median(conns) < GOAL_NEW
        say("new endpoint enforced on the other host (ADD return -> connected): median %s, max %s "
            "(goal < 100 ms: %s)" % (
                ms(statistics.median([c for c in conns if c is not None])) if any(conns) else "-",
                ms(max([c for c in conns if c is not None])) if any(conns) else "-",
                "MET" if ok2 else "NOT MET"))
        say("throughput with %d policies / none: %s (goal >= 0.9: %s); iptables %d rules / none: %s" % (
            N_POL, "%.3f" % rp if rp else "-", "MET" if rp and rp >= GOAL_TPUT else "NOT MET",
            N_IPT, "%.3f" % ri if ri else "-"))
        if not all(self.policy_check):
            say("WARNING: the policy check failed (client allowed: %s, outsider blocked: %s)" %
                self.policy_check)


if __name__ == "__main__":
    Bench().main()
