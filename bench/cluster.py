#!/usr/bin/env python3
"""Driver for bench/cluster.sh: pod-to-pod throughput and latency, twill vs a hand-built
kernel baseline of the same path, interleaved in one run.

Runs in the root namespace but only ever starts processes *inside* the lab's namespaces
(`ip netns exec`); it creates nothing itself. Subcommands:

  measure  --backend B --log FILE --twill SRC DST IP --base SRC DST IP [--agents PID,PID]
           [--extra NAME SRC DST IP [--extra-agents PID,PID]]
           REPS repetitions (env REPS, default 5); in each, for every metric, twill and the
           baseline back to back (odd reps twill first, even reps baseline first; with a
           second baseline, --extra, the order rotates by one each rep). Metrics:
             tcp1   iperf3 TCP, 1 stream, T s (env T, default 5), Gbit/s received
             tcp4   iperf3 TCP, 4 streams (-P 4)
                    Both also record CPU time per GB moved (GB: iperf3 -J
                    end.sum_received.bytes / 1e9): "total", the machine-wide busy time from
                    /proc/stat (user+nice+system+irq+softirq) across the client's run; and,
                    with --agents (the twill agents that run the udp/ipip/wireguard tunnel
                    engine), "agent", utime+stime of those processes (all threads) from
                    /proc/<pid>/stat across the same window (--extra-agents: the same for
                    the --extra side's processes, e.g. wireguard-go).
             rr     request/response round trip of 64-byte messages, median over LAT_S s
                    (env LAT_S, default 3) in microseconds; tool from env LAT_TOOL:
                    auto (sockperf TCP ping-pong if installed, else python), python,
                    sockperf, ping (ICMP, -i 0.002 -c 1000, avg rtt)
           Every row is appended to FILE as one JSON line.
  join     --backend B --log FILE --lab NAME --twill TWILL --host K --from I
           JOIN_REPS times (env, default 5): stop host K's agent, `twill node leave` it, wait
           until host I no longer lists it, start the agent again (its own command line) and
           time from its start to the first reply of a ping every 10 ms from host I's first
           pod to host K's first pod; one "join" row (ms) per rep
  report   FILE...   the summary: min/median/max per side, ratio of medians, per-rep
           ratios, CPU s/GB, goals (GOALS: host-gw and vxlan vs the same kernel path,
           throughput ratio >= 0.95, latency ratio <= 1.05; udp and ipip vs kernel VXLAN,
           1-stream throughput >= 0.5, latency <= 2.0, 4 streams reported; wireguard vs
           kernel VXLAN, 1 stream >= 0.5, and vs wireguard-go (EXTRA_GOALS), 1 stream >= 2.0,
           latency <= 1.2; join < 1000 ms), and a side-by-side table of the medians of every
           backend. Backends named B-ipv6 (cluster.sh IP_FAMILY=dual) measured twill's IPv6
           pod path against the same IPv6 path by hand (goals as for B) with twill's IPv4
           path of the same pods as a further side, twill-ipv4 (ratio IPv6 / IPv4, no goal)
  rr-server IP PORT SECS      echo server for the python ping-pong (one connection)
  rr-client IP PORT SECS SIZE the python ping-pong client; prints JSON
"""
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time

from benchlib import say

# backend: (its baseline, {metric: goal for the ratio twill / baseline}); a throughput ratio
# must be >= its goal, a latency ratio <= it; None: the ratio is reported, with no goal
SAME_PATH = {"tcp1": 0.95, "tcp4": 0.95, "rr": 1.05}
VS_VXLAN = {"tcp1": 0.5, "tcp4": None, "rr": 2.0}
GOALS = {"host-gw": ("hand-built kernel routes", SAME_PATH),
         "vxlan": ("hand-built kernel VXLAN", SAME_PATH),
         "udp": ("hand-built kernel VXLAN", VS_VXLAN),
         "ipip": ("hand-built kernel VXLAN", VS_VXLAN),
         "wireguard": ("hand-built kernel VXLAN", {"tcp1": 0.5, "tcp4": None, "rr": None})}
