//! Proof of the wire formats with an independent decoder: tcpdump captures what the engine
//! puts on the underlay (and the original packets in the sending pod), and scapy decodes
//! both. Needs the Debian packages `tcpdump` and `python3-scapy` (for /usr/bin/python3).

mod common;

use std::time::Duration;

use common::{Lab, P2, capture_eth0};
use twill_testkit::TempDir;
use twill_tunnel::{DEFAULT_UDP_PORT, Encap};

/// Decodes the captures; prints one JSON object with what it found, exits 1 on a mismatch.
const CHECK: &str = r#"
import json, sys
from scapy.all import rdpcap, IP, UDP, ICMP, TCP, raw

mode, underlay_pcap, pod_pcap, h1, h2 = sys.argv[1:6]
PATTERN = bytes.fromhex("c0ffee11")

def norm(ip_bytes):
    # What forwarding by h1 changes: TTL (decremented) and the header checksum; and for TCP
    # the checksum, which the pod's capture shows before offload completed it.
    b = bytearray(ip_bytes)
    b[8] = 0
    b[10] = b[11] = 0
    ihl = (b[0] & 0x0F) * 4
    if b[9] == 6 and len(b) >= ihl + 18:
        b[ihl + 16] = b[ihl + 17] = 0
    return bytes(b)

def check(inner_bytes):
    inner = IP(inner_bytes)
    if inner.src != "10.244.1.2" or inner.dst != "10.244.2.2":
        errors.append("inner %s -> %s" % (inner.src, inner.dst))
        return
    if len(inner_bytes) != inner.len:
        errors.append("payload %d bytes but inner total length %d" % (len(inner_bytes), inner.len))
    same = any(norm(o) == norm(inner_bytes[: inner.len]) for o in originals)
    if ICMP in inner and PATTERN in bytes(inner[ICMP].payload):
        found["icmp"] += 1
        if not same:
            errors.append("ICMP packet differs from the one the pod sent")
    if TCP in inner and inner[TCP].dport == 5201 and inner[TCP].flags.S:
        found["tcp"] += 1
        # The pod's capture shows the SYN before checksum offload filled in its TCP checksum;
        # the tunnel must carry it completed.
        if not same:
            errors.append("TCP SYN differs from the one the pod sent")
        again = IP(inner_bytes)
        del again[TCP].chksum
        if IP(raw(again))[TCP].chksum != inner[TCP].chksum:
            errors.append("inner TCP checksum is wrong")

originals = [raw(p[IP]) for p in rdpcap(pod_pcap) if IP in p and p[IP].src == "10.244.1.2"]
found = {"icmp": 0, "tcp": 0, "outer": 0}
errors = []
for p in rdpcap(underlay_pcap):
    if IP not in p or p[IP].src != h1 or p[IP].dst != h2:
        continue
    outer = p[IP]
    if mode == "udp":
        if outer.proto != 17 or UDP not in p:
            continue
        u = p[UDP]
        if u.sport != 8285 or u.dport != 8285:
            errors.append("udp ports %d->%d" % (u.sport, u.dport))
            continue
        inner_bytes = bytes(u.payload)
    else:
        if outer.proto != 4:
            continue
        inner_bytes = bytes(outer.payload)
        inner_ttl = inner_bytes[8]
        if outer.ttl != inner_ttl:
            errors.append("outer TTL %d != inner %d" % (outer.ttl, inner_ttl))
        if not (outer.flags & 0x2):
            errors.append("outer DF not set")
        if outer.len != 20 + len(inner_bytes):
            errors.append("outer length %d for inner %d" % (outer.len, len(inner_bytes)))
    found["outer"] += 1
    # Captured on a veth, a UDP GSO send is still one big datagram: consecutive inner packets
    # of the first one's size (the last may be shorter), which is exactly what the kernel or
    # the NIC turns into one datagram each on a real wire.
    segments = [inner_bytes]
    if mode == "udp" and len(inner_bytes) >= 20:
        size = IP(inner_bytes).len
        segments = [inner_bytes[i:i + size] for i in range(0, len(inner_bytes), size)] if size >= 20 else [inner_bytes]
    for seg in segments:
        check(seg)

