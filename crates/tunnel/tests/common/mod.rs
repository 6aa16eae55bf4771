//! A two-host lab for the tunnel tests: hosts `h1`, `h2` (and optionally an attacker `x`) on
//! one bridge in namespace `sw` (underlay 192.168.77.0/24, MTU 1500), and a pod behind each
//! host (`p1` 10.244.1.2 behind h1, `p2` 10.244.2.2 behind h2), routed through the host.
//! [`Lab::add_underlay6`] gives the hosts IPv6 underlay addresses too (fd00:77::/64).

#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use twill_testkit::{Background, Netns, veth};
use twill_tunnel::wire::{self, build_ipv4};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap, Peer, Tunnel, TunnelConfig};

pub const H1: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
pub const H2: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
pub const X: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 3);
pub const H1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);
pub const H2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
pub const X_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);
pub const P1: &str = "10.244.1.2";
pub const P2: &str = "10.244.2.2";
pub const NET1: &str = "10.244.1.0/24";
pub const NET2: &str = "10.244.2.0/24";

pub struct Lab {
    pub sw: Netns,
    pub h1: Netns,
    pub h2: Netns,
    pub p1: Netns,
    pub p2: Netns,
    pub x: Option<Netns>,
}

impl Lab {
    pub fn new(tag: &str, attacker: bool) -> Lab {
        twill_testkit::require_root();
        let sw = Netns::new(&format!("{tag}sw"));
        sw.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
        sw.ok(&["ip", "link", "set", "br0", "up"]);
        let host = |name: &str, ip: Ipv4Addr| {
            let ns = Netns::new(&format!("{tag}{name}"));
            let port = format!("{name}p");
            veth(&ns, "eth0", &sw, &port);
            sw.ok(&["ip", "link", "set", &port, "master", "br0"]);
            ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            ns
        };
        let h1 = host("h1", H1);
        let h2 = host("h2", H2);
        let x = attacker.then(|| host("x", X));
        let pod = |host: &Netns, name: &str, n: u8| {
            let ns = Netns::new(&format!("{tag}{name}"));
            let hport = format!("v{name}");
            veth(&ns, "eth0", host, &hport);
            ns.ok(&[
                "ip",
                "addr",
                "add",
                &format!("10.244.{n}.2/24"),
                "dev",
                "eth0",
            ]);
            ns.ok(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &format!("10.244.{n}.1"),
            ]);
            host.ok(&[
                "ip",
                "addr",
                "add",
                &format!("10.244.{n}.1/24"),
                "dev",
                &hport,
            ]);
            ns
        };
        let p1 = pod(&h1, "p1", 1);
        let p2 = pod(&h2, "p2", 2);
        Lab {
            sw,
            h1,
            h2,
            p1,
            p2,
            x,
        }
    }

    /// Adds the IPv6 side to the lab's pods and hosts (p1 fd00:1::2/64, p2 fd00:2::2/64) (no DAD: addresses are usable at once).
    pub fn add_pods6(&self) {
        for (host, pod, n) in [(&self.h1, &self.p1, 1), (&self.h2, &self.p2, 2)] {
            host.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
            host.ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:{n}::1/64"),
                "dev",
                &format!("vp{n}"),
                "nodad",
            ]);
            pod.ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("fd00:{n}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            pod.ok(&[
                "ip",
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:{n}::1"),
            ]);
        }
    }

    /// Gives the hosts (and the attacker) IPv6 underlay addresses on eth0, usable at once (no
    /// DAD): h1 fd00:77::1, h2 fd00:77::2, x fd00:77::3.
    pub fn add_underlay6(&self) {
        let hosts = [(&self.h1, H1_6), (&self.h2, H2_6)];
        for (ns, ip) in hosts.into_iter().chain(self.x.as_ref().map(|x| (x, X_6))) {
            ns.ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
            ns.ok(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
    }

    /// Runs `f` on a thread inside `ns` (what the agent does for its own namespace).
    pub fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
        twill_netlink::netns::Netns::open(Path::new(&ns.path()))
            .expect("open netns")
            .run(f)
            .expect("enter netns")
    }

    pub fn config(encap: Encap, device: &str, host: u8, queues: usize) -> TunnelConfig {
        TunnelConfig {
            encap,
            device: device.into(),
            mtu: 1500 - encap.overhead(),
            local_subnet: Some(format!("10.244.{host}.0/24").parse().unwrap()),
            local_subnet6: None,
            local_ip: Some(if host == 1 { H1 } else { H2 }),
            local_ip6: None,
            queues,
            kernel_path: false,
            wireguard: None,
        }
    }

    pub fn peer_of(host: u8) -> Peer {
        Peer {
            node: format!("h{host}"),
            subnet: Some(format!("10.244.{host}.0/24").parse().unwrap()),
            subnet6: None,
            underlay: if host == 1 { H1 } else { H2 }.into(),
            public_key: None,
        }
    }

    /// Starts a tunnel in h1 and one in h2, each with the other as peer.
    pub fn start_pair(&self, encap: Encap, device: &str, queues: usize) -> (Tunnel, Tunnel) {
        self.start_pair_with(encap, device, queues, false)
    }

    /// Like [`Lab::start_pair`], with the kernel fast path on or off.
    pub fn start_pair_with(
        &self,
        encap: Encap,
        device: &str,
        queues: usize,
        kernel_path: bool,
    ) -> (Tunnel, Tunnel) {
        let t1 = self.start_with(1, encap, device, queues, kernel_path);
        let t2 = self.start_with(2, encap, device, queues, kernel_path);
        t1.set_peers(&[Lab::peer_of(2)]);
        t2.set_peers(&[Lab::peer_of(1)]);
        (t1, t2)
    }

    pub fn host(&self, n: u8) -> &Netns {
        if n == 1 { &self.h1 } else { &self.h2 }
    }

    pub fn start(&self, host: u8, encap: Encap, device: &str, queues: usize) -> Tunnel {
        self.start_with(host, encap, device, queues, false)
    }

    /// Starts a tunnel on `host`; with `kernel_path`, the BPF fast path must come up.
    pub fn start_with(
        &self,
        host: u8,
        encap: Encap,
        device: &str,
        queues: usize,
        kernel_path: bool,
    ) -> Tunnel {
        let cfg = TunnelConfig {
            kernel_path,
            ..Lab::config(encap, device, host, queues)
        };
        let t = Lab::in_ns(self.host(host), || Tunnel::start(cfg)).expect("start tunnel");
        if kernel_path {
            assert_eq!(
                t.kernel_path_device().as_deref(),
                Some("eth0"),
                "the kernel fast path must be available on this kernel"
            );
        }
        t
    }

    /// Packets the kernel handed to the tunnel's userspace engine through `dev` on `host` (the
    /// TUN device's transmit counter): what the kernel fast path did not carry.
    pub fn tun_tx_packets(&self, host: u8, dev: &str) -> u64 {
        let v = self.host(host).ip_json(&["-s", "link", "show", dev]);
        v[0]["stats64"]["tx"]["packets"]
            .as_u64()
            .expect("tx packets")
    }

    /// Routes each host's peer subnet through `dev` (both directions).
    pub fn route_via(&self, dev: &str) {
        self.h1.ok(&["ip", "route", "replace", NET2, "dev", dev]);
        self.h2.ok(&["ip", "route", "replace", NET1, "dev", dev]);
    }

    /// Sets the pods' MTU (pod and host ends), as the CNI plugin would for a mode.
    pub fn set_pod_mtu(&self, mtu: u32) {
        let m = mtu.to_string();
        self.p1.ok(&["ip", "link", "set", "eth0", "mtu", &m]);
        self.p2.ok(&["ip", "link", "set", "eth0", "mtu", &m]);
        self.h1.ok(&["ip", "link", "set", "vp1", "mtu", &m]);
        self.h2.ok(&["ip", "link", "set", "vp2", "mtu", &m]);
    }

    /// Waits until p1 reaches p2 (one ping succeeds) or `timeout` passes.
    pub fn wait_reachable(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .p1
                .exec(&["ping", "-q", "-c", "1", "-W", "1", P2])
                .status
                .success()
            {
                return true;
            }
        }
        false
    }

    /// A kernel VXLAN between h1 and h2 (device `vx0`, 10.99.0.{1,2}/30), the baseline.
    pub fn kernel_vxlan(&self) {
        for (ns, local, remote, addr) in [
            (&self.h1, H1, H2, "10.99.0.1/30"),
            (&self.h2, H2, H1, "10.99.0.2/30"),
        ] {
            ns.ok(&[
                "ip",
                "link",
                "add",
                "vx0",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                &local.to_string(),
                "remote",
                &remote.to_string(),
                "dstport",
                "4789",
                "dev",
                "eth0",
            ]);
            ns.ok(&["ip", "link", "set", "vx0", "mtu", "1450", "up"]);
            ns.ok(&["ip", "addr", "add", addr, "dev", "vx0"]);
        }
    }

    /// Routes the peer subnets through the kernel VXLAN.
    pub fn route_via_vxlan(&self) {
        self.h1.ok(&[
            "ip",
            "route",
            "replace",
            NET2,
            "via",
            "10.99.0.2",
            "dev",
            "vx0",
        ]);
        self.h2.ok(&[
            "ip",
            "route",
            "replace",
            NET1,
            "via",
            "10.99.0.1",
            "dev",
            "vx0",
        ]);
    }
}

