#!/usr/bin/env python3
"""Driver for bench/converge.sh: time for one twill agent to program N new VXLAN peers (and to
remove them) vs `ip -batch` + `bridge -batch` of the same kernel objects.

Started by converge.sh *inside* the agent's host netns (ip netns exec), where it reaches etcd
on the underlay. It only writes/deletes fake lease keys in that private etcd and runs
`ip -n`/`bridge -n` against the benchmark's own namespaces.

Environment (set by converge.sh): N, REPS, TWC_ETCD (http://ip:port), TWC_STATUS (agent's
status.json), TWC_HOST (agent netns), TWC_BASE (baseline netns), TWC_WORK (temp dir),
TWC_WRITER (gateway|etcdctl), TWC_WAIT (s per convergence), BASELINE_ONLY (1: no agent),
TWC_STEADY (s of the steady-state window, 0: none), TWC_AGENT_AFTER / TWC_AGENT_BEFORE (JSON
argv of the agent under test and, optionally, of the "before" agent it is compared with),
TWC_RESYNC_AFTER / TWC_RESYNC_BEFORE (the --resync interval each runs with, s; empty: unknown),
TWC_LIFE (timeout of an agent this driver starts).

The agent under test (TWILL) is already running when the driver starts. With a "before" agent
(TWILL_BEFORE) only one agent runs at a time, in the same netns with the same node name and
data dir (so the same lease): before a phase of the other binary the running agent gets
SIGTERM (it leaves the dataplane as it is, and there are no peers then), status.json is removed
and the other binary is started and waited for until inSync with the same subnet and 0 peers.

Per repetition (odd: twill first, even: baseline first; with a before agent, odd: twill,
before, baseline, even: baseline, before, twill):
  twill add     one etcd transaction of N puts; from just before the request until the agent's
                status.json lists N peers programmed (polled every 5 ms: stat, parse on change);
                then, once, `ip -n HOST route show proto 117 | wc -l` must be N (also counted:
                permanent neighbours and fdb entries on twill.1)
  twill rss     then VmRSS and VmHWM of the agent (/proc/PID/status; PID: the process whose
                exe is the agent's binary)
  twill steady  then, after 2 s to settle, TWC_STEADY s with nothing changing: the agent's
                CPU time (utime+stime, plus reaped children's, /proc/PID/stat) sampled every
                second: CPU s per s (mean and the busiest 1 s slice), CPU s per resync interval,
                and how often status.json was rewritten (once per reconcile, i.e. per resync);
                at the end status.json and the kernel must still show N peers / N routes
  twill delete  one transaction of N deletes; until status.json lists 0 peers, then 0 routes
  baseline add  wall time of `ip -n BASE -batch` (N routes + N neighbours) plus
                `bridge -n BASE -batch` (N fdb entries), on a hand-made VXLAN device
  baseline del  the same with deletes
"""
import json
import os
import statistics
import subprocess
import sys
import time

from benchlib import LEASE_PREFIX as PREFIX, b64, etcd_post, prefix_range, say

E = os.environ
N = int(E.get("N", "1000"))
REPS = int(E.get("REPS", "3"))
ETCD = E["TWC_ETCD"]
PKI = E.get("TWC_PKI", "")   # with TLS: ca.pem, client.pem, client-key.pem
TLS = None
CTL_TLS = []
if PKI:
    import ssl
    TLS = ssl.create_default_context(cafile=os.path.join(PKI, "ca.pem"))
    TLS.load_cert_chain(os.path.join(PKI, "client.pem"), os.path.join(PKI, "client-key.pem"))
    CTL_TLS = ["--cacert", os.path.join(PKI, "ca.pem"), "--cert", os.path.join(PKI, "client.pem"),
               "--key", os.path.join(PKI, "client-key.pem")]
STATUS = E.get("TWC_STATUS", "")
HOST = E["TWC_HOST"]
BASE = E["TWC_BASE"]
WORK = E["TWC_WORK"]
WRITER = E.get("TWC_WRITER", "gateway")
WAIT = float(E.get("TWC_WAIT", "120"))
BASELINE_ONLY = E.get("BASELINE_ONLY") == "1"
STEADY = float(E.get("TWC_STEADY", "0") or 0)
LIFE = E.get("TWC_LIFE", "3600")
GOAL = 2.0
POLL = 0.005
SETTLE = 2.0   # s after convergence before the steady-state window opens
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024.0


