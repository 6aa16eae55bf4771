"""Driver of bench/bgp.sh (run by it, as root, with the namespaces made): per repetition,
start the twill agent (node -t) and the BIRD learner (-b) fresh, start the BIRD source (-a)
with N prefixes and its two sessions disabled, enable one at a time (alternating which goes
first) and time: Established, all N in the RIB, all N in the kernel; then, with both up, take
the source's link down and time until each kernel holds none of them. Kernel times come from
the kernel's route notifications (route_events.c), RIB times from each receiver's log
(twill's agent debug line, BIRD's "Got END-OF-RIB" trace). Standard library only."""
import datetime
import os
import re
import shutil
import socket
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


class RouteMonitor:
    """Route events of one protocol in one namespace, counted by route_events.c (run in the
    namespace): records the wall time each target count is first reached. Much finer than
    polling `ip route` (a dump of 10,000 routes takes ~25 ms), cheap, and the same for both
    receivers."""

    def __init__(self, ns, proto):
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, os.environ["TGB_EVENTS"],
                                   str(proto)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()
        self.marks, self.lost = {}, False
        if self.p.stdout.readline().strip() != "ready":
            raise SystemExit("route_events did not start in %s" % ns)
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        for line in self.p.stdout:
            f = line.split()
            with self.lock:
                if f[0] == "mark":
                    self.marks[f[1]] = float(f[2])
                elif f[0] == "lost":
                    self.lost = True

    def expect(self, name, target):
        self.p.stdin.write("expect %s %d\n" % (name, target))
        self.p.stdin.flush()

    def wait(self, names, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if self.lost or all(n in self.marks for n in names):
                    break
            time.sleep(0.01)
        with self.lock:
            if self.lost:
                say("  (route events were lost: no kernel time for this run)")
                return {}
            return dict(self.marks)

    def stop(self):
        self.p.stdin.close()
        self.p.wait()


class Waker:
    """Wakes the source BIRD every 10 ms (a control-socket command) while a table is
    transferred, for both receivers alike. BIRD 2.0.12 sends the last UPDATEs of a feed from an
    event that the feed's last step schedules without shortening its poll(), so when the
    receiver drains the socket without ever filling it (no POLLOUT pending) the tail and the
    End-of-RIB wait for the source's next wake-up: up to a keepalive interval. A receiver that
    reads slowly fills the socket and never sees it; a fast one does, every time. The waker
    bounds that artefact of the source at 10 ms for both sides."""

    def __init__(self, sock):
        self.done = threading.Event()
        self.t = threading.Thread(target=self.run, args=(sock,))
        self.t.start()

    def run(self, path):
        # One control connection, one short command per wake-up (cheaper than birdc).
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        c.settimeout(1)
        c.recv(4096)
        while not self.done.wait(0.01):
            c.sendall(b"show status\n")
            buf = b""
            while not re.search(rb"^0013 ", buf, re.M):
                buf += c.recv(4096)
        c.close()

    def stop(self):
        self.done.set()
        self.t.join()


SOURCE = """router id 10.9.0.1;
protocol device {{ }}
protocol static {{ ipv4; {routes} }}
protocol bgp t {{ local 10.9.0.1 as 65001; neighbor 10.9.0.2 as 65000; hold time {hold};
  connect delay time 0; connect retry time 1; disabled; ipv4 {{ import none; export all; }}; }}
protocol bgp b {{ local 10.9.0.1 as 65001; neighbor 10.9.0.3 as 65002; hold time {hold};
  connect delay time 0; connect retry time 1; disabled; ipv4 {{ import none; export all; }}; }}
"""

LEARNER = """router id 10.9.0.3;
log "{log}" all;
timeformat log "%F %T.%6f";
protocol device {{ }}
protocol kernel {{ ipv4 {{ import none; export all; }}; }}
protocol bgp a {{ local 10.9.0.3 as 65002; neighbor 10.9.0.1 as 65001; hold time {hold};
  connect delay time 0; connect retry time 1; ipv4 {{ import all; export none; }};
  debug {{ packets }}; }}
"""


def bird_eor_at(log):
    """Wall time of the learner's "Got END-OF-RIB" (BIRD imports each UPDATE as it parses
    it, so the table is complete in its RIB when the End-of-RIB that follows is read)."""
    pat = re.compile(r"^(\S+ \S+) <TRACE> a: Got END-OF-RIB")
    for line in open(log, errors="replace"):
        m = pat.match(line)
        if m:
            ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
            return ts.replace(tzinfo=datetime.timezone.utc).timestamp()
    return None

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
    env = dict(os.environ, TWILL_LOG="info,twill_agent=debug,twill_dataplane=debug")
    agent = subprocess.Popen(["ip", "netns", "exec", T, TWILL, "agent", "--store", store,
                              "--node-name", "t", "--iface", "eth0", "--data-dir",
                              os.path.join(d, "data")],
                             stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)
    learner = source = None
    try:
        blog = os.path.join(d, "learner.log")
        learner, bsock = bird_start(B, "learner%d" % r, LEARNER.format(hold=HOLD, log=blog))
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
        # Protocol numbers: twill 117, BIRD 12 (RTPROT_BIRD).
        mons = {"t": RouteMonitor(T, 117), "b": RouteMonitor(B, 12)}
        for side in (["t", "b"] if r % 2 == 0 else ["b", "t"]):
            res = {}
            mon = mons[side]
            mon.expect("kernel99", N - N // 100)
            mon.expect("kernel", N)
            t0 = time.time()
            waker = Waker(asock)
            birdc(asock, "enable", side)
            if side == "b":
                watch(res, "rib", lambda: bird_count(bsock), N, t0)
                eor = bird_eor_at(blog)
                res["rib"] = eor - t0 if eor else None
            marks = mon.wait(["kernel", "kernel99"])
            waker.stop()
            for k in ("kernel", "kernel99"):
                res[k] = marks[k] - t0 if k in marks else None
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
        for mon in mons.values():
            mon.expect("down", 0)
        t1 = time.time()
        sh(["ip", "-n", A, "link", "set", "eth0", "down"])
        down = [mons[k].wait(["down"]).get("down") for k in ("t", "b")]
        out["down"] = tuple(None if x is None else x - t1 for x in down)
        for mon in mons.values():
            mon.stop()
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