/// Parses `ping -q` summary: (packets sent, received, avg RTT in ms).
pub fn ping_summary(out: &str) -> (u64, u64, f64) {
    let mut sent = 0;
    let mut recv = 0;
    let mut avg = f64::NAN;
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .filter_map(|s| s.parse().ok())
                .collect();
            if nums.len() >= 2 {
                sent = nums[0];
                recv = nums[1];
            }
        }
        if let Some(rest) = line.split("= ").nth(1)
            && line.contains("min/avg/max")
        {
            avg = rest
                .split('/')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN);
        }
    }
    (sent, recv, avg)
}

/// Plain xorshift: the hostile traffic is reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

/// The counter `name` of the `/proc/net/snmp` section `section` (`"Udp:"`, `"Ip:"`) in `ns`.
pub fn snmp_counter(ns: &Netns, section: &str, name: &str) -> Option<u64> {
    let snmp = ns.ok(&["cat", "/proc/net/snmp"]);
    let rows: Vec<&str> = snmp.lines().filter(|l| l.starts_with(section)).collect();
    let names: Vec<&str> = rows.first()?.split_whitespace().collect();
    let values: Vec<&str> = rows.get(1)?.split_whitespace().collect();
    let at = names.iter().position(|n| *n == name)?;
    values.get(at)?.parse().ok()
}