# further baselines of a backend (measure's --extra side): [(side, its name, goals)]
EXTRA_GOALS = {"wireguard": [("wireguard-go", "hand-built wireguard-go",
                              {"tcp1": 2.0, "tcp4": None, "rr": 1.2})]}
# B-ipv6: twill's IPv6 pod path, against the same IPv6 path by hand, and twill's IPv4 path
# between the same pods alongside (informative)
IPV6 = "-ipv6"
GOALS_IPV6 = {"host-gw": ("hand-built IPv6 kernel routes", SAME_PATH),
              "vxlan": ("hand-built kernel VXLAN over IPv6", SAME_PATH),
              "udp": ("hand-built kernel VXLAN over IPv6", VS_VXLAN),
              "ipip": ("hand-built kernel VXLAN over IPv6", VS_VXLAN)}
EXTRA_IPV6 = [("twill-ipv4", "twill over IPv4", {"tcp1": None, "tcp4": None, "rr": None})]
# udp and ipip carry IPv6 pod packets on the same tunnel as IPv4 ones: at least 0.8x of
# twill's IPv4 throughput on the same backend (issue 15)
EXTRA_IPV6_TUNNEL = [("twill-ipv4", "twill over IPv4", {"tcp1": 0.8, "tcp4": 0.8, "rr": None})]
# join: time from a node's agent start to its first pod reply, ms (goal: below this)
JOIN_GOAL_MS = 1000


def base_of(backend):
    """The backend without its variant suffixes (-ipv6 pod path, -routed pods, -engine only)."""
    for suffix in (IPV6, "-routed", "-engine"):
        backend = backend.removesuffix(suffix)
    return backend


def goals_of(backend):
    """Baseline name and goals of a backend; variants (-routed pods, -engine only) share them,
    the IPv6 pod path (-ipv6) has its own baseline."""
    if backend.endswith(IPV6):
        return GOALS_IPV6.get(base_of(backend), ("IPv6 baseline", SAME_PATH))
    return GOALS.get(base_of(backend), ("baseline", SAME_PATH))


def extras_of(backend):
    """The backend's further baselines: [(side, name, goals)]."""
    if backend.endswith(IPV6):
        return EXTRA_IPV6_TUNNEL if base_of(backend) in ("udp", "ipip") else EXTRA_IPV6
    return EXTRA_GOALS.get(base_of(backend), [])


def sides_of(backend):
    """The sides a backend is measured on, twill first."""
    return ["twill", "baseline"] + [side for side, _, _ in extras_of(backend)]
METRICS = [("tcp1", "TCP 1 stream", "Gbit/s", "hi"),
           ("tcp4", "TCP 4 streams", "Gbit/s", "hi"),
           ("rr", "64 B round trip p50", "us", "lo")]
HERE = os.path.dirname(os.path.abspath(__file__))


def nsx(ns, argv, timeout, **kw):
    """Run argv inside netns ns, bounded by timeout (both `timeout` and subprocess)."""
    cmd = ["ip", "netns", "exec", ns, "timeout", "-k", "2", str(int(timeout))] + argv
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 10, **kw)


def nsx_bg(ns, argv, timeout):
    cmd = ["ip", "netns", "exec", ns, "timeout", "-k", "2", str(int(timeout))] + argv
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(p):
    if p.poll() is None:
        p.terminate()
    try:
        p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()


# ---------------------------------------------------------------- iperf3

TICK = os.sysconf("SC_CLK_TCK")


def busy_s():
    """Machine-wide busy CPU seconds so far: user+nice+system+irq+softirq of /proc/stat
    (guest time is inside user/nice; idle, iowait and steal are not ours)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:8]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK


def proc_cpu_s(pid):
    """utime+stime of process pid (all its threads) in seconds, or None once it is gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            rest = f.read().rsplit(")", 1)[1].split()   # after "pid (comm)": field 3 on
    except (OSError, IndexError):
        return None
    return (int(rest[11]) + int(rest[12])) / TICK


