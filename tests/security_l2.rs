//! L2 anti-spoofing in bridge mode, attacked from pods attached by the real plugin binary
//! (issue 12, item 5): a pod that takes another pod's MAC, claims another pod's IPv4 (gratuitous
//! ARP) or IPv6 address (unsolicited neighbour advertisement), or plays router (RA) or DHCP
//! server gets nowhere, and every pod keeps talking to the others and to its gateway before and
//! after. Frames are crafted with scapy (Debian python3-scapy, /usr/bin/python3) inside the
//! attacking pod; assertions read the host's neighbour table, the bridge's FDB, twill's sets
//! and what the other pods receive. Needs root (`--include-ignored`).

mod common;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::{Duration, Instant};

use common::{Host, result_ip};
use serde_json::{Value, json};
use twill_testkit::Netns;

struct Pod {
    ns: Netns,
    id: String,
    port: String,
    mac: String,
    v4: String,
    v6: String,
    result: Value,
}

fn scapy(ns: &Netns, code: &str) {
    let script = format!("from scapy.all import *\nconf.verb = 0\n{code}\n");
    ns.ok(&["/usr/bin/python3", "-c", &script]);
}

fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ping(ns: &Netns, dst: &str) -> bool {
    // A few tries: the first packet may wait for neighbour resolution.
    (0..5).any(|_| {
        ns.exec(&["ping", "-n", "-c", "1", "-W", "1", dst])
            .status
            .success()
    })
}

fn ping_once(ns: &Netns, dst: &str) -> bool {
    ns.exec(&["ping", "-n", "-c", "1", "-W", "1", dst])
        .status
        .success()
}

/// Every pod reaches every other pod on both families and its gateways, over fresh neighbour
/// caches (so ARP and NDP resolution are part of it).
fn assert_legit(host: &Host, bridge: &str, pods: &[&Pod], when: &str) {
    host.ns.ok(&["ip", "neigh", "flush", "dev", bridge]);
    for p in pods {
        p.ns.ok(&["ip", "neigh", "flush", "dev", "eth0"]);
    }
    for p in pods {
        for gw in ["10.88.0.1", "fd88::1"] {
            assert!(ping(&p.ns, gw), "{when}: {} -> gateway {gw}", p.id);
        }
        for q in pods.iter().filter(|q| q.id != p.id) {
            assert!(ping(&p.ns, &q.v4), "{when}: {} -> {} {}", p.id, q.id, q.v4);
            assert!(ping(&p.ns, &q.v6), "{when}: {} -> {} {}", p.id, q.id, q.v6);
        }
    }
}

fn lladdr(ns: &Netns, dev: &str, addr: &str) -> String {
    let v = ns.ip_json(&["neigh", "show", addr, "dev", dev]);
    v[0]["lladdr"].as_str().unwrap_or("").to_string()
}

fn fdb_port(host: &Host, bridge: &str, mac: &str) -> String {
    let out = host.ns.ok(&["bridge", "-j", "fdb", "show", "br", bridge]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == mac && e.get("vlan").is_none())
        .and_then(|e| e["ifname"].as_str())
        .unwrap_or("")
        .to_string()
}

