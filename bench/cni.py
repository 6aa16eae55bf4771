#!/usr/bin/env python3
"""twill vs the reference bridge + host-local CNI plugins, side by side, interleaved.

Started by bench/cni.sh *inside* a private "host" network namespace (ip netns exec), so
the bridges, host veths, routes and firewall state the plugins make stay in that netns.
cni.sh also creates every pod netns beforehand (names in POD_PREFIX_*), so this driver
never creates or deletes namespaces while it measures (namespace teardown in the kernel
runs in the background and holds rtnl_lock, which would disturb the timings).

Plugins are invoked exactly like a runtime does: a fresh process with a clean environment
(PATH, CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_PATH), config on stdin,
exit code 0 required. Every call is reaped with os.wait4, which gives its wall time and
its CPU time (user+sys). Both plugins go through the same code path.

Measured (twill / reference alternate per pod and per repetition, machine is noisy):
  0. first ADD of each plugin (creates the bridge and firewall state), n=1 each;
  1. ADD then DEL latency over NMED pods each, interleaved per pod;
  2. NPAR ADDs with PAR in parallel, wall time, REPS repetitions (order alternates per
     repetition), then DEL of all of them (timed too);
  3. peak RSS of one ADD: a few extra ADDs run under /usr/bin/time -f %M (see peak_rss()).
"""
import concurrent.futures as cf
import json
import os
import select
import statistics
import subprocess
import sys
import time

E = os.environ
NMED = int(E.get("NMED", "60"))
PAR = int(E.get("PAR", "4"))
NPAR = int(E.get("NPAR", "200"))
REPS = int(E.get("REPS", "3"))
RUN = E["TWB_RUN"]                 # unique run prefix, e.g. twb-1a2b
WORK = E["TWB_WORK"]               # per-run temp dir (state dirs live here)
TWILL = E["TWB_TWILL"]             # a private copy of the twill binary
REF_DIR = E.get("TWB_REF_DIR", "/usr/lib/cni")
TIMEOUT = float(E.get("CALL_TIMEOUT", "30"))
NRSS = min(int(E.get("NRSS", "3")), max(NMED, NPAR))
GNU_TIME = E.get("GNU_TIME", "/usr/bin/time")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class Plugin:
    def __init__(self, label, short, argv, cni_path, conf, pod_tag):
        self.label = label            # "twill" / "reference"
        self.short = short            # "tw" / "ref"
        self.argv = argv
        self.cni_path = cni_path
        self.conf = conf
        self.confb = json.dumps(conf, separators=(",", ":")).encode()
        self.pod_tag = pod_tag        # pod netns names: RUN-<tag><i>
        self.failures = []            # dicts, see record_failure

    def netns(self, i):
        return "%s-%s%d" % (RUN, self.pod_tag, i)


TW = Plugin("twill", "tw", [TWILL], os.path.dirname(TWILL) + ":" + REF_DIR, {
    "cniVersion": "1.0.0", "name": "twillnet", "type": "twill", "mode": "bridge",
    "bridge": "twbench0", "ranges": ["10.89.0.0/16"], "ipMasq": True,
    "dataDir": os.path.join(WORK, "twill-data"),
}, "t")
REF = Plugin("reference", "ref", [os.path.join(REF_DIR, "bridge")], REF_DIR, {
    "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "cni0",
    "isGateway": True, "ipMasq": True,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
             "dataDir": os.path.join(WORK, "ref-ipam")},
}, "r")
PLUGINS = (TW, REF)


class Call:
    __slots__ = ("dt", "rc", "out", "err", "maxrss", "cpu", "timed_out")


def run(argv, env, data, timeout=TIMEOUT):
    """Start argv with env and data on stdin; collect stdout/stderr; reap with wait4.
    dt covers fork/exec to reaping, like subprocess.run; cpu is the user+sys time wait4
    reports for the child and the descendants it waited for. (wait4's ru_maxrss is kept
    but is NOT the plugin's peak: exec records the pre-exec image, i.e. this forked
    Python's RSS, into it. peak_rss() measures memory instead.)"""
    c = Call()
    c.timed_out = False
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=env)
    try:
        p.stdin.write(data)
    except BrokenPipeError:
        pass
    try:
        p.stdin.close()
    except BrokenPipeError:
        pass
    ofd, efd = p.stdout.fileno(), p.stderr.fileno()
    fds = {ofd: [], efd: []}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    live = set(fds)
    deadline = t0 + timeout
    while live:
        left = deadline - time.perf_counter()
        if left <= 0:
            p.kill()
            c.timed_out = True
            break
        for fd, _ in poller.poll(left * 1000):
            chunk = os.read(fd, 65536)
            if chunk:
                fds[fd].append(chunk)
            else:
                poller.unregister(fd)
                live.discard(fd)
    _, status, ru = os.wait4(p.pid, 0)
    c.dt = time.perf_counter() - t0
    p.returncode = c.rc = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    p.stderr.close()
    c.out = b"".join(fds[ofd])
    c.err = b"".join(fds[efd])
    c.maxrss = ru.ru_maxrss
    c.cpu = ru.ru_utime + ru.ru_stime
    return c