print(json.dumps({"found": found, "originals": len(originals), "errors": errors[:10]}))
sys.exit(1 if errors or found["icmp"] < 3 or found["tcp"] < 1 else 0)
"#;

fn require_tools() {
    let scapy = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import scapy.all"])
        .output();
    assert!(
        scapy.is_ok_and(|o| o.status.success()),
        "the format proof needs scapy for /usr/bin/python3: apt-get install -y python3-scapy"
    );
    let tcpdump = std::process::Command::new("tcpdump")
        .arg("--version")
        .output();
    assert!(
        tcpdump.is_ok_and(|o| o.status.success()),
        "the format proof needs tcpdump: apt-get install -y tcpdump"
    );
}

fn wire_format_decodes_independently(encap: Encap, mode: &str, tag: &str, kernel_path: bool) {
    twill_testkit::require_root();
    require_tools();
    let lab = Lab::new(tag, false);
    let (_t1, _t2) = lab.start_pair_with(encap, "twill.tun", 1, kernel_path);
    lab.route_via("twill.tun");
    lab.set_pod_mtu(1500 - encap.overhead());
    if kernel_path {
        // A sender without checksum or segmentation offload, like a plain NIC: the kernel
        // completes checksums and cuts the fast path's super-packets itself, so the capture
        // shows exactly the wire packets.
        lab.h1.ok(&["ethtool", "-K", "eth0", "tx", "off"]);
    }
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let to_engine = lab.tun_tx_packets(1, "twill.tun");
    let _server = lab.p2.spawn(&["iperf3", "-s"]);

    let dir = TempDir::new("tunfmt");
    let under = dir.path().join("underlay.pcap");
    let pod = dir.path().join("pod.pcap");
    let filter = if mode == "udp" {
        "udp port 8285"
    } else {
        "ip proto 4"
    };
    let cap1 = capture_eth0(&lab.h2, &under, filter);
    let cap2 = capture_eth0(&lab.p1, &pod, "icmp or tcp");
    std::thread::sleep(Duration::from_secs(1));
    lab.p1.ok(&[
        "ping", "-c", "3", "-i", "0.2", "-s", "200", "-p", "c0ffee11", P2,
    ]);
    lab.p1.ok(&["iperf3", "-c", P2, "-n", "64K"]);
    std::thread::sleep(Duration::from_millis(500));
    // SIGINT lets tcpdump finish the file properly.
    for cap in [&cap1, &cap2] {
        let _ = std::process::Command::new("kill")
            .args(["-INT", &cap.0.id().to_string()])
            .output();
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(cap1);
    drop(cap2);

    let out = std::process::Command::new("/usr/bin/python3")
        .args([
            "-c",
            CHECK,
            mode,
            under.to_str().unwrap(),
            pod.to_str().unwrap(),
            "192.168.77.1",
            "192.168.77.2",
        ])
        .output()
        .expect("run scapy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{mode}: {stdout}");
    assert!(
        out.status.success(),
        "scapy rejected the {mode} framing: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if kernel_path {
        assert_eq!(
            lab.tun_tx_packets(1, "twill.tun"),
            to_engine,
            "the kernel fast path, not the engine, must have sent the captured packets"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn udp_wire_format_decodes_independently() {
    wire_format_decodes_independently(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "udp",
        "fu",
        false,
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_wire_format_decodes_independently() {
    wire_format_decodes_independently(Encap::Ipip, "ipip", "fi", false);
}

/// The kernel fast path writes the same bytes as the engine and as Linux's ipip driver.
#[test]
#[ignore = "needs root"]
fn ipip_kernel_path_wire_format_decodes_independently() {
    wire_format_decodes_independently(Encap::Ipip, "ipip", "fk", true);
}

/// udp through the kernel fast path: Flannel's framing, as the engine sends it.
#[test]
#[ignore = "needs root"]
fn udp_kernel_path_wire_format_decodes_independently() {
    wire_format_decodes_independently(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "udp",
        "fv",
        true,
    );
}
