"""Helpers shared by the benchmark drivers bench/cluster.py, bench/converge.py and
bench/newlease.py (imported from the drivers' own folder; standard library only)."""
import base64
import ctypes
import json
import os
import urllib.request

LEASE_PREFIX = "/twill/leases/"   # where twill keeps the leases in etcd


def say(s=""):
    print(s, flush=True)


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_post(url, path, body, timeout):
    """POST body as JSON to etcd's v3 JSON gateway (url: http://ip:port, path: /v3/kv/...);
    returns the decoded reply."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
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