def cni_env(plugin, cmd, cid, netns):
    return {"PATH": PATH, "CNI_COMMAND": cmd, "CNI_CONTAINERID": cid,
            "CNI_NETNS": "/var/run/netns/" + netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": plugin.cni_path}


def cid(plugin, phase, i):
    return "%s-%s-%s-%d" % (RUN, plugin.short, phase, i)


def call(plugin, cmd, phase, i):
    """One CNI call for pod i of plugin. Returns (Call, ok, ip or None)."""
    c = run(plugin.argv, cni_env(plugin, cmd, cid(plugin, phase, i), plugin.netns(i)),
            plugin.confb)
    ok = c.rc == 0 and not c.timed_out
    ip = None
    why = "timeout" if c.timed_out else ("exit %d" % c.rc if c.rc else "")
    if ok and cmd == "ADD":
        try:
            ip = json.loads(c.out)["ips"][0]["address"]
        except Exception as e:  # exit 0 but no usable result is a failure too
            ok, why = False, "bad ADD result (%s)" % e.__class__.__name__
    if not ok:
        plugin.failures.append({"cmd": cmd, "phase": phase, "pod": i, "why": why,
                                "stdout": c.out.decode(errors="replace")[:400],
                                "stderr": c.err.decode(errors="replace")[:400]})
    return c, ok, ip


# ---------------------------------------------------------------- helpers for output

LINES = []


def say(s=""):
    print(s, flush=True)
    LINES.append(s)


def ms(x):
    return "%.1f ms" % (x * 1e3) if x >= 0.0995 else "%.2f ms" % (x * 1e3)


def q(v, p):
    """Nearest-rank percentile of a non-empty list."""
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p * (len(v) - 1)))))]


def stats_line(label, v):
    if not v:
        return "%-28s no successful calls" % label
    return "%-28s min %8s  median %8s  p90 %8s  max %8s  (n=%d)" % (
        label, ms(min(v)), ms(statistics.median(v)), ms(q(v, .9)), ms(max(v)), len(v))


def ratio(a, b):
    return a / b if b else float("nan")


def goal(r, g):
    return "goal <= %.1f: %s" % (g, "met" if r <= g else "NOT met")


# ---------------------------------------------------------------- phases

def warm_up():
    """Page-cache warm-up: VERSION on every binary involved, twice, untimed."""
    v = json.dumps({"cniVersion": "1.0.0"}).encode()
    for _ in range(2):
        for argv in ([TWILL], [os.path.join(REF_DIR, "bridge")],
                     [os.path.join(REF_DIR, "host-local")]):
            run(argv, {"PATH": PATH, "CNI_COMMAND": "VERSION"}, v)


def first_add():
    """Pod 0 of each plugin: the ADD that creates bridge + masquerade state. It stays
    up for the whole run (so the bridges exist, as on a real node) and is DELeted last."""
    res = {}
    for p in PLUGINS:
        c, ok, ip = call(p, "ADD", "first", 0)
        res[p.short] = c
        say("first ADD %-9s %9s  %s  (cpu %s)%s" % (
            p.label, ms(c.dt), ip or "-", ms(c.cpu), "" if ok else "  FAILED"))
    return res


