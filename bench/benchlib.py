"""Helpers shared by the benchmark drivers bench/cluster.py, bench/converge.py and
bench/newlease.py (imported from the drivers' own folder; standard library only)."""
import base64
import json
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