def agent_spec(which):
    argv = E.get("TWC_AGENT_" + which.upper(), "")
    if not argv:
        return None
    resync = E.get("TWC_RESYNC_" + which.upper(), "")
    return {"argv": json.loads(argv), "resync": int(resync) if resync else None,
            "log": os.path.join(WORK, "agent.log" if which == "after" else "agent-before.log")}


# "twill": the binary under test (TWILL), "before": the one it is compared with (TWILL_BEFORE)
AGENTS = {} if BASELINE_ONLY else {"twill": agent_spec("after"), "before": agent_spec("before")}
AGENTS = {k: v for k, v in AGENTS.items() if v}
RUNNING = "twill"   # converge.sh started the agent under test
CHILDREN = []       # agents started here (Popen of `timeout LIFE twill agent ...`)


def etcd(path, body, timeout=60):
    return etcd_post(ETCD, path, body, timeout, TLS)


def lease_count():
    r = etcd("/v3/kv/range", prefix_range(PREFIX, count_only=True))
    return int(r.get("count", 0))


def sh(argv, timeout=120):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def read_status():
    with open(STATUS) as f:
        return json.load(f)


# ---------------------------------------------------------------- the fake peers

def fake_peers(own):
    """N peers: distinct /24s of 10.128.0.0/9 other than the agent's own, underlay addresses
    from 192.168.77.11 on (vxlan does not need them to be reachable), distinct MACs."""
    peers = []
    k = 0
    while len(peers) < N:
        k += 1
        subnet = "10.%d.%d.0" % (128 + k // 256, k % 256)
        if subnet + "/24" == own:
            continue
        i = len(peers)
        j = i + 10
        pub = "192.168.%d.%d" % (77 + j // 250, j % 250 + 1)
        mac = "02:fe:%02x:%02x:%02x:%02x" % ((i >> 24) & 255, (i >> 16) & 255, (i >> 8) & 255,
                                             i & 255)
        lease = {"node": "fake%d" % i, "subnet": subnet + "/24", "publicNet": pub + "/24",
                 "backend": "vxlan", "vtepMac": mac}
        peers.append((subnet, pub, mac, PREFIX + "%s-24" % subnet,
                      json.dumps(lease, separators=(",", ":"))))
    return peers


def write_files(peers):
    """Baseline batch files and etcdctl txn files."""
    f = {}
    f["ip_add"] = "\n".join(
        ["neigh add %s lladdr %s dev bvx0 nud permanent" % (s, m) for s, _, m, _, _ in peers] +
        ["route add %s/24 via %s dev bvx0 onlink proto 117" % (s, s) for s, _, _, _, _ in peers])
    f["br_add"] = "\n".join("fdb add %s dev bvx0 dst %s self permanent" % (m, p)
                            for _, p, m, _, _ in peers)
    f["ip_del"] = "\n".join(
        ["route del %s/24 dev bvx0" % s for s, _, _, _, _ in peers] +
        ["neigh del %s dev bvx0" % s for s, _, _, _, _ in peers])
    f["br_del"] = "\n".join("fdb del %s dev bvx0 dst %s self" % (m, p) for _, p, m, _, _ in peers)
    # etcdctl txn (non-interactive): compares, blank, success ops, blank, failure ops, blank
    f["txn_put"] = "\n" + "\n".join("put %s %s" % (k, json.dumps(v))
                                    for _, _, _, k, v in peers) + "\n\n\n"
    f["txn_del"] = "\n" + "\n".join("del %s" % k for _, _, _, k, _ in peers) + "\n\n\n"
    paths = {}
    for name, text in f.items():
        paths[name] = os.path.join(WORK, name)
        with open(paths[name], "w") as fh:
            fh.write(text + ("\n" if not text.endswith("\n") else ""))
    return paths


def txn(peers, files, put):
    """One transaction of N puts (or deletes). Returns its wall time."""
    t0 = time.perf_counter()
    if WRITER == "etcdctl":
        with open(files["txn_put" if put else "txn_del"]) as fh:
            r = subprocess.run(["etcdctl", "--endpoints", ETCD] + CTL_TLS + ["txn"], stdin=fh,
                               capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, ETCDCTL_API="3"))
        if r.returncode != 0 or not r.stdout.startswith("SUCCESS"):
            raise RuntimeError("etcdctl txn failed: %s" % (r.stderr or r.stdout)[-300:])
    else:
        if put:
            ops = [{"requestPut": {"key": b64(k), "value": b64(v)}} for _, _, _, k, v in peers]
        else:
            ops = [{"requestDeleteRange": {"key": b64(k)}} for _, _, _, k, _ in peers]
        r = etcd("/v3/kv/txn", {"success": ops}, timeout=120)
        if not r.get("succeeded"):
            raise RuntimeError("txn not applied: %s" % str(r)[:300])
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the agent process

def agent_pid(side):
    """Pid of the running agent of side: the process whose exe is its binary (the binaries are
    copies in WORK, one per side, so this is unambiguous), or None."""
    exe = AGENTS[side]["argv"][0]
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.readlink("/proc/%s/exe" % d) == exe:
                    return int(d)
            except OSError:
                pass
    return None


def rss(pid):
    """(VmRSS, VmHWM) of pid in KiB, or (None, None)."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out.get("VmRSS"), out.get("VmHWM")


def cpu_ticks(pid):
    """(utime+stime, cutime+cstime) of pid in clock ticks (all threads; children once reaped)."""
    with open("/proc/%d/stat" % pid) as f:
        stat = f.read()
    rest = stat[stat.rindex(")") + 2:].split()   # fields from 3 (state) on
    return int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def stop_agent(side):
    pid = agent_pid(side)
    if pid is None:
        return
    os.kill(pid, 15)
    t0 = time.perf_counter()
    while os.path.exists("/proc/%d" % pid) and time.perf_counter() - t0 < 15:
        for c in CHILDREN:
            c.poll()   # reap the timeout wrapper (and so the agent) as soon as it exits
        time.sleep(0.05)
    if os.path.exists("/proc/%d" % pid):
        say("agent %s (pid %d) still there 15 s after SIGTERM: SIGKILL" % (side, pid))
        os.kill(pid, 9)


def use_agent(side, own):
    """Makes side's agent the running one (stopping the other first); False if it did not come
    up in sync with the same subnet and no peers."""
    global RUNNING
    if RUNNING == side:
        return True   # still running, or its crash shows in the phase's figures
    stop_agent(RUNNING)
    RUNNING = side
    try:
        os.unlink(STATUS)
    except FileNotFoundError:
        pass
    spec = AGENTS[side]
    log = open(spec["log"], "a")
    t0 = time.perf_counter()
    CHILDREN.append(subprocess.Popen(["timeout", LIFE] + spec["argv"], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    log.close()
    t, st = wait_status(lambda s: s.get("inSync"), t0, 60)
    st = st or {}
    ok = t is not None and st.get("subnet") == own and not st.get("peers")
    say("agent %s started (pid %s): %s, subnet %s, %d peers%s" % (
        side, agent_pid(side), "inSync after %.1f s" % t if t is not None else "NOT inSync in 60 s",
        st.get("subnet"), len(st.get("peers", [])),
        "" if ok else "  <-- expected inSync, subnet %s and 0 peers" % own))
    return ok


def steady(side):
    """CPU of the idle agent with N peers programmed over STEADY s (see the module doc); None if
    the agent is not running or exits meanwhile."""
    pid = agent_pid(side)
    if pid is None:
        return None
    try:
        return steady_window(side, pid)
    except OSError:   # /proc/PID is gone
        return None


def steady_window(side, pid):
    time.sleep(SETTLE)
    own0, kids0 = cpu_ticks(pid)
    t0 = time.perf_counter()
    prev, prev_t, peak, writes, last_key = own0 + kids0, t0, 0.0, 0, None
    try:
        s = os.stat(STATUS)
        last_key = (s.st_ino, s.st_mtime_ns)
    except OSError:
        pass
    end = t0 + STEADY
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        time.sleep(min(1.0, end - now))
        own, kids = cpu_ticks(pid)
        now = time.perf_counter()
        peak = max(peak, (own + kids - prev) / CLK_TCK / (now - prev_t))
        prev, prev_t = own + kids, now
        try:
            s = os.stat(STATUS)
            if (s.st_ino, s.st_mtime_ns) != last_key:
                last_key = (s.st_ino, s.st_mtime_ns)
                writes += 1
        except OSError:
            pass
    own, kids = cpu_ticks(pid)
    window = time.perf_counter() - t0
    cpu = (own + kids - own0 - kids0) / CLK_TCK
    st = read_status()
    r, _, _ = kernel_counts(HOST, "twill.1")
    resync = AGENTS[side]["resync"]
    return {"window": window, "cpu": cpu, "children": (kids - kids0) / CLK_TCK,
            "per_s": cpu / window, "peak": peak, "writes": writes, "resync": resync,
            "per_resync": cpu / window * resync if resync else None,
            "ok": programmed(st) == N and r == N, "programmed": programmed(st), "routes": r}


# ---------------------------------------------------------------- twill side

def wait_status(done, t0, wait=WAIT):
    """Poll status.json every 5 ms until done(status) or wait s. Returns (t, status)."""
    last_key = None
    st = None
    while True:
        now = time.perf_counter()
        try:
            s = os.stat(STATUS)
            key = (s.st_mtime_ns, s.st_size, s.st_ino)
            if key != last_key:
                last_key = key
                st = read_status()
                if done(st):
                    return time.perf_counter() - t0, st
        except (OSError, ValueError):
            pass   # mid-write or briefly missing: look again
        if now - t0 > wait:
            return None, st
        time.sleep(POLL)


def programmed(st):
    return sum(1 for p in st.get("peers", []) if p.get("programmed"))


def kernel_counts(ns, dev, proto=117):
    routes = sh(["ip", "-n", ns, "route", "show", "proto", str(proto)]).stdout.count("\n")
    neigh = sh(["ip", "-n", ns, "neigh", "show", "dev", dev, "nud", "permanent"]).stdout.count("\n")
    fdb = sum(1 for l in sh(["bridge", "-n", ns, "fdb", "show", "dev", dev]).stdout.splitlines()
              if " dst " in l)
    return routes, neigh, fdb


def twill_add(peers, files):
    t0 = time.perf_counter()
    tx = txn(peers, files, True)
    if BASELINE_ONLY:
        return {"t": None, "txn": tx, "leases": lease_count()}
    t, st = wait_status(lambda s: programmed(s) >= N, t0)
    r, n, f = kernel_counts(HOST, "twill.1")
    return {"t": t, "txn": tx, "routes": r, "neigh": n, "fdb": f,
            "peers": len((st or {}).get("peers", [])), "programmed": programmed(st or {}),
            "ok": t is not None and r == N}


def twill_del(peers, files):
    t0 = time.perf_counter()
    tx = txn(peers, files, False)
    if BASELINE_ONLY:
        return {"t": None, "txn": tx, "leases": lease_count()}
    t, st = wait_status(lambda s: not s.get("peers"), t0)
    r, n, f = kernel_counts(HOST, "twill.1")
    return {"t": t, "txn": tx, "routes": r, "neigh": n, "fdb": f,
            "peers": len((st or {}).get("peers", [])), "ok": t is not None and r == 0}


# ---------------------------------------------------------------- baseline side

def batch(ip_file, br_file):
    t0 = time.perf_counter()
    a = sh(["ip", "-n", BASE, "-batch", ip_file], timeout=300)
    t1 = time.perf_counter()
    b = sh(["bridge", "-n", BASE, "-batch", br_file], timeout=300)
    t2 = time.perf_counter()
    err = (a.stderr + b.stderr).strip()
    return t2 - t0, t1 - t0, t2 - t1, (a.returncode or b.returncode, err[-300:])


def base_add(files):
    t, ti, tb, (rc, err) = batch(files["ip_add"], files["br_add"])
    r, n, f = kernel_counts(BASE, "bvx0")
    return {"t": t, "ip": ti, "bridge": tb, "routes": r, "neigh": n, "fdb": f,
            "ok": rc == 0 and r == N and n == N and f == N, "err": err if rc else ""}


def base_del(files):
    t, ti, tb, (rc, err) = batch(files["ip_del"], files["br_del"])
    r, n, f = kernel_counts(BASE, "bvx0")
    return {"t": t, "ip": ti, "bridge": tb, "routes": r, "neigh": n, "fdb": f,
            "ok": rc == 0 and r == 0 and n == 0 and f == 0, "err": err if rc else ""}


# ---------------------------------------------------------------- main

def sec(x):
    return "   -    " if x is None else ("%7.3f s" % x)


def summary(label, tw, bs):
    tv = [x for x in tw if x is not None]
    bv = [x for x in bs if x is not None]
    for side, v in (("twill", tv), ("baseline", bv)):
        if v:
            say("  %-8s %-8s min %s  median %s  max %s  (n=%d)" % (
                label, side, sec(min(v)), sec(statistics.median(v)), sec(max(v)), len(v)))
        else:
            say("  %-8s %-8s no successful run" % (label, side))
    if not tv or not bv:
        return "%s: NO DATA" % label
    ratio = statistics.median(tv) / statistics.median(bv)
    per = " ".join("%.2f" % (a / b) if a is not None and b else "-" for a, b in zip(tw, bs))
    return "%s %d peers: twill %.3f s, baseline %.3f s, ratio of medians %.2f (goal <= %.1fx: %s); per-rep ratios %s" % (
        label, N, statistics.median(tv), statistics.median(bv), ratio, GOAL,
        "MET" if ratio <= GOAL else "NOT MET", per)


def main():
    own = None
    if not BASELINE_ONLY:
        st = read_status()
        own = st.get("subnet")
        say("agent: node %s subnet %s backend %s publicIp %s inSync %s, %d peers before" % (
            st.get("node"), own, st.get("backend"), st.get("publicIp"), st.get("inSync"),
            len(st.get("peers", []))))
    peers = fake_peers(own)
    files = write_files(peers)
    say("%d fake leases %s .. %s, writer: %s" % (
        N, peers[0][3], peers[-1][3],
        "etcd v3 JSON gateway POST /v3/kv/txn (one Txn RPC, no process start in the window)"
        if WRITER == "gateway" else "etcdctl txn < file (one Txn; includes etcdctl start-up)"))
    rows = []
    for rep in range(1, REPS + 1):
        order = ["twill", "baseline"] if rep % 2 else ["baseline", "twill"]
        if "before" in AGENTS:
            order.insert(1, "before")
        row = {"rep": rep}
        for side in order:
            if side != "baseline":
                if not twill_rep(rep, side, peers, files, own, row):
                    rows.append(row)
                    return report(rows)
            else:
                a = base_add(files)
                say("rep %d baseline add %s (ip -batch %.3f s + bridge -batch %.3f s) kernel: %d routes, %d neigh, %d fdb%s" % (
                    rep, sec(a["t"]), a["ip"], a["bridge"], a["routes"], a["neigh"], a["fdb"],
                    "" if a["ok"] else "  <-- FAILED " + a["err"]))
                d = base_del(files)
                say("rep %d baseline del %s (ip -batch %.3f s + bridge -batch %.3f s) kernel: %d routes, %d neigh, %d fdb%s" % (
                    rep, sec(d["t"]), d["ip"], d["bridge"], d["routes"], d["neigh"], d["fdb"],
                    "" if d["ok"] else "  <-- FAILED " + d["err"]))
                row["b_add"] = a["t"] if a["ok"] else None
                row["b_del"] = d["t"] if d["ok"] else None
                if not d["ok"]:
                    say("baseline did not clear; stopping")
                    rows.append(row)
                    return report(rows)
        rows.append(row)
    return report(rows)


# row keys per agent side: twill (the binary under test) keeps the original names
KEY = {"twill": {"add": "tw_add", "del": "tw_del", "txn_put": "txn_put", "txn_del": "txn_del",
                 "rss": "tw_rss", "hwm": "tw_hwm", "cpu": "tw_cpu", "cpu_resync": "tw_cpur"},
       "before": {"add": "bf_add", "del": "bf_del", "txn_put": "bf_txn_put",
                  "txn_del": "bf_txn_del", "rss": "bf_rss", "hwm": "bf_hwm", "cpu": "bf_cpu",
                  "cpu_resync": "bf_cpur"}}


def twill_rep(rep, side, peers, files, own, row):
    """One repetition of one agent (or of the etcd transactions alone): add, RSS, steady
    state, delete, into row. False if later repetitions would be wrong."""
    k = KEY[side]
    if not BASELINE_ONLY and not use_agent(side, own):
        say("agent %s did not come up clean; stopping" % side)
        return False
    a = twill_add(peers, files)
    say("rep %d %-8s add %s (etcd txn %.3f s) %s" % (
        rep, side, sec(a["t"]), a["txn"],
        "leases in etcd %d" % a["leases"] if BASELINE_ONLY else
        "status %d/%d programmed; kernel: %d routes proto 117, %d neigh, %d fdb%s" % (
            a["programmed"], a["peers"], a["routes"], a["neigh"], a["fdb"],
            "" if a["ok"] else "  <-- NOT CONVERGED / ROUTES != N")))
    if not BASELINE_ONLY:
        pid = agent_pid(side)
        vm, hwm = rss(pid) if pid else (None, None)
        if vm is not None:
            row[k["rss"]], row[k["hwm"]] = vm, hwm
        say("rep %d %-8s rss %s (pid %s, after the add)" % (
            rep, side, "VmRSS %.1f MiB, VmHWM %.1f MiB" % (vm / MIB, hwm / MIB)
            if vm is not None else "-  <-- agent process not found", pid))
        if STEADY > 0 and a["ok"]:
            sd = steady(side)
            if sd is None:
                say("rep %d %-8s steady -  <-- agent not running (exited?)" % (rep, side))
            else:
                say("rep %d %-8s steady %.1f s, nothing changing: CPU %.3f s = %.2f ms/s "
                    "(busiest 1 s: %.1f ms; reaped children %.3f s), %s, %d status.json "
                    "writes; then status %d programmed, kernel %d routes%s" % (
                        rep, side, sd["window"], sd["cpu"], sd["per_s"] * 1e3, sd["peak"] * 1e3,
                        sd["children"],
                        "%.1f ms per resync interval (%d s)" % (sd["per_resync"] * 1e3,
                                                                sd["resync"])
                        if sd["resync"] else "resync interval unknown",
                        sd["writes"], sd["programmed"], sd["routes"],
                        "" if sd["ok"] else "  <-- PEERS/ROUTES CHANGED"))
                row[k["cpu"]] = sd["per_s"]
                if sd["per_resync"] is not None:
                    row[k["cpu_resync"]] = sd["per_resync"]
    d = twill_del(peers, files)
    say("rep %d %-8s del %s (etcd txn %.3f s) %s" % (
        rep, side, sec(d["t"]), d["txn"],
        "leases in etcd %d" % d["leases"] if BASELINE_ONLY else
        "status %d peers; kernel: %d routes, %d neigh, %d fdb%s" % (
            d["peers"], d["routes"], d["neigh"], d["fdb"],
            "" if d["ok"] else "  <-- NOT CLEARED")))
    row[k["add"]] = a["t"] if a.get("ok") else None
    row[k["del"]] = d["t"] if d.get("ok") else None
    row[k["txn_put"]], row[k["txn_del"]] = a["txn"], d["txn"]
    if not BASELINE_ONLY and not d["ok"]:
        say("%s did not clear its peers; stopping (later reps would be wrong)" % side)
        return False
    return True


def report(rows):
    say()
    say("== summary: %d peers, twill agent vs ip -batch + bridge -batch, same run ==" % N)
    txp = [r["txn_put"] for r in rows if "txn_put" in r]
    txd = [r["txn_del"] for r in rows if "txn_del" in r]
    if txp:
        say("  etcd txn of %d puts: median %.3f s; of %d deletes: median %.3f s (inside the twill times)" % (
            N, statistics.median(txp), N, statistics.median(txd)))
    if BASELINE_ONLY:
        bv = [r.get("b_add") for r in rows if r.get("b_add") is not None]
        dv = [r.get("b_del") for r in rows if r.get("b_del") is not None]
        if bv:
            say("  BASELINE ONLY (no agent): add median %.3f s, delete median %.3f s" % (
                statistics.median(bv), statistics.median(dv) if dv else float("nan")))
        return 0
    goals = [summary("add", [r.get("tw_add") for r in rows], [r.get("b_add") for r in rows]),
             summary("delete", [r.get("tw_del") for r in rows], [r.get("b_del") for r in rows])]
    for k, tk, bk in (("add", "tw_add", "b_add"), ("delete", "tw_del", "b_del")):
        net = [r[tk] - r["txn_" + ("put" if k == "add" else "del")] for r in rows
               if r.get(tk) is not None]
        bv = [r[bk] for r in rows if r.get(bk) is not None]
        if net and bv:
            say("  (info) %s after the txn returned: twill median %.3f s, %.2fx the baseline" % (
                k, statistics.median(net), statistics.median(net) / statistics.median(bv)))
    for side in AGENTS:
        k = KEY[side]
        if side == "before":
            for label in ("add", "del"):
                v = [r[k[label]] for r in rows if r.get(k[label]) is not None]
                say("  %-8s %-8s %s" % ("add" if label == "add" else "delete", side, spread(v, sec)))
        say("  %-8s %-8s VmRSS %s" % ("rss", side, spread(col(rows, k["rss"]), mib)))
        say("  %-8s %-8s VmHWM %s" % ("rss", side, spread(col(rows, k["hwm"]), mib)))
        if STEADY > 0:
            say("  %-8s %-8s CPU %s" % ("steady", side, spread(col(rows, k["cpu"]), ms_per_s)))
            resync = AGENTS[side]["resync"]
            if resync:
                say("  %-8s %-8s CPU per resync interval (%d s) %s" % (
                    "steady", side, resync, spread(col(rows, k["cpu_resync"]), ms)))
    say()
    say("== goals ==")
    for g in goals:
        say(g)
    if "before" in AGENTS:
        say()
        say("== before (TWILL_BEFORE) vs after (TWILL), same run, ratio of medians after/before "
            "(< 1: the change made it smaller) ==")
        for what, key, fmt in (("add", "add", sec), ("delete", "del", sec),
                               ("VmRSS after add", "rss", mib), ("VmHWM after add", "hwm", mib),
                               ("steady CPU", "cpu", ms_per_s),
                               ("steady CPU per resync", "cpu_resync", ms)):
            say(compare(what, rows, KEY["before"][key], KEY["twill"][key], fmt))
    return 0


def col(rows, key):
    return [r[key] for r in rows if r.get(key) is not None]


def mib(kib):
    return "%.1f MiB" % (kib / MIB)


def ms_per_s(x):
    return "%.2f ms/s" % (x * 1e3)


def ms(x):
    return "%.1f ms" % (x * 1e3)


def spread(v, fmt):
    if not v:
        return "no data"
    return "min %s  median %s  max %s  (n=%d)" % (fmt(min(v)), fmt(statistics.median(v)),
                                                  fmt(max(v)), len(v))


def compare(what, rows, bkey, akey, fmt):
    bv, av = col(rows, bkey), col(rows, akey)
    if not bv or not av:
        return "%s: NO DATA (before n=%d, after n=%d)" % (what, len(bv), len(av))
    b, a = statistics.median(bv), statistics.median(av)
    per = " ".join("%.2f" % (r[akey] / r[bkey]) if r.get(akey) is not None and r.get(bkey)
                   else "-" for r in rows)
    return "%s %d peers: before %s, after %s, after/before %s; per-rep %s" % (
        what, N, fmt(b).strip(), fmt(a).strip(), "%.2f" % (a / b) if b else "-", per)


if __name__ == "__main__":
    sys.exit(main())