def latency():
    """ADD for pods 1..NMED, alternating which plugin goes first per pod; then DEL for
    the same pods, alternating likewise. Only successful calls count in the stats."""
    add = {p.short: [] for p in PLUGINS}
    dele = {p.short: [] for p in PLUGINS}
    cpu_add = {p.short: [] for p in PLUGINS}
    cpu_del = {p.short: [] for p in PLUGINS}
    slow = {p.short: [] for p in PLUGINS}
    ips = {p.short: [] for p in PLUGINS}
    added = {p.short: set() for p in PLUGINS}
    for i in range(1, NMED + 1):
        for p in (PLUGINS if i % 2 else PLUGINS[::-1]):
            c, ok, ip = call(p, "ADD", "lat", i)
            if ok:
                add[p.short].append(c.dt)
                cpu_add[p.short].append(c.cpu)
                slow[p.short].append((c.dt, "ADD", i))
                ips[p.short].append(ip)
                added[p.short].add(i)
    for i in range(1, NMED + 1):
        for p in (PLUGINS if i % 2 else PLUGINS[::-1]):
            if i not in added[p.short]:
                continue
            c, ok, _ = call(p, "DEL", "lat", i)
            if ok:
                dele[p.short].append(c.dt)
                cpu_del[p.short].append(c.cpu)
                slow[p.short].append((c.dt, "DEL", i))
    for p in PLUGINS:
        d = len(ips[p.short]) - len(set(ips[p.short]))
        if d:
            p.failures.append({"cmd": "ADD", "phase": "lat", "pod": -1,
                               "why": "%d duplicate addresses" % d, "stdout": "", "stderr": ""})
    return add, dele, cpu_add, cpu_del, slow


def bulk(p, rep, pool):
    """NPAR ADDs through a pool of PAR threads (timed), then NPAR DELs likewise."""
    ids = list(range(1, NPAR + 1))
    phase = "par%d" % rep
    nfail0 = len(p.failures)
    t0 = time.perf_counter()
    res = list(pool.map(lambda i: call(p, "ADD", phase, i), ids))
    t_add = time.perf_counter() - t0
    add_fail = len(p.failures) - nfail0
    ok_ids = [i for i, r in zip(ids, res) if r[1]]
    ips = [r[2] for r in res if r[1]]
    dup = len(ips) - len(set(ips))
    if dup:
        p.failures.append({"cmd": "ADD", "phase": phase, "pod": -1,
                           "why": "%d duplicate addresses" % dup, "stdout": "", "stderr": ""})
        add_fail += 1
    per_call = [r[0].dt for r in res if r[1]]
    nfail1 = len(p.failures)
    t0 = time.perf_counter()
    dres = list(pool.map(lambda i: call(p, "DEL", phase, i), ok_ids))
    t_del = time.perf_counter() - t0
    del_fail = len(p.failures) - nfail1
    return {"t_add": t_add, "t_del": t_del, "add_fail": add_fail, "del_fail": del_fail,
            "per_call_med": statistics.median(per_call) if per_call else float("nan"),
            "per_call_p90": q(per_call, .9) if per_call else float("nan"),
            "del_per_call_med": statistics.median([r[0].dt for r in dres if r[1]] or [float("nan")])}


def timed_rss(argv, env, data):
    """Run argv under GNU time; return (Call, peak RSS KiB or None). GNU time's own
    pre-exec image (~1 MiB) is the floor of what it can report (see rss_floor)."""
    f = os.path.join(WORK, "rss.%d" % os.getpid())
    c = run([GNU_TIME, "-f", "%M", "-o", f] + argv, env, data)
    try:
        with open(f) as fh:
            kib = int(fh.read().split()[-1])
    except Exception:
        kib = None
    return c, kib


def peak_rss():
    """NRSS extra ADDs per plugin (alternating), each under /usr/bin/time -f %M, on the
    bulk phase's pods 1..NRSS (free again after its DELs), each DELeted right after.
    GNU time reports the wait4 ru_maxrss of its child: the larger of the plugin process
    itself and every process it waited for (for the reference: host-local, iptables)."""
    if not os.access(GNU_TIME, os.X_OK):
        return None
    out = {p.short: [] for p in PLUGINS}
    for k in range(1, NRSS + 1):
        for p in (PLUGINS if k % 2 else PLUGINS[::-1]):
            c, kib = timed_rss(p.argv, cni_env(p, "ADD", cid(p, "rss", k), p.netns(k)), p.confb)
            if c.rc == 0 and kib:
                out[p.short].append(kib)
            else:
                p.failures.append({"cmd": "ADD", "phase": "rss", "pod": k, "why": "exit %d" % c.rc,
                                   "stdout": c.out.decode(errors="replace")[:400],
                                   "stderr": c.err.decode(errors="replace")[:400]})
            call(p, "DEL", "rss", k)
    # host-local on its own (run directly, as bridge runs it) and the floor of the method
    hl = []
    for k in range(1, NRSS + 1):
        env = cni_env(REF, "ADD", "%s-hl-%d" % (RUN, k), REF.netns(k))
        c, kib = timed_rss([os.path.join(REF_DIR, "host-local")], env, REF.confb)
        if c.rc == 0 and kib:
            hl.append(kib)
        env["CNI_COMMAND"] = "DEL"
        run([os.path.join(REF_DIR, "host-local")], env, REF.confb)
    out["host-local"] = hl
    out["floor"] = [timed_rss(["/bin/true"], {"PATH": PATH}, b"")[1] or 0 for _ in range(3)]
    return out


