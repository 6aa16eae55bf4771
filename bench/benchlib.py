"""Helpers shared by the benchmark drivers bench/cluster.py, bench/converge.py and
bench/newlease.py (imported from the drivers' own folder; standard library only)."""
import base64
import ctypes
import json
import os
import ssl
import urllib.request

LEASE_PREFIX = "/twill/leases/"   # where twill keeps the leases in etcd


def say(s=""):
    print(s, flush=True)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def lab_etcd(state):
    """(URL, TLS context or None) of a `twill lab`'s etcd from its state.json: with TLS (the
    lab's default) https with the lab's CA and the CLI's client certificate
    (etcd-pki/client-cli.pem), as `twill lab` prints in its store args."""
    etcd = state["etcd"]
    pki = etcd.get("pki")
    if not pki:
        return "http://%s:2379" % etcd["ip"], None
    ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.pem"))
    ctx.load_cert_chain(os.path.join(pki, "client-cli.pem"), os.path.join(pki, "client-cli-key.pem"))
    return "https://%s:2379" % etcd["ip"], ctx


def etcd_post(url, path, body, timeout, tls=None):
    """POST body as JSON to etcd's v3 JSON gateway (url: http(s)://ip:port, path: /v3/kv/...;
    tls: the ssl context of an https etcd); returns the decoded reply."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout, context=tls) as r:
        return json.loads(r.read())


def prefix_range(prefix, **opts):
    """Body of a /v3/kv/range request for every key under prefix (plus opts)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return dict(key=b64(prefix), range_end=b64(end), **opts)


CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)


def setns(path):
    """Moves the calling thread into the network namespace at path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if LIBC.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns %s: %s" % (path, os.strerror(e)))
    finally:
        os.close(fd)
