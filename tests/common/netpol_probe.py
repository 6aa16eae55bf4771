"""Network-policy probes for tests/policy_lab.rs, run inside pod namespaces.

  serve                  listen on TCP and UDP ports 80 and 81 of every address (IPv4, and IPv6
                         where the pod has it); answer each
                         TCP connection and UDP datagram with "ok" (runs until killed)
  probe T1 T2 ...        T = IP:PORT/PROTO; try each target at once (one thread each), print
                         one JSON object {target: true|false} (true: an answer came back
                         within the timeout)
"""
import json
import socket
import sys
import threading

PORTS = (80, 81)
TIMEOUT = 1.5


def serve():
    # Every socket listens before "serving" is printed, so a reader of that line can probe at once.
    def tcp(s):
        while True:
            c, _ = s.accept()
            try:
                c.sendall(b"ok")
            except OSError:
                pass
            c.close()

    def udp(s):
        while True:
            data, peer = s.recvfrom(2048)
            try:
                s.sendto(b"ok", peer)
            except OSError:
                pass

    def sockets(family, any_addr, port):
        t = socket.socket(family, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        u = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            for s in (t, u):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        t.bind((any_addr, port))
        t.listen(256)
        u.bind((any_addr, port))
        return [threading.Thread(target=tcp, args=(t,), daemon=True),
                threading.Thread(target=udp, args=(u,), daemon=True)]

    threads = []
    for port in PORTS:
        threads += sockets(socket.AF_INET, "0.0.0.0", port)
        try:
            threads += sockets(socket.AF_INET6, "::", port)
        except OSError:
            pass  # no IPv6 in this pod

    for t in threads:
        t.start()
    print("serving", flush=True)
    for t in threads:
        t.join()


def probe_one(target, results):
    addr, proto = target.rsplit("/", 1)
    host, port = addr.rsplit(":", 1)
    ok = False
    try:
        if proto == "tcp":
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
                s.settimeout(TIMEOUT)
                ok = s.recv(2) == b"ok"
        else:
            # Two tries: a datagram may be lost even where policy allows it.
            for _ in range(2):
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                with socket.socket(family, socket.SOCK_DGRAM) as s:
                    s.settimeout(TIMEOUT / 2)
                    s.sendto(b"hi", (host, int(port)))
                    try:
                        ok = s.recvfrom(16)[0] == b"ok"
                    except socket.timeout:
                        ok = False
                if ok:
                    break
    except OSError:
        ok = False
    results[target] = ok


def probe(targets):
    results = {}
    threads = [threading.Thread(target=probe_one, args=(t, results)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        probe(sys.argv[2:])