def cpu_sample(agents):
    return busy_s(), [proc_cpu_s(p) for p in agents]


def cpu_per_gb(before, after, nbytes):
    """The CPU fields of an iperf row: GB moved, total (and agent) CPU s and s/GB."""
    gb = nbytes / 1e9
    out = {"GB": round(gb, 3), "cpu_s": round(after[0] - before[0], 2)}
    if before[1]:
        a = [y - x for x, y in zip(before[1], after[1]) if x is not None and y is not None]
        out["agent_cpu_s"] = round(sum(a), 2) if len(a) == len(before[1]) else None
    if gb > 0:
        out["cpu_s_per_GB"] = round(out["cpu_s"] / gb, 3)
        if out.get("agent_cpu_s") is not None:
            out["agent_cpu_s_per_GB"] = round(out["agent_cpu_s"] / gb, 3)
    return out


def iperf(src, dst, ip, streams, secs, agents=()):
    """Gbit/s received, sender retransmits and CPU per GB moved (see cpu_per_gb; agents:
    pids whose CPU time counts as "agent"), or (None, error)."""
    for attempt in range(3):
        port = random.randint(5300, 5899)
        srv = nsx_bg(dst, ["iperf3", "-s", "-1", "-B", ip, "-p", str(port)], secs + 30)
        time.sleep(0.4)
        before = cpu_sample(agents)
        c = nsx(src, ["iperf3", "-c", ip, "-p", str(port), "-t", str(secs), "-P",
                      str(streams), "-J"], secs + 20)
        after = cpu_sample(agents)
        stop(srv)
        try:
            d = json.loads(c.stdout)
        except ValueError:
            d = {"error": (c.stderr or c.stdout or "no output").strip()[-200:]}
        if "error" in d:
            err = d["error"]
            if "refused" in str(err) and attempt < 2:
                continue   # server not listening yet
            return None, {"error": err}
        e = d["end"]
        return (e["sum_received"]["bits_per_second"] / 1e9,
                {"retr": e.get("sum_sent", {}).get("retransmits"),
                 **cpu_per_gb(before, after, e["sum_received"]["bytes"])})
    return None, {"error": "iperf3 server never listened"}


# ---------------------------------------------------------------- latency

def lat_tool():
    t = os.environ.get("LAT_TOOL", "auto")
    if t == "auto":
        t = "sockperf" if shutil.which("sockperf") else "python"
    if t not in ("python", "sockperf", "ping"):
        sys.exit("LAT_TOOL must be auto, python, sockperf or ping")
    return t


LAT_TOOL_DESC = {
    "python": "python TCP ping-pong (TCP_NODELAY, 64 B each way, blocking sockets, "
              "server in the destination pod, client in the source pod), median RTT",
    "sockperf": "sockperf TCP ping-pong -m 64 (server sr in the destination pod), "
                "median one-way latency x2 = RTT",
    "ping": "ping -i 0.002 -c 1000 -q (ICMP, 56 B payload), avg RTT",
}


def rr(src, dst, ip, secs, tool):
    port = random.randint(12000, 12999)
    if tool == "ping":
        c = nsx(src, ["ping", "-i", "0.002", "-c", "1000", "-q", ip], 60)
        m = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/([\d.]+)", c.stdout)
        loss = re.search(r"([\d.]+)% packet loss", c.stdout)
        if not m:
            return None, {"error": (c.stdout + c.stderr).strip()[-200:]}
        return float(m.group(1)) * 1e3, {"max_us": float(m.group(2)) * 1e3,
                                         "loss%": loss and loss.group(1)}
    if tool == "sockperf":
        srv = nsx_bg(dst, ["sockperf", "sr", "--tcp", "-i", ip, "-p", str(port)], secs + 30)
        time.sleep(0.7)
        c = nsx(src, ["sockperf", "pp", "--tcp", "-i", ip, "-p", str(port), "-t", str(secs),
                      "-m", "64"], secs + 20)
        stop(srv)
        out = c.stdout + c.stderr
        p50 = re.findall(r"percentile 50\.000 =\s*([\d.]+)", out)
        p99 = re.findall(r"percentile 99\.000 =\s*([\d.]+)", out)
        if not p50:
            return None, {"error": out.strip()[-200:]}
        return 2 * float(p50[-1]), {"p99_us": 2 * float(p99[-1]) if p99 else None}
    me = os.path.abspath(__file__)
    srv = nsx_bg(dst, ["python3", me, "rr-server", ip, str(port), str(secs + 20)], secs + 30)
    c = nsx(src, ["python3", me, "rr-client", ip, str(port), str(secs), "64"], secs + 25)
    stop(srv)
    try:
        d = json.loads(c.stdout)
    except ValueError:
        return None, {"error": (c.stderr or c.stdout or "no output").strip()[-200:]}
    return d["p50_us"], {"p99_us": round(d["p99_us"], 1), "n": d["n"]}