def leftovers():
    """What is left in the host netns / state dirs after all DELs (pod 0 still up)."""
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout.split("\n")
    names = [l.split()[0].split("@")[0] for l in links if l.strip()]
    tw_ports = [n for n in names if n.startswith("tw") and n != TW.conf["bridge"]]
    ref_ports = [n for n in names if n.startswith("veth")]
    try:
        st = json.load(open(os.path.join(TW.conf["dataDir"], "ipam", TW.conf["name"], "state.json")))
        tw_alloc = len(st.get("allocations", []))
    except Exception as e:
        tw_alloc = "? (%s)" % e.__class__.__name__
    try:
        d = os.path.join(REF.conf["ipam"]["dataDir"], REF.conf["name"])
        ref_alloc = len([f for f in os.listdir(d) if f[0].isdigit()])
    except Exception as e:
        ref_alloc = "? (%s)" % e.__class__.__name__
    return len(tw_ports), len(ref_ports), tw_alloc, ref_alloc


def main():
    t_start = time.perf_counter()
    say("config twill:     " + TW.confb.decode())
    say("config reference: " + REF.confb.decode())
    say("NMED=%d PAR=%d NPAR=%d REPS=%d; every call is a fresh process with a clean CNI env; "
        "order twill/reference alternates per pod and per repetition" % (NMED, PAR, NPAR, REPS))
    warm_up()

    say("\n-- 0. first ADD (creates bridge + masquerade state; n=1 each, pod stays up) --")
    first = first_add()

    say("\n-- 1. ADD / DEL latency, %d pods each, interleaved --" % NMED)
    add, dele, cpu_add, cpu_del, slow = latency()
    for p in PLUGINS:
        say(stats_line("%s ADD" % p.label, add[p.short]))
    for p in PLUGINS:
        say(stats_line("%s DEL" % p.label, dele[p.short]))
    for p in PLUGINS:
        if cpu_add[p.short] and cpu_del[p.short]:
            say("%-28s ADD %s, DEL %s (median user+sys of the plugin process tree)" % (
                "%s CPU per call" % p.label, ms(statistics.median(cpu_add[p.short])),
                ms(statistics.median(cpu_del[p.short]))))
    for p in PLUGINS:
        s = sorted(slow[p.short], reverse=True)[:3]
        say("%-28s %s" % ("%s slowest calls" % p.label,
                          ", ".join("%s pod %d %s" % (k, i, ms(t)) for t, k, i in s)))
    med = {}
    for k, d in (("ADD", add), ("DEL", dele)):
        a, b = d["tw"], d["ref"]
        if a and b:
            med[k] = (statistics.median(a), statistics.median(b))
            say("%s median ratio twill/reference: %.2f (%s)" % (
                k, ratio(*med[k]), goal(ratio(*med[k]), 0.5)))

    say("\n-- 2. %d ADDs, %d in parallel, %d repetitions (then DEL all, also %d in parallel) --"
        % (NPAR, PAR, REPS, PAR))
    par = {p.short: [] for p in PLUGINS}
    with cf.ThreadPoolExecutor(PAR) as pool:
        for rep in range(1, REPS + 1):
            for p in (PLUGINS if rep % 2 else PLUGINS[::-1]):
                r = bulk(p, rep, pool)
                par[p.short].append(r)
                say("rep %d %-9s ADD %d x%d: %6.2f s (%5.1f pods/s, per call median %s p90 %s) "
                    "failed %d | DEL all: %6.2f s (per call median %s) failed %d" % (
                        rep, p.label, NPAR, PAR, r["t_add"], NPAR / r["t_add"],
                        ms(r["per_call_med"]), ms(r["per_call_p90"]), r["add_fail"],
                        r["t_del"], ms(r["del_per_call_med"]), r["del_fail"]))
    par_med = {s: statistics.median([r["t_add"] for r in v]) for s, v in par.items()}
    pdel_med = {s: statistics.median([r["t_del"] for r in v]) for s, v in par.items()}
    pfail = {s: sum(r["add_fail"] for r in v) for s, v in par.items()}
    pdfail = {s: sum(r["del_fail"] for r in v) for s, v in par.items()}
    rep_ratios = [ratio(a["t_add"], b["t_add"]) for a, b in zip(par["tw"], par["ref"])]
    say("per-repetition ADD ratios twill/reference: %s; ratio of medians %.2f (%s)" % (
        " ".join("%.2f" % x for x in rep_ratios), ratio(par_med["tw"], par_med["ref"]),
        goal(ratio(par_med["tw"], par_med["ref"]), 0.5)))
    say("DEL all (x%d) medians: twill %.2f s, reference %.2f s, ratio %.2f" % (
        PAR, pdel_med["tw"], pdel_med["ref"], ratio(pdel_med["tw"], pdel_med["ref"])))

    say("\n-- 3. peak memory of one ADD (max RSS, %s -f %%M, %d ADDs each) --" % (GNU_TIME, NRSS))
    rss = peak_rss()
    if rss is None:
        say("%s not found: peak RSS not measured (install Debian package 'time')" % GNU_TIME)
    else:
        for k, lbl in (("tw", "twill ADD"), ("ref", "reference ADD (bridge)"),
                       ("host-local", "host-local alone"), ("floor", "/bin/true (method floor)")):
            v = rss[k]
            say("%-26s %s KiB" % (lbl, " ".join(str(x) for x in v) if v else "n/a"))
        say("note: the figure is wait4's ru_maxrss of the plugin process: the larger of the process")
        say("      itself and the processes it waited for, so the reference figure is")
        say("      max(bridge, host-local, iptables) — host-local is a separate process, alive while")
        say("      bridge waits for it, so their combined footprint is about the sum. twill runs alone.")

    # tear down pod 0 of each plugin, then look for anything left behind
    for p in PLUGINS:
        call(p, "DEL", "first", 0)
    tw_ports, ref_ports, tw_alloc, ref_alloc = leftovers()
    say("\nafter all DELs: host veths left twill %d, reference %d; addresses still allocated "
        "twill %s, reference %s" % (tw_ports, ref_ports, tw_alloc, ref_alloc))
    for p in PLUGINS:
        if p.failures:
            say("%s: %d failure(s); first ones:" % (p.label, len(p.failures)))
            for f in p.failures[:5]:
                say("  %s %s pod %d: %s stdout=%r stderr=%r" % (
                    f["cmd"], f["phase"], f["pod"], f["why"], f["stdout"], f["stderr"][:200]))

    say("\n== summary (twill / reference, same run) ==")
    for k in ("ADD", "DEL"):
        if k in med:
            a, b = med[k]
            say("%s median: twill %s, reference %s, ratio %.2f (%s)" % (
                k, ms(a), ms(b), ratio(a, b), goal(ratio(a, b), 0.5)))
        else:
            say("%s median: n/a (no successful calls for one side)" % k)
    r = ratio(par_med["tw"], par_med["ref"])
    say("%d ADDs x%d parallel: twill %.2f s, reference %.2f s, ratio %.2f (%s) failures twill %d ref %d"
        % (NPAR, PAR, par_med["tw"], par_med["ref"], r, goal(r, 0.5), pfail["tw"], pfail["ref"]))
    say("%d DELs x%d parallel: twill %.2f s, reference %.2f s, ratio %.2f; failures twill %d ref %d"
        % (NPAR, PAR, pdel_med["tw"], pdel_med["ref"], ratio(pdel_med["tw"], pdel_med["ref"]),
           pdfail["tw"], pdfail["ref"]))
    say("first ADD: twill %s, reference %s" % (ms(first["tw"].dt), ms(first["ref"].dt)))
    if rss and rss["tw"] and rss["ref"]:
        say("peak RSS of one ADD: twill %d KiB, reference bridge %d KiB (median of %d; reference = max "
            "over bridge and its children; host-local alone %s KiB)" % (
                statistics.median(rss["tw"]), statistics.median(rss["ref"]), NRSS,
                "%d" % statistics.median(rss["host-local"]) if rss["host-local"] else "n/a"))
        r = ratio(statistics.median(rss["tw"]), statistics.median(rss["ref"]))
        say("peak RSS ratio twill/reference: %.2f (%s; issue 13: at or under the reference)" % (
            r, goal(r, 1.0)))
    else:
        say("peak RSS of one ADD: n/a")
    say("total failures: twill %d, reference %d; bench wall time %.0f s" % (
        len(TW.failures), len(REF.failures), time.perf_counter() - t_start))
    return 1 if (TW.failures or REF.failures) else 0


if __name__ == "__main__":
    sys.exit(main())