/// A raw IPv4 socket (we write the headers) and h2 as its destination, to forge tunnel
/// packets on the underlay.
pub fn raw_socket_to_h2() -> (Socket, SockAddr) {
    let sock = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw socket");
    (sock, SockAddr::from(SocketAddrV4::new(H2, 0)))
}

/// `inner` as a tunnel packet from `src` to h2 in `pkt`: IPIP, or UDP on the default port
/// without a checksum (what the fast path takes); `udp` is scratch space.
pub fn encapsulate_to_h2(
    src: Ipv4Addr,
    ipip: bool,
    inner: &[u8],
    udp: &mut Vec<u8>,
    pkt: &mut Vec<u8>,
) {
    if ipip {
        build_ipv4(src, H2, wire::IPPROTO_IPIP, 64, inner, pkt);
    } else {
        udp.clear();
        udp.extend_from_slice(&DEFAULT_UDP_PORT.to_be_bytes());
        udp.extend_from_slice(&DEFAULT_UDP_PORT.to_be_bytes());
        udp.extend_from_slice(&((inner.len() + 8) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(inner);
        build_ipv4(src, H2, 17, 64, udp, pkt);
    }
}

/// 500 pings from p1 to p2 at 100 a second (5 s), in a thread: the good traffic that must
/// keep flowing through a flood.
pub fn ping_p1_to_p2_in_background(lab: &Lab) -> std::thread::JoinHandle<std::process::Output> {
    let p1 = lab.p1.name().to_string();
    std::thread::spawn(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &p1, "ping", "-q", "-c", "500", "-i", "0.01", "-W", "1", P2,
            ])
            .output()
            .expect("ping")
    })
}

/// tcpdump writing every whole frame on `ns`'s eth0 that matches `filter` to `file`, as it
/// comes; killed when the handle drops (send SIGINT first to have the file finished).
pub fn capture_eth0(ns: &Netns, file: &Path, filter: &str) -> Background {
    ns.spawn(&[
        "tcpdump",
        "--immediate-mode",
        "-i",
        "eth0",
        "-U",
        "-n",
        "-s",
        "0",
        "-w",
        file.to_str().unwrap(),
        filter,
    ])
}

/// The frames of a pcap file (microsecond format, little-endian, as tcpdump -w writes here).
pub fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    if b.len() < 24 || b[..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return Vec::new();
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + incl > b.len() {
            break;
        }
        frames.push(b[at..at + incl].to_vec());
        at += incl;
    }
    frames
}