def rr_server(ip, port, secs):
    ls = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, port))
    ls.listen(1)
    ls.settimeout(secs)
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.settimeout(secs)
    while True:
        b = c.recv(65536)
        if not b:
            return
        c.sendall(b)


def rr_client(ip, port, secs, size):
    deadline = time.monotonic() + 5
    while True:
        try:
            s = socket.create_connection((ip, port), timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(5)
    msg = b"x" * size
    pc = time.perf_counter_ns

    def one():
        s.sendall(msg)
        got = 0
        while got < size:
            b = s.recv(size - got)
            if not b:
                raise RuntimeError("server closed")
            got += len(b)

    for _ in range(200):   # warm-up: connection, caches, ARP/neighbour entries
        one()
    rtts = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        t0 = pc()
        one()
        rtts.append(pc() - t0)
    s.close()
    rtts.sort()
    n = len(rtts)
    print(json.dumps({"n": n, "p50_us": rtts[n // 2] / 1e3,
                      "p99_us": rtts[min(n - 1, int(n * 0.99))] / 1e3,
                      "mean_us": sum(rtts) / n / 1e3}))


# ---------------------------------------------------------------- measure / report

def measure(argv):
    args = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--backend", "--log"):
            args[a[2:]] = argv[i + 1]
            i += 2
        elif a in ("--twill", "--base"):
            args[a[2:]] = argv[i + 1:i + 4]
            i += 4
        elif a == "--extra":
            args["extra"] = argv[i + 1:i + 5]
            i += 5
        elif a in ("--agents", "--extra-agents"):
            args[a[2:]] = [int(x) for x in argv[i + 1].split(",") if x]
            i += 2
        else:
            sys.exit("measure: unknown argument %s" % a)
    reps = int(os.environ.get("REPS", "5"))
    secs = int(os.environ.get("T", "5"))
    lat_s = int(os.environ.get("LAT_S", "3"))
    tool = lat_tool()
    say("latency tool: %s" % LAT_TOOL_DESC[tool])
    agents = args.get("agents", [])
    extra_agents = args.get("extra-agents", [])
    for pid in agents + extra_agents:
        if proc_cpu_s(pid) is None:
            sys.exit("measure: agent pid %d is not running" % pid)
        say("agent pid %d: %s, %s threads, %.2f s CPU so far" % (
            pid, open("/proc/%d/cmdline" % pid).read().replace("\0", " ").strip()[:200],
            len(os.listdir("/proc/%d/task" % pid)), proc_cpu_s(pid)))
    sides = {"twill": args["twill"], "baseline": args["base"]}
    pids = {"twill": agents}
    if "extra" in args:
        sides[args["extra"][0]] = args["extra"][1:]
        pids[args["extra"][0]] = extra_agents
    log = open(args["log"], "a")
    names = list(sides)
    for rep in range(1, reps + 1):
        shift = (rep - 1) % len(names)   # with two sides: odd reps twill first, even baseline
        order = names[shift:] + names[:shift]
        for key, label, unit, _ in METRICS:
            for side in order:
                src, dst, ip = sides[side]
                t0 = time.monotonic()
                mine = pids.get(side, ())
                if key == "tcp1":
                    v, extra = iperf(src, dst, ip, 1, secs, mine)
                elif key == "tcp4":
                    v, extra = iperf(src, dst, ip, 4, secs, mine)
                else:
                    v, extra = rr(src, dst, ip, lat_s, tool)
                row = {"backend": args["backend"], "rep": rep, "side": side, "metric": key,
                       "value": v, "tool": tool if key == "rr" else "iperf3", **extra}
                log.write(json.dumps(row) + "\n")
                log.flush()
                shown = "FAILED %s" % extra.get("error") if v is None else "%.2f %s" % (v, unit)
                more = " ".join("%s=%s" % (k, x) for k, x in extra.items() if k != "error")
                say("%-8s rep %d %-8s %-20s %s %s (%.1f s)" % (
                    args["backend"], rep, side, label, shown, more, time.monotonic() - t0))


# ---------------------------------------------------------------- join

def wait_until(what, ok, secs):
    """Polls ok() every 50 ms for up to secs; exits with what on timeout."""
    deadline = time.monotonic() + secs
    while not ok():
        if time.monotonic() > deadline:
            sys.exit("join: timed out after %d s waiting for %s" % (secs, what))
        time.sleep(0.05)


def peer_nodes(twill, host):
    """The nodes host (a state.json host) lists as peers in its `twill status --json`."""
    c = nsx(host["netns"], [twill, "status", "--data-dir", host["dataDir"], "--json"], 20)
    try:
        return {p["node"] for p in json.loads(c.stdout).get("peers", [])}
    except ValueError:
        return set()


def first_reply_at(pinger, secs):
    """Unix time of the first echo reply of a `ping -D` run, or None within secs."""
    deadline = time.monotonic() + secs
    for line in pinger.stdout:
        if "bytes from" in line:
            return float(line.split("]", 1)[0].lstrip("["))
        if time.monotonic() > deadline:
            break
    return None


def join(argv):
    args = {}
    for k, v in zip(argv[::2], argv[1::2]):
        if k not in ("--backend", "--log", "--lab", "--twill", "--host", "--from"):
            sys.exit("join: unknown argument %s" % k)
        args[k[2:]] = v
    reps = int(os.environ.get("JOIN_REPS", "5"))
    state_file = "/run/twill/lab/%s/state.json" % args["lab"]
    state = json.load(open(state_file))
    k, i, twill = int(args["host"]), int(args["from"]), args["twill"]
    host = next(h for h in state["hosts"] if h["index"] == k)
    src = next(h for h in state["hosts"] if h["index"] == i)
    dst_pod = next(p for p in state["pods"] if p["host"] == k)
    src_pod = next(p for p in state["pods"] if p["host"] == i)
    store = json.loads(subprocess.run([twill, "lab", "status", "--name", args["lab"], "--json"],
                                      capture_output=True, text=True, timeout=60,
                                      check=True).stdout)["storeArgs"]
    pid, agent = host["agentPid"], None   # agent: the Popen of an agent this started
    say("join: %s's agent restarted after `twill node leave`, ping every 10 ms from %s to %s"
        % (host["node"], src_pod["name"], dst_pod["ip"]))
    log = open(args["log"], "a")
    for rep in range(1, reps + 1):
        cmdline = open("/proc/%d/cmdline" % pid).read().split("\0")[:-1]
        os.kill(pid, 15)
        if agent is not None:
            agent.wait(10)   # our child: reaped, or it would linger as a zombie
        wait_until("%s's agent to exit" % host["node"], lambda: proc_cpu_s(pid) is None, 10)
        c = nsx(host["netns"], [twill, "node", "leave"] + store + ["--node-name", host["node"]],
                30)
        if c.returncode != 0:
            sys.exit("join: twill node leave failed: %s" % (c.stderr or c.stdout))
        wait_until("%s to drop %s" % (src["node"], host["node"]),
                   lambda: host["node"] not in peer_nodes(twill, src), 20)
        pinger = nsx_bg(src_pod["netns"], ["ping", "-D", "-n", "-i", "0.01", "-W", "1",
                                           "-w", "15", dst_pod["ip"]], 20)
        t0 = time.time()
        with open(host["log"], "a") as out:
            agent = subprocess.Popen(["ip", "netns", "exec", host["netns"]] + cmdline,
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                     start_new_session=True)
        pid = agent.pid
        at = first_reply_at(pinger, 15)
        stop(pinger)
        ms = None if at is None else round((at - t0) * 1e3, 1)
        row = {"backend": args["backend"], "rep": rep, "side": "twill", "metric": "join",
               "value": ms, "tool": "ping -i 0.01"}
        if ms is None:
            row["error"] = "no reply within 15 s"
        log.write(json.dumps(row) + "\n")
        log.flush()
        say("%-8s rep %d join: first pod reply %s after the agent started" % (
            args["backend"], rep, "NONE" if ms is None else "%.0f ms" % ms))
    # `lab status` and `lab down` find the agent that now runs.
    state = json.load(open(state_file))
    next(h for h in state["hosts"] if h["index"] == k)["agentPid"] = pid
    with open(state_file + ".tmp", "w") as f:
        json.dump(state, f, indent=2)
    os.replace(state_file + ".tmp", state_file)


def fmt(v):
    return "%.2f" % v if v < 100 else "%.1f" % v


def spread(label, side, v, unit):
    """One summary line: min/median/max of the values v of one side."""
    if v:
        say("  %-20s %-8s min %7s  median %7s  max %7s %s (n=%d)" % (
            label, side, fmt(min(v)), fmt(statistics.median(v)), fmt(max(v)), unit, len(v)))
    else:
        say("  %-20s %-8s no successful runs" % (label, side))


def field(rows, b, key, side, name="value"):
    """{rep: row[name]} for backend b, metric key, side: the rows where it is set."""
    return {r["rep"]: r[name] for r in rows if r["backend"] == b and r["metric"] == key
            and r["side"] == side and r.get(name) is not None}


def med(d):
    return statistics.median(d.values()) if d else None


CPU_FIELDS = [("cpu_s_per_GB", "CPU total"), ("agent_cpu_s_per_GB", "CPU agents")]


def cpu_report(rows, b):
    """CPU s/GB of the iperf runs of backend b: total per side, the agents' for twill (and
    for a further baseline's own processes)."""
    for key, label, _, _ in METRICS[:2]:
        per = {}
        for name, what in CPU_FIELDS:
            for side in sides_of(b):
                per[name, side] = field(rows, b, key, side, name)
                if per[name, side]:
                    spread("%s, %s" % (what, key), side, list(per[name, side].values()),
                           "s/GB")
        t = med(per["cpu_s_per_GB", "twill"])
        for side in sides_of(b)[1:]:
            base = med(per["cpu_s_per_GB", side])
            if t is None or base is None:
                continue
            agents = med(per["agent_cpu_s_per_GB", "twill"])
            theirs = med(per["agent_cpu_s_per_GB", side])
            say("  %s %s CPU per GB: total twill/%s %.2f (medians %.2f vs %.2f s/GB)%s%s" % (
                b, label, side, t / base, t, base,
                "; twill agents %.2f s/GB" % agents if agents is not None else "",
                "; %s processes %.2f s/GB" % (side, theirs) if theirs is not None else ""))


def side_by_side(rows, backends):
    """The medians of every backend in one table (each backend ran in its own lab)."""
    say("== side by side: medians (each backend in its own lab; its baseline built in it) ==")
    head = ["backend", "side", "tcp1 Gbit/s", "tcp4 Gbit/s", "rr us",
            "s/GB tcp1 total", "agents", "s/GB tcp4 total", "agents"]
    table = []
    for b in backends:
        names = {"twill": "twill", "baseline": goals_of(b)[0]}
        names.update({side: name for side, name, _ in extras_of(b)})
        for side in sides_of(b):
            cells = [med(field(rows, b, key, side)) for key, _, _, _ in METRICS]
            for key in ("tcp1", "tcp4"):
                cells += [med(field(rows, b, key, side, name)) for name, _ in CPU_FIELDS]
            name = names[side]
            table.append([b, name] + ["-" if c is None else fmt(c) for c in cells])
    widths = [max(len(r[i]) for r in table + [head]) for i in range(len(head))]
    for r in [head] + table:
        say("  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths))))


def compare(rows, b, base, base_name, goals, verdicts):
    """The lines of backend b, twill against side base (called base_name), per metric; the
    goal lines are also added to verdicts."""
    who = b if goals is SAME_PATH else "%s vs %s," % (b, base_name)
    for key, label, unit, better in METRICS:
        val = {side: field(rows, b, key, side) for side in ("twill", base)}
        fails = sum(1 for r in rows if r["backend"] == b and r["metric"] == key
                    and r["side"] in ("twill", base) and r["value"] is None)
        for side in ("twill", base):
            spread(label, side, list(val[side].values()), unit)
        if not val["twill"] or not val[base]:
            verdicts.append("%s %s: NO DATA" % (who, label))
            continue
        ratio = med(val["twill"]) / med(val[base])
        per = ["%.2f" % (val["twill"][k] / val[base][k])
               for k in sorted(val["twill"]) if k in val[base]]
        g = goals[key]
        if g is None:
            verdict = "reported, no goal"
        else:
            met = ratio >= g if better == "hi" else ratio <= g
            verdict = "goal %s %.2f: %s" % (">=" if better == "hi" else "<=", g,
                                             "MET" if met else "NOT MET")
        line = "%s %s: ratio of medians %.3f (%s); per-rep ratios %s%s" % (
            who, label, ratio, verdict, " ".join(per),
            "; %d failed runs" % fails if fails else "")
        say("  " + line)
        verdicts.append(line)


def join_report(rows, b, verdicts):
    """The join times of backend b, if it has any, against JOIN_GOAL_MS."""
    joins = [r for r in rows if r["backend"] == b and r["metric"] == "join"]
    if not joins:
        return
    ok = [r["value"] for r in joins if r["value"] is not None]
    spread("join to first pod reply", "twill", ok, "ms")
    if not ok:
        verdicts.append("%s join to first encrypted pod packet: NO DATA" % b)
        return
    worst = max(ok)
    line = "%s join to first encrypted pod packet: median %.0f ms, max %.0f ms (goal < %d ms " \
           "for every join: %s)%s" % (
               b, statistics.median(ok), worst, JOIN_GOAL_MS,
               "MET" if worst < JOIN_GOAL_MS and len(ok) == len(joins) else "NOT MET",
               "; %d failed joins" % (len(joins) - len(ok)) if len(ok) < len(joins) else "")
    say("  " + line)
    verdicts.append(line)


def report(files):
    rows = []
    for f in files:
        with open(f) as fh:
            rows += [json.loads(l) for l in fh if l.strip()]
    backends = []
    for r in rows:
        if r["backend"] not in backends:
            backends.append(r["backend"])
    verdicts = []
    tools = sorted({r["tool"] for r in rows if r["metric"] == "rr"})
    say("== summary: twill / baseline, same lab, same run (latency tool: %s) ==" %
        ", ".join(tools))
    for b in backends:
        base_name, goals = goals_of(b)
        say("-- %s (baseline: %s) --" % (b, base_name))
        compare(rows, b, "baseline", base_name, goals, verdicts)
        for side, name, extra_goals in extras_of(b):
            say("-- %s (baseline: %s) --" % (b, name))
            compare(rows, b, side, name, extra_goals, verdicts)
        cpu_report(rows, b)
        join_report(rows, b, verdicts)
    say()
    side_by_side(rows, backends)
    say()
    say("== goals ==")
    for v in verdicts:
        say(v)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "measure":
        measure(rest)
    elif cmd == "report":
        report(rest)
    elif cmd == "join":
        join(rest)
    elif cmd == "rr-server":
        rr_server(rest[0], int(rest[1]), float(rest[2]))
    elif cmd == "rr-client":
        rr_client(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