/// `(port, MAC)` elements of `bridge twill allowedmac`.
fn mac_elements(host: &Host) -> BTreeSet<(String, String)> {
    let out = host
        .ns
        .ok(&["nft", "-j", "list", "set", "bridge", "twill", "allowedmac"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let set = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("set"))
        .unwrap();
    set.get("elem")
        .and_then(|e| e.as_array())
        .into_iter()
        .flatten()
        .map(|e| {
            let c = e["concat"].as_array().unwrap();
            (
                c[0].as_str().unwrap().to_string(),
                c[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A UDP listener on `port` in `ns` that reports the source ports it hears until it hears
/// `marker` (or 20 s pass).
fn udp_listener(ns: &Netns, v6: bool, port: u16, marker: u16) -> std::process::Child {
    let (fam, any) = if v6 {
        ("AF_INET6", "'::'")
    } else {
        ("AF_INET", "''")
    };
    let code = format!(
        "import socket, time\n\
         s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
         s.bind(({any}, {port}))\n\
         s.settimeout(1)\n\
         print('ready', flush=True)\n\
         seen = []\n\
         end = time.time() + 20\n\
         while time.time() < end:\n\
         \x20   try:\n\
         \x20       d, a = s.recvfrom(2000)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   seen.append(a[1])\n\
         \x20   if a[1] == {marker}:\n\
         \x20       break\n\
         print(' '.join(map(str, seen)), flush=True)\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "/usr/bin/python3", "-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn heard(child: std::process::Child) -> Vec<u16> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn l2_spoofing_from_a_pod_fails_and_pods_keep_talking() {
    let host = Host::new("l2");
    let conf = host.conf("1.1.0", json!({}));
    let bridge = conf["bridge"].as_str().unwrap().to_string();
    let pods: Vec<Pod> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            let ns = Netns::new(&format!("l2-{n}"));
            let id = format!("l2-{n}");
            let result = host.add(&id, &ns, &conf).ok();
            Pod {
                port: result["interfaces"][1]["name"].as_str().unwrap().into(),
                mac: result["interfaces"][2]["mac"].as_str().unwrap().into(),
                v4: result_ip(&result, true),
                v6: result_ip(&result, false),
                ns,
                id,
                result,
            }
        })
        .collect();
    let (a, b, c, d) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    assert_legit(&host, &bridge, &[a, b, c, d], "before the attacks");

    // The host and pod a know pod b (neighbour entries an attacker would repoint).
    for dst in [&b.v4, &b.v6] {
        assert!(ping(&host.ns, dst), "host -> {dst}");
        assert!(ping(&a.ns, dst), "a -> {dst}");
    }
    assert_eq!(lladdr(&host.ns, &bridge, &b.v4), b.mac);
    assert_eq!(lladdr(&host.ns, &bridge, &b.v6), b.mac);
    let cm = &c.mac;
    // After the attack frames, pod c's own legitimate traffic: once it is answered, the frames
    // before it have been through the bridge.
    let settle = || {
        assert!(
            ping(&c.ns, &a.v4) && ping(&c.ns, &a.v6),
            "pod c's own traffic"
        );
    };

    // Gratuitous ARP (reply and request forms) claiming pod b's IPv4 address.
    scapy(
        &c.ns,
        &format!(
            "for op in [1, 2]:\n\
             \x20   sendp(Ether(src='{cm}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=op, hwsrc='{cm}', psrc='{v}', \
             hwdst='ff:ff:ff:ff:ff:ff', pdst='{v}'), iface='eth0', count=3)",
            v = b.v4
        ),
    );
    settle();
    assert_eq!(
        lladdr(&host.ns, &bridge, &b.v4),
        b.mac,
        "gratuitous ARP was dropped"
    );
    assert_eq!(lladdr(&a.ns, "eth0", &b.v4), b.mac, "... for the pods too");

    // Unsolicited overriding neighbour advertisements for pod b's IPv6 address, from pod c's
    // own global and link-local addresses, to all nodes and to the gateway.
    let mut cll = String::new();
    assert!(
        eventually(20, || {
            let v = c.ns.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
            cll = v[0]["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["scope"] == "link")
                .and_then(|a| a["local"].as_str())
                .unwrap_or("")
                .to_string();
            !cll.is_empty()
        }),
        "pod c has no link-local address: {}",
        c.ns.ok(&["ip", "-6", "addr", "show", "dev", "eth0"])
    );
    scapy(
        &c.ns,
        &format!(
            "for src in ['{own}', '{cll}']:\n\
             \x20 for dst in ['ff02::1', 'fd88::1']:\n\
             \x20   sendp(Ether(src='{cm}', dst='33:33:00:00:00:01')/IPv6(src=src, dst=dst, hlim=255)/\
             ICMPv6ND_NA(tgt='{t}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{cm}'), iface='eth0', count=3)",
            own = c.v6,
            t = b.v6
        ),
    );
    settle();
    assert_eq!(
        lladdr(&host.ns, &bridge, &b.v6),
        b.mac,
        "the host's neighbour entry for pod b was not repointed"
    );
    assert_eq!(lladdr(&a.ns, "eth0", &b.v6), b.mac);

    // A router advertisement and DHCP / DHCPv6 server replies reach no other pod.
    scapy(
        &c.ns,
        &format!(
            "sendp(Ether(src='{cm}', dst='33:33:00:00:00:01')/IPv6(src='{cll}', dst='ff02::1', hlim=255)/\
             ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptPrefixInfo(prefix='2001:db8:99::', prefixlen=64, L=1, A=1)/\
             ICMPv6NDOptSrcLLAddr(lladdr='{cm}'), iface='eth0', count=3)"
        ),
    );
    settle();
    for p in [a, b, d] {
        let ra = p.ns.ok(&["ip", "-6", "route", "show", "proto", "ra"]);
        assert!(ra.trim().is_empty(), "pod {} took the RA: {ra}", p.id);
    }
    let l4 = udp_listener(&a.ns, false, 68, 6767);
    let l6 = udp_listener(&d.ns, true, 546, 5470);
    scapy(
        &c.ns,
        &format!(
            "for sp in [67, 67, 6767]:\n\
             \x20   sendp(Ether(src='{cm}', dst='ff:ff:ff:ff:ff:ff')/IP(src='{v4}', dst='255.255.255.255')/\
             UDP(sport=sp, dport=68)/BOOTP(op=2, yiaddr='10.88.0.250')/DHCP(options=[('message-type', 'offer'), 'end']), iface='eth0')\n\
             for sp in [547, 547, 5470]:\n\
             \x20   sendp(Ether(src='{cm}', dst='33:33:00:00:00:01')/IPv6(src='{cll}', dst='ff02::1')/\
             UDP(sport=sp, dport=546)/DHCP6_Reply(), iface='eth0')",
            v4 = c.v4
        ),
    );
    let (h4, h6) = (heard(l4), heard(l6));
    assert_eq!(h4, vec![6767], "only the marker, no DHCP offer");
    assert_eq!(h6, vec![5470], "only the marker, no DHCPv6 reply");

    // Pod c takes pod b's MAC: its frames are dropped, pod b keeps its traffic.
    assert_eq!(fdb_port(&host, &bridge, &b.mac), b.port);
    c.ns.ok(&["ip", "link", "set", "eth0", "address", &b.mac]);
    scapy(
        &c.ns,
        &format!(
            "sendp(Ether(src='{m}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{m}', psrc='{v}', pdst='10.88.0.1'), iface='eth0', count=5)",
            m = b.mac,
            v = c.v4
        ),
    );
    assert!(
        !ping_once(&c.ns, "10.88.0.1"),
        "pod c's frames with pod b's MAC are dropped"
    );
    assert!(!ping_once(&c.ns, &a.v6));
    assert_eq!(
        fdb_port(&host, &bridge, &b.mac),
        b.port,
        "the bridge still sends b's MAC to b"
    );
    assert!(
        ping(&a.ns, &b.v4) && ping(&host.ns, &b.v4),
        "pod b keeps its traffic"
    );
    c.ns.ok(&["ip", "link", "set", "eth0", "address", cm]);
    assert!(
        eventually(10, || ping_once(&c.ns, &a.v4)),
        "pod c back on its own MAC"
    );

    assert_legit(&host, &bridge, &[a, b, c, d], "after the attacks");

    // CHECK sees the binding; DEL removes exactly its own.
    let mut prev = conf.clone();
    prev["prevResult"] = d.result.clone();
    host.call("twill", "CHECK", &d.id, Some(&d.ns), &prev).ok();
    let all = mac_elements(&host);
    let want: BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| (p.port.clone(), p.mac.clone()))
        .collect();
    assert_eq!(all, want);
    host.ns.ok(&[
        "nft",
        "delete",
        "element",
        "bridge",
        "twill",
        "allowedmac",
        &format!("{{ \"{}\" . {} }}", d.port, d.mac),
    ]);
    let v = host
        .call("twill", "CHECK", &d.id, Some(&d.ns), &prev)
        .err(110);
    assert!(v["msg"].as_str().unwrap().contains("MAC"), "{v}");
    host.ns.ok(&[
        "nft",
        "add",
        "element",
        "bridge",
        "twill",
        "allowedmac",
        &format!("{{ \"{}\" . {} }}", d.port, d.mac),
    ]);
    host.del(&b.id, Some(&b.ns), &conf).ok();
    let mut left = want.clone();
    left.remove(&(b.port.clone(), b.mac.clone()));
    assert_eq!(mac_elements(&host), left, "DEL removed exactly pod b's MAC");
    let ll6 = host
        .ns
        .ok(&["nft", "list", "set", "bridge", "twill", "allowed6"]);
    assert!(!ll6.contains(&b.port), "pod b's link-local went too: {ll6}");
    assert_legit(&host, &bridge, &[a, c, d], "after pod b's DEL");
}
