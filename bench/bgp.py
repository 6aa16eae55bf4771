"""Driver of bench/bgp.sh (run by it, as root, with the namespaces made): per repetition,
start the twill agent (node -t) and the BIRD learner (-b) fresh, start the BIRD source (-a)
with N prefixes and its two sessions disabled, enable one at a time (alternating which goes
first) and time: Established, all N in the RIB, all N in the kernel; then, with both up, take
the source's link down and time until each kernel holds none of them. Standard library only."""
import datetime
import os
import re
import shutil
import statistics
import subprocess
import threading
import time

N = int(os.environ["N"])
REPS = int(os.environ["REPS"])
A, T, B = os.environ["TGB_A"], os.environ["TGB_T"], os.environ["TGB_B"]
WORK = os.environ["TGB_WORK"]
TWILL = os.environ["TGB_TWILL"]
HOLD = 3


def say(s=""):
    print(s, flush=True)


def sh(argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def prefixes():
    # N distinct /24s from 100.64.0.0/10.
    for i in range(N):
        yield "100.%d.%d.0/24" % (64 + (i >> 8), i & 255)


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def bird_start(ns, name, conf):
    d = os.path.join(WORK, name)
    os.makedirs(d, exist_ok=True)
    cpath, sock = os.path.join(d, "bird.conf"), os.path.join(d, "bird.ctl")
    write(cpath, conf)
    sh(["bird", "-p", "-c", cpath])
    p = subprocess.Popen(["ip", "netns", "exec", ns, "bird", "-f", "-c", cpath, "-s", sock,
                          "-P", os.path.join(d, "bird.pid")],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "log"), "a"))
    for _ in range(200):
        if "Daemon is up" in birdc(sock, "show", "status"):
            return p, sock
        time.sleep(0.05)
    raise SystemExit("BIRD %s did not start" % name)


def birdc(sock, *args):
    return subprocess.run(["birdc", "-s", sock, *args], capture_output=True, text=True).stdout


def stop(p):
    if p and p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def count_routes(ns, proto):
    out = sh(["ip", "-n", ns, "-4", "route", "show", "proto", proto], check=False).stdout
    return sum(1 for line in out.splitlines() if line.startswith("100."))


def bird_count(sock):
    m = re.search(r"(\d+) of \d+ routes", birdc(sock, "show", "route", "count"))
    return int(m.group(1)) if m else 0


def watch(results, key, probe, want, t0, timeout=120, most=None):
    """Polls probe() every 10 ms until it equals want; records seconds since t0 (and under
    key + "99" the first time it is within 1% of want, when `most` is set)."""
    end = time.time() + timeout
    while time.time() < end:
        v = probe()
        if most is not None and key + "99" not in results and abs(v - want) <= most:
            results[key + "99"] = time.time() - t0
        if v == want:
            results[key] = time.time() - t0
            return
        time.sleep(0.01)
    results[key] = None


def since_of(sock, proto):
    """The wall time a BIRD protocol entered its state (`show protocols` Since, ms)."""
    for line in birdc(sock, "show", "protocols", proto).splitlines():
        f = line.split()
        if f and f[0] == proto and len(f) >= 5 and "Established" in line:
            today = datetime.datetime.now(datetime.timezone.utc).date()
            hms = datetime.datetime.strptime(f[4], "%H:%M:%S.%f").time()
            return datetime.datetime.combine(today, hms, datetime.timezone.utc).timestamp()
    return None


def agent_learned_at(log, want):
    """Wall time of the agent's first debug line saying `learned=want`."""
    pat = re.compile(r"^(\S+Z) .*bgp: learned routes changed learned=(\d+)")
    for line in open(log, errors="replace"):
        m = pat.search(line)
        if m and int(m.group(2)) >= want:
            return datetime.datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()
    return None


SOURCE = """router id 10.9.0.1;
protocol device {{ }}
protocol static {{ ipv4; {routes} }}
protocol bgp t {{ local 10.9.0.1 as 65001; neighbor 10.9.0.2 as 65000; hold time {hold};
  connect delay time 0; connect retry time 1; disabled; ipv4 {{ import none; export all; }}; }}
protocol bgp b {{ local 10.9.0.1 as 65001; neighbor 10.9.0.3 as 65002; hold time {hold};
  connect delay time 0; connect retry time 1; disabled; ipv4 {{ import none; export all; }}; }}
"""

LEARNER = """router id 10.9.0.3;
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp a {{ local 10.9.0.3 as 65002; neighbor 10.9.0.1 as 65001; hold time {hold};
  connect delay time 0; connect retry time 1; ipv4 {{ import all; export none; }}; }}
"""

CLUSTER = """backend: bgp
pools:
  - name: pods
    cidr: 10.244.0.0/16
bgp:
  asNumber: 65000
  holdTime: {hold}
  peers:
    - {{address: 10.9.0.1, asNumber: 65001}}
"""


