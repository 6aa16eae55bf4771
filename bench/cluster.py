#!/usr/bin/env python3
"""Driver for bench/cluster.sh: pod-to-pod throughput and latency, twill vs a hand-built
kernel baseline of the same path, interleaved in one run.

Runs in the root namespace but only ever starts processes *inside* the lab's namespaces
(`ip netns exec`); it creates nothing itself. Subcommands:

  measure  --backend B --log FILE --twill SRC DST IP --base SRC DST IP
           REPS repetitions (env REPS, default 5); in each, for every metric, twill and the
           baseline back to back (odd reps twill first, even reps baseline first). Metrics:
             tcp1   iperf3 TCP, 1 stream, T s (env T, default 5), Gbit/s received
             tcp4   iperf3 TCP, 4 streams (-P 4)
             rr     request/response round trip of 64-byte messages, median over LAT_S s
                    (env LAT_S, default 3) in microseconds; tool from env LAT_TOOL:
                    auto (sockperf TCP ping-pong if installed, else python), python,
                    sockperf, ping (ICMP, -i 0.002 -c 1000, avg rtt)
           Every row is appended to FILE as one JSON line.
  report   FILE...   the summary: min/median/max per side, ratio of medians, per-rep
           ratios, goals (throughput ratio >= 0.95, latency ratio <= 1.05)
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

TP_GOAL = 0.95    # throughput: twill / baseline >= this
LAT_GOAL = 1.05   # latency: twill / baseline <= this
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

def iperf(src, dst, ip, streams, secs):
    """Gbit/s received and sender retransmits, or (None, error)."""
    for attempt in range(3):
        port = random.randint(5300, 5899)
        srv = nsx_bg(dst, ["iperf3", "-s", "-1", "-B", ip, "-p", str(port)], secs + 30)
        time.sleep(0.4)
        c = nsx(src, ["iperf3", "-c", ip, "-p", str(port), "-t", str(secs), "-P",
                      str(streams), "-J"], secs + 20)
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
                {"retr": e.get("sum_sent", {}).get("retransmits")})
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
    ls = socket.socket()
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
        else:
            sys.exit("measure: unknown argument %s" % a)
    reps = int(os.environ.get("REPS", "5"))
    secs = int(os.environ.get("T", "5"))
    lat_s = int(os.environ.get("LAT_S", "3"))
    tool = lat_tool()
    say("latency tool: %s" % LAT_TOOL_DESC[tool])
    sides = {"twill": args["twill"], "baseline": args["base"]}
    log = open(args["log"], "a")
    for rep in range(1, reps + 1):
        order = ["twill", "baseline"] if rep % 2 else ["baseline", "twill"]
        for key, label, unit, _ in METRICS:
            for side in order:
                src, dst, ip = sides[side]
                t0 = time.monotonic()
                if key == "tcp1":
                    v, extra = iperf(src, dst, ip, 1, secs)
                elif key == "tcp4":
                    v, extra = iperf(src, dst, ip, 4, secs)
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


def fmt(v):
    return "%.2f" % v if v < 100 else "%.1f" % v


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
        say("-- %s --" % b)
        for key, label, unit, better in METRICS:
            val = {}
            for side in ("twill", "baseline"):
                val[side] = {r["rep"]: r["value"] for r in rows
                             if r["backend"] == b and r["metric"] == key and r["side"] == side
                             and r["value"] is not None}
            fails = sum(1 for r in rows if r["backend"] == b and r["metric"] == key
                        and r["value"] is None)
            for side in ("twill", "baseline"):
                v = list(val[side].values())
                if v:
                    say("  %-20s %-8s min %7s  median %7s  max %7s %s (n=%d)" % (
                        label, side, fmt(min(v)), fmt(statistics.median(v)), fmt(max(v)),
                        unit, len(v)))
                else:
                    say("  %-20s %-8s no successful runs" % (label, side))
            if not val["twill"] or not val["baseline"]:
                verdicts.append("%s %s: NO DATA" % (b, label))
                continue
            mt = statistics.median(val["twill"].values())
            mb = statistics.median(val["baseline"].values())
            ratio = mt / mb
            per = ["%.2f" % (val["twill"][k] / val["baseline"][k])
                   for k in sorted(val["twill"]) if k in val["baseline"]]
            if better == "hi":
                met, goal = ratio >= TP_GOAL, ">= %.2f" % TP_GOAL
            else:
                met, goal = ratio <= LAT_GOAL, "<= %.2f" % LAT_GOAL
            line = "%s %s: ratio of medians %.3f (goal %s: %s); per-rep ratios %s%s" % (
                b, label, ratio, goal, "MET" if met else "NOT MET", " ".join(per),
                "; %d failed runs" % fails if fails else "")
            say("  " + line)
            verdicts.append(line)
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
    elif cmd == "rr-server":
        rr_server(rest[0], int(rest[1]), float(rest[2]))
    elif cmd == "rr-client":
        rr_client(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