def rep(r):
    d = os.path.join(WORK, "rep%d" % r)
    os.makedirs(d)
    store = "embedded:" + os.path.join(d, "store.redb")
    write(os.path.join(d, "cluster.yaml"), CLUSTER.format(hold=HOLD))
    sh(["ip", "netns", "exec", T, TWILL, "cluster", "init", "--store", store, "-f",
        os.path.join(d, "cluster.yaml")])
    log = os.path.join(d, "agent.log")
    env = dict(os.environ, TWILL_LOG="info,twill_agent=debug")
    agent = subprocess.Popen(["ip", "netns", "exec", T, TWILL, "agent", "--store", store,
                              "--node-name", "t", "--iface", "eth0", "--data-dir",
                              os.path.join(d, "data")],
                             stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    learner = source = None
    try:
        learner, bsock = bird_start(B, "learner%d" % r, LEARNER.format(hold=HOLD))
        routes = " ".join("route %s blackhole;" % p for p in prefixes())
        source, asock = bird_start(A, "source%d" % r, SOURCE.format(routes=routes, hold=HOLD))
        status = os.path.join(d, "data", "status.json")
        for _ in range(400):
            if os.path.exists(status):
                break
            time.sleep(0.05)
        time.sleep(0.5)
        # One side at a time, alternating which goes first, so neither competes with the
        # other for the CPUs while its table arrives.
        out = {"est": [None, None], "rib": [None, None], "kernel": [None, None],
               "kernel99": [None, None]}
        for side in (["t", "b"] if r % 2 == 0 else ["b", "t"]):
            res = {}
            t0 = time.time()
            birdc(asock, "enable", side)
            if side == "t":
                watch(res, "kernel", lambda: count_routes(T, "117"), N, t0, most=N // 100)
            else:
                ws = [threading.Thread(target=watch, args=(res, k, f, N, t0),
                                       kwargs={"most": N // 100 if k == "kernel" else None})
                      for k, f in [("kernel", lambda: count_routes(B, "bird")),
                                   ("rib", lambda: bird_count(bsock))]]
                for w in ws:
                    w.start()
                for w in ws:
                    w.join()
            est = since_of(asock, side)
            i = 0 if side == "t" else 1
            if est is None:
                continue
            out["est"][i] = est - t0
            if side == "t":
                rib_t = agent_learned_at(log, N)
                res["rib"] = rib_t - t0 if rib_t else None
            for k in ("rib", "kernel", "kernel99"):
                if res.get(k) is not None:
                    out[k][i] = res[k] - (est - t0)
            time.sleep(0.5)
        # The source's link goes down: both notice by the hold timer.
        res2 = {}
        t1 = time.time()
        sh(["ip", "-n", A, "link", "set", "eth0", "down"])
        ws = [threading.Thread(target=watch, args=(res2, k, f, 0, t1)) for k, f in [
            ("t", lambda: count_routes(T, "117")),
            ("b", lambda: count_routes(B, "bird")),
        ]]
        for w in ws:
            w.start()
        for w in ws:
            w.join()
        out["down"] = (res2["t"], res2["b"])
        sh(["ip", "-n", A, "link", "set", "eth0", "up"])
        return out
    finally:
        stop(source)
        stop(learner)
        stop(agent)
        sh(["ip", "-n", T, "route", "flush", "proto", "117"], check=False)
        sh(["ip", "-n", B, "route", "flush", "proto", "bird"], check=False)
        if os.environ.get("TGB_KEEP"):
            # For a closer look: the agent's log of each repetition.
            shutil.copy(log, os.path.join(os.environ["TGB_KEEP"], "agent-rep%d.log" % r))
        shutil.rmtree(d, ignore_errors=True)


def fmt(x):
    return "   n/a  " if x is None else "%7.3fs" % x


def main():
    rows = []
    say("rep  %-22s %-22s %-22s %-22s" % ("established t/B", "RIB t/B", "kernel t/B",
                                          "link down t/B"))
    for r in range(REPS):
        o = rep(r)
        rows.append(o)
        say("%3d  %s %s  %s %s  %s %s  %s %s" % (
            r + 1, fmt(o["est"][0]), fmt(o["est"][1]), fmt(o["rib"][0]), fmt(o["rib"][1]),
            fmt(o["kernel"][0]), fmt(o["kernel"][1]), fmt(o["down"][0]), fmt(o["down"][1])))
    say()
    say("N=%d prefixes; RIB and kernel counted from each session's Established; link down "
        "includes the %d s hold time" % (N, HOLD))
    for key, label in [("est", "session established after enable"),
                       ("rib", "all N in the RIB"), ("kernel99", "99% of N in the kernel"),
                       ("kernel", "all N in the kernel"),
                       ("down", "all N gone after link down")]:
        tw = [o[key][0] for o in rows if o[key][0] is not None]
        bd = [o[key][1] for o in rows if o[key][1] is not None]
        if not tw or not bd:
            say("  %-36s incomplete (twill %d, BIRD %d of %d runs)" % (label, len(tw),
                                                                       len(bd), REPS))
            continue
        mt, mb = statistics.median(tw), statistics.median(bd)
        ratio = mt / mb if mb else float("inf")
        goal = ""
        if key in ("rib", "kernel", "kernel99"):
            goal = "  goal <= 1x: %s" % ("MET" if ratio <= 1 else "NOT MET")
        say("  %-36s twill min %.3f med %.3f max %.3f | BIRD min %.3f med %.3f max %.3f | "
            "ratio %.2fx%s" % (label, min(tw), mt, max(tw), min(bd), mb, max(bd), ratio, goal))


main()
