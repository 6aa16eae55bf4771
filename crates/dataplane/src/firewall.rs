//! twill's own nftables state for the CNI plugin: masquerade per network and
//! anti-spoofing of container source addresses.
//!
//! Everything lives in twill's own tables (`inet twill`, `bridge twill`);
//! other tables are never touched. All functions act on the network
//! namespace of the calling thread (netlink sockets and `nft` inherit it).
//!
//! Cost model (these run on every container ADD/DEL):
//! - hot paths speak nfnetlink directly (see the private `nfnl` module):
//!   checking that a chain is in place, adding/removing set elements,
//!   listing them;
//! - only creating or repairing rules spawns `nft -f -`, one atomic
//!   transaction each time.
//!
//! Ruleset (anti-spoofing matched on the host ends of container veths, which
//! twill names `tw*`; see "anti-spoofing" below for why each check exists):
//!
//! ```text
//! table bridge twill {                      # bridge mode: veth is a bridge port
//!   set allowed4   { type ifname . ipv4_addr; }     # the port's IPv4 addresses
//!   set allowed6   { type ifname . ipv6_addr; }     # its IPv6 ones + its EUI-64 link-local
//!   set allowedmac { type ifname . ether_addr; }    # the MAC of the pod behind it
//!   set ndtarget6  { typeof iifname . @th,64,128; } # = allowed6, as an ND target field
//!   set ndlladdr   { typeof iifname . @th,208,48; } # = allowedmac, as an ND option field
//!   chain antispoof {
//!     type filter hook prerouting priority -300; policy accept;
//!     iifname != "tw*" accept
//!     iifname . ether saddr != @allowedmac drop
//!     ether type vmap { ip : goto as-ip4, arp : goto as-arp, ip6 : goto as-ip6 }
//!     drop                                  # other ethertypes (VLAN tags, STP, ...)
//!   }
//!   chain as-ip4 { ip saddr bound; DHCP server replies (udp 67 -> 68) dropped }
//!   chain as-arp { Ethernet/IPv4 only; sender MAC and IP bound; probes only for own IP }
//!   chain as-ip6 { source bound (:: -> as-unspec6); DHCPv6 replies (547 -> 546),
//!                  RA and redirects dropped; NS -> as-ns, NA -> as-na }
//!   chain as-unspec6 { only DAD for own addresses and MLD reports from :: }
//!   chain as-ns, as-na { no ext. headers; NA target bound; link-layer option = own MAC }
//! }
//! table inet twill {                        # routed mode + masquerade
//!   set allowed4 { ... } set allowed6 { ... }
//!   chain antispoof {
//!     type filter hook prerouting priority raw; policy accept;
//!     iifname != "tw*" accept; meta iifkind != "veth" accept
//!     ip saddr / ip6 saddr (except ::, fe80::/10) bound to the port
//!     udp sport . udp dport { 67 . 68, 547 . 546 } drop
//!     icmpv6 type { nd-router-advert, nd-redirect } drop
//!   }
//!   chain masq-<network> {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade
//!     ip6 saddr fd88::/64 ip6 daddr != { fd88::/64, ff00::/8 } masquerade
//!   }
//! }
//! ```
//!
//! Per-packet cost on the pod-to-pod path of bridge mode: one set lookup for
//! the MAC (new), one verdict-map dispatch on the ethertype, the address
//! lookup (as before), and a transport-protocol compare that fails fast for
//! TCP. NDP, ARP and DHCP checks run only for those packets.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_types::MacAddr;

use crate::Error;
use crate::nfnl::{
    self, Batch, NFPROTO_BRIDGE, NFPROTO_INET, NfSock, NfTablesMessage, NlError, SetElementOp,
};
use crate::nft_state::{NftState, fingerprint};
use crate::nftcli;

/// Name of twill's tables (one per family).
pub const TABLE: &str = "twill";
/// Host-side veth names start with this; anti-spoofing applies only to them.
pub const IFNAME_PREFIX: &str = "tw";
/// Name of the anti-spoofing base chain (in both tables).
pub const ANTISPOOF_CHAIN: &str = "antispoof";
/// Set of allowed `ifname . ipv4_addr` pairs.
pub const SET4: &str = "allowed4";
/// Set of allowed `ifname . ipv6_addr` pairs.
pub const SET6: &str = "allowed6";

/// Longest CNI network name we accept: nf_tables chain names hold at most
/// 255 bytes and ours are `masq-<name>`.
const MAX_NETWORK_NAME: usize = 250;

/// How a container's host veth is attached, which decides which netfilter
/// hook sees its packets first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The host veth is a port of a Linux bridge: its frames are bridged, so
    /// they are filtered in `bridge twill` (prerouting of the bridge family).
    Bridge,
    /// The host veth is not bridged; its packets are routed by the host and
    /// filtered in `inet twill` (inet prerouting, before conntrack).
    Routed,
}

impl Mode {
    fn family(self) -> u8 {
        match self {
            Mode::Bridge => NFPROTO_BRIDGE,
            Mode::Routed => NFPROTO_INET,
        }
    }

    fn family_name(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::Routed => "inet",
        }
    }
}

// ---- validation -----------------------------------------------------------

fn validate_network(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NETWORK_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidNetworkName(name.to_string()))
    }
}

fn validate_ifname(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() >= nfnl::IFNAMSIZ {
        "it is longer than 15 bytes (IFNAMSIZ)"
    } else if !name.starts_with(IFNAME_PREFIX) {
        "it does not start with \"tw\"; twill only filters the host ends of its own veths"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
    {
        "it contains '/', ':', whitespace or NUL, which Linux does not allow"
    } else {
        return Ok(());
    };
    Err(Error::InvalidIfname {
        name: name.to_string(),
        reason,
    })
}

// ---- error plumbing ---------------------------------------------------------

fn nl_error(op: String, e: NlError, enoent_hint: &str) -> Error {
    match e {
        NlError::Io(source) => {
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => {
                    " (changing nftables needs CAP_NET_ADMIN in the network namespace)"
                }
                Some(libc::EPROTONOSUPPORT) => " (the kernel lacks nfnetlink / nf_tables)",
                _ => "",
            };
            Error::Netlink { op, source, hint }
        }
        NlError::Kernel { errno, msg } => {
            let mut reason = io::Error::from_raw_os_error(errno).to_string();
            if let Some(m) = msg.filter(|m| !m.is_empty()) {
                let _ = write!(reason, " ({m})");
            }
            if errno == libc::ENOENT && !enoent_hint.is_empty() {
                let _ = write!(reason, "; {enoent_hint}");
            } else if errno == libc::EPERM {
                reason.push_str("; changing nftables needs CAP_NET_ADMIN");
            }
            Error::Kernel { op, errno, reason }
        }
        NlError::Malformed(detail) => Error::Protocol { op, detail },
    }
}

// ---- stamps -------------------------------------------------------------------

/// Reads a stamp; a missing or unreadable one simply means "re-apply".
fn read_stamp(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Writes a stamp atomically, so a concurrent reader sees the old or the new content, never a
/// torn one. No fsync: losing a stamp only costs one re-apply.
fn write_stamp(dir: &Path, name: &str, content: &str) -> Result<(), Error> {
    // Digests of what was applied, nothing secret: readable, as `std::fs::write` made them
    // (0666 less the usual umask 022).
    const STAMP_MODE: u32 = 0o644;
    std::fs::create_dir_all(dir).map_err(|source| Error::State {
        action: "create the state directory",
        path: dir.to_path_buf(),
        source,
    })?;
    twill_types::fs::write_atomic(&dir.join(name), content.as_bytes(), STAMP_MODE).map_err(|e| {
        Error::State {
            action: e.action,
            path: e.path,
            source: e.source,
        }
    })
}

fn remove_stamp(path: PathBuf) -> Result<(), Error> {
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::State {
            action: "remove",
            path,
            source: e,
        }),
        _ => Ok(()),
    }
}

// ---- masquerade -----------------------------------------------------------------

fn masq_chain(network: &str) -> String {
    format!("masq-{network}")
}

/// `x` or `{ x, y }`.
fn nft_set_expr<T: std::fmt::Display>(items: &[T]) -> String {
    match items {
        [one] => one.to_string(),
        _ => {
            let inner: Vec<String> = items.iter().map(|i| i.to_string()).collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}

/// The masquerade rules for `ranges` (without the `add rule` prefix).
///
/// Ranges are normalised (host bits cleared, overlaps merged) so that the
/// anonymous interval sets are valid and the stamp is stable. Multicast
/// destinations are never masqueraded, as in the reference CNI plugins'
/// ipMasq: rewriting the source of multicast breaks its receivers' view of
/// the sender and gains nothing.
fn masquerade_rules(ranges: &[IpNet]) -> Vec<String> {
    let v4: Vec<Ipv4Net> = ranges
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(n.trunc()),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<Ipv6Net> = ranges
        .iter()
        .filter_map(|n| match n {
            IpNet::V6(n) => Some(n.trunc()),
            IpNet::V4(_) => None,
        })
        .collect();
    let mut rules = Vec::new();
    if !v4.is_empty() {
        let src = Ipv4Net::aggregate(&v4);
        let mut dst_excl = v4.clone();
        dst_excl.push(Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix"));
        let dst_excl = Ipv4Net::aggregate(&dst_excl);
        rules.push(format!(
            "ip saddr {} ip daddr != {} masquerade",
            nft_set_expr(&src),
            nft_set_expr(&dst_excl)
        ));
    }
    if !v6.is_empty() {
        let src = Ipv6Net::aggregate(&v6);
        let mut dst_excl = v6.clone();
        dst_excl.push(
            Ipv6Net::new(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8).expect("valid prefix"),
        );
        let dst_excl = Ipv6Net::aggregate(&dst_excl);
        rules.push(format!(
            "ip6 saddr {} ip6 daddr != {} masquerade",
            nft_set_expr(&src),
            nft_set_expr(&dst_excl)
        ));
    }
    rules
}

/// The hook of a masquerade chain.
const MASQ_CHAIN_TYPE: &str = "type nat hook postrouting priority srcnat; policy accept;";

/// The `nft -f` transaction that (re)creates a network's masquerade chain,
/// and the number of rules it holds.
fn masquerade_script(network: &str, ranges: &[IpNet]) -> (String, usize) {
    let chain = masq_chain(network);
    let rules = masquerade_rules(ranges);
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(s, "add chain inet {TABLE} {chain} {{ {MASQ_CHAIN_TYPE} }}");
    let _ = writeln!(s, "flush chain inet {TABLE} {chain}");
    add_rules(&mut s, &chain, &rules);
    (s, rules.len())
}

fn add_rules(s: &mut String, chain: &str, rules: &[String]) {
    for r in rules {
        let _ = writeln!(s, "add rule inet {TABLE} {chain} {r}");
    }
}

/// The agent's form of [`masquerade_script`]: the chain is recreated (in the same atomic
/// transaction) with a comment holding the [`fingerprint`] of its rules, so a writer without a
/// record can recognise it. Also gives the fingerprint.
fn marked_masquerade_script(network: &str, ranges: &[IpNet]) -> (String, usize, String) {
    let chain = masq_chain(network);
    let rules = masquerade_rules(ranges);
    let mark = fingerprint(&rules.join("\n"));
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    // Create-then-delete makes the delete safe when the chain is missing; a chain's comment
    // cannot be changed in place.
    let _ = writeln!(s, "add chain inet {TABLE} {chain} {{ {MASQ_CHAIN_TYPE} }}");
    let _ = writeln!(s, "delete chain inet {TABLE} {chain}");
    let _ = writeln!(
        s,
        "add chain inet {TABLE} {chain} {{ {MASQ_CHAIN_TYPE} comment \"{mark}\"; }}"
    );
    add_rules(&mut s, &chain, &rules);
    (s, rules.len(), mark)
}

/// Makes sure the masquerade chain `inet twill masq-<network>` holds exactly
/// the rules for `ranges`: sources in the ranges going to a destination
/// outside all of them are masqueraded.
///
/// Called on every container ADD, so the common case is cheap (tens of µs):
/// if the stamp `state_dir/masq-<network>` records the same transaction and
/// the chain is in the kernel with the expected number of rules (checked over
/// netlink, no process spawned), nothing happens. Otherwise the chain is
/// rewritten with one atomic `nft -f -` transaction and the stamp updated, so
/// a flushed host ruleset is repaired on the next ADD.
pub fn ensure_masquerade(state_dir: &Path, network: &str, ranges: &[IpNet]) -> Result<(), Error> {
    validate_network(network)?;
    if ranges.is_empty() {
        return Err(Error::NoRanges(network.to_string()));
    }
    let chain = masq_chain(network);
    let (script, nrules) = masquerade_script(network, ranges);
    let stamp_name = chain.clone();
    if read_stamp(&state_dir.join(&stamp_name)).as_deref() == Some(script.as_str())
        && masq_chain_holds(network, nrules)?
    {
        return Ok(());
    }
    write_masq_chain(network, &script)?;
    write_stamp(state_dir, &stamp_name, &script)
}

/// The `nft -f` transaction with which [`MasqueradeWriter`] makes `inet twill masq-<network>`
/// masquerade `ranges` (pure; what [`MasqueradeWriter::observe`] reports as written).
pub fn masquerade_transaction(network: &str, ranges: &[IpNet]) -> String {
    marked_masquerade_script(network, ranges).0
}

/// Whether `inet twill masq-<network>` is in the kernel with `rules` rules (over netlink).
fn masq_chain_holds(network: &str, rules: usize) -> Result<bool, Error> {
    let chain = masq_chain(network);
    let op = format!("checking the ipMasq chain inet {TABLE} {chain}");
    nfnl::with_sock(|sock| {
        Ok(nfnl::chain_exists(sock, NFPROTO_INET, TABLE, &chain)?
            && nfnl::rule_count(sock, NFPROTO_INET, TABLE, &chain)? == rules)
    })
    .map_err(|e| nl_error(op, e, ""))
}

fn write_masq_chain(network: &str, script: &str) -> Result<(), Error> {
    let chain = masq_chain(network);
    nftcli::apply(
        &format!("sets up ipMasq for network {network:?} (chain inet {TABLE} {chain})"),
        script,
    )
}

/// Deletes `inet twill masq-<network>`; fine when it is not there.
fn delete_masq_chain(network: &str) -> Result<(), Error> {
    let chain = masq_chain(network);
    let op = format!("deleting the ipMasq chain inet {TABLE} {chain}");
    let res = nfnl::with_sock(|sock| {
        let mut batch = Batch::new(sock);
        batch.push(
            NfTablesMessage::DeleteChain(nfnl::chain_message(TABLE, &chain)),
            0,
            NFPROTO_INET,
        );
        sock.batch(batch)
    });
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()), // already gone
        Err(e) => Err(nl_error(op, e, "")),
    }
}

/// Deletes the masquerade chain of `network` and its stamp. Idempotent.
pub fn remove_masquerade(state_dir: &Path, network: &str) -> Result<(), Error> {
    validate_network(network)?;
    delete_masq_chain(network)?;
    remove_stamp(state_dir.join(masq_chain(network)))
}

/// The agent's masquerade chain as the reconciler writes it: instead of a stamp file, the
/// chain's own comment (a [`fingerprint`] of its rules) and rule count, read from the kernel
/// when observed, and a record in memory of the transaction last written.
#[derive(Debug)]
pub struct MasqueradeWriter {
    network: String,
    /// The ranges last written, with their transaction, its rule count and fingerprint
    /// (kept, not recomputed on every observe).
    written: Option<(Vec<IpNet>, String, usize, String)>,
}

impl MasqueradeWriter {
    /// The writer of `inet twill masq-<network>`.
    pub fn new(network: &str) -> Result<MasqueradeWriter, Error> {
        validate_network(network)?;
        Ok(MasqueradeWriter {
            network: network.to_string(),
            written: None,
        })
    }

    /// The chain's name (`inet twill <chain>`).
    pub fn chain(&self) -> String {
        masq_chain(&self.network)
    }

    /// What the kernel holds of the chain: the transaction for the ranges last written, or
    /// else for `want`, when the chain is there with that transaction's fingerprint and rule
    /// count (so a restarted agent recognises the chain it wrote before). Two netlink
    /// requests, no process.
    pub fn observe(&self, want: Option<&[IpNet]>) -> Result<NftState<String>, Error> {
        let chain = masq_chain(&self.network);
        let op = format!("checking the ipMasq chain inet {TABLE} {chain}");
        nfnl::with_sock(|sock| {
            let Some(comment) = nfnl::chain_comment(sock, NFPROTO_INET, TABLE, &chain)? else {
                return Ok(NftState::Absent);
            };
            let mut holds = |script: &str, rules: usize, mark: &str| {
                Ok::<_, NlError>(
                    (comment.as_deref() == Some(mark)
                        && nfnl::rule_count(sock, NFPROTO_INET, TABLE, &chain)? == rules)
                        .then(|| NftState::AsWritten(script.to_string())),
                )
            };
            if let Some((_, script, rules, mark)) = &self.written
                && let Some(state) = holds(script, *rules, mark)?
            {
                return Ok(state);
            }
            if let Some(want) = want
                && self.written.as_ref().is_none_or(|(w, ..)| w != want)
            {
                let (script, rules, mark) = marked_masquerade_script(&self.network, want);
                if let Some(state) = holds(&script, rules, &mark)? {
                    return Ok(state);
                }
            }
            Ok(NftState::Other)
        })
        .map_err(|e| nl_error(op, e, ""))
    }

    /// Rewrites the chain to masquerade `ranges` (one atomic `nft -f` transaction).
    pub fn write(&mut self, ranges: &[IpNet]) -> Result<(), Error> {
        if ranges.is_empty() {
            return Err(Error::NoRanges(self.network.clone()));
        }
        self.written = None;
        let (script, rules, mark) = marked_masquerade_script(&self.network, ranges);
        write_masq_chain(&self.network, &script)?;
        self.written = Some((ranges.to_vec(), script, rules, mark));
        Ok(())
    }

    /// Deletes the chain; fine when it is not there.
    pub fn remove(&mut self) -> Result<(), Error> {
        self.written = None;
        delete_masq_chain(&self.network)
    }
}

// ---- anti-spoofing ------------------------------------------------------------
//
// Bridge mode is an L2 segment shared by every pod of the node, so a port is
// bound to everything that names it on that segment: its frames' source MAC,
// the sender MAC and IP of its ARP, the source, target and link-layer option
// of its neighbour discovery, and its IP sources. What a pod may not be on
// the segment at all (a router, a DHCP server) is dropped whatever it claims.
//
// Why the NDP checks use their own sets: nft (1.0.6, Debian 12) has no
// expression for the ND target or ND options, so they are matched as raw
// transport-header fields (`@th,64,128`: target; `@th,192,16`/`@th,208,48`:
// type/length and address of the first option), and nft only looks a raw
// field up in a set declared with that same raw `typeof`. The key bytes are
// the same as in `allowed6` / `allowedmac`; the plugin writes both in one
// netlink transaction.
//
// IPv6 link-local sources: a pod's link-local address is the EUI-64 address
// of the MAC the plugin gave it (a fresh netns uses addr_gen_mode eui64), so
// binding the MAC binds it too: `allow_mac` records `fe80::<EUI-64>` in
// `allowed6` and `ndtarget6` next to the MAC. fe80::/10 is therefore no
// longer exempt in bridge mode: a pod cannot send NS/NA, MLD or anything else
// from another pod's (or the gateway's) link-local address. The only
// unbound source is `::`, accepted for DAD of the pod's own addresses and
// for MLD reports (RFC 3590), nothing else. A pod whose netns was configured
// to derive link-locals otherwise (stable_privacy) loses only its link-local
// traffic; its global addresses (which its kernel also uses for NDP with its
// gateway and peers) work.

/// Set of the MAC bound to each port (`ifname . ether_addr`, bridge table).
pub const SET_MAC: &str = "allowedmac";
/// The port's IPv6 addresses as an ND target field (bridge table).
pub const SET_ND_TARGET: &str = "ndtarget6";
/// The port's MAC as the address of an ND link-layer option (bridge table).
pub const SET_ND_LLADDR: &str = "ndlladdr";

/// One chain of the anti-spoofing ruleset.
struct ChainDef {
    name: &'static str,
    /// `type ... hook ... priority ...; policy ...;` for the base chain.
    base: Option<&'static str>,
    rules: Vec<String>,
}

/// The sets of a mode's table: name and declaration.
fn antispoof_sets(mode: Mode) -> Vec<(&'static str, &'static str)> {
    let mut sets = vec![
        (SET4, "type ifname . ipv4_addr;"),
        (SET6, "type ifname . ipv6_addr;"),
    ];
    if mode == Mode::Bridge {
        sets.push((SET_MAC, "type ifname . ether_addr;"));
        sets.push((SET_ND_TARGET, "typeof iifname . @th,64,128;"));
        sets.push((SET_ND_LLADDR, "typeof iifname . @th,208,48;"));
    }
    sets
}

/// The chains of a mode's anti-spoofing ruleset (base chain first).
fn antispoof_chains(mode: Mode) -> Vec<ChainDef> {
    // Only twill's veths are checked; every other port/interface passes.
    let not_ours = format!("iifname != \"{IFNAME_PREFIX}*\" accept");
    // A pod is never a DHCP server to its neighbours (server -> client replies;
    // a DHCP server in a pod that serves remote clients through relays
    // answers relay to relay, 67 -> 67 / 547 -> 547, which passes).
    let dhcp4 = "udp sport 67 udp dport 68 drop".to_string();
    let dhcp6 = "udp sport 547 udp dport 546 drop".to_string();
    match mode {
        Mode::Bridge => {
            // Every frame of a port carries the port's MAC; then each
            // protocol has its own chain (goto: the end of one is the end of
            // the base chain, whose policy accepts). Other ethertypes (VLAN
            // tags, STP/LLDP, raw protocols) are nothing a pod was given.
            let base = vec![
                not_ours,
                format!("iifname . ether saddr != @{SET_MAC} drop"),
                "ether type vmap { ip : goto as-ip4, arp : goto as-arp, ip6 : goto as-ip6 }"
                    .to_string(),
                "drop".to_string(),
            ];
            let ip4 = vec![format!("iifname . ip saddr != @{SET4} drop"), dhcp4];
            let arp = vec![
                // Ethernet/IPv4 ARP only (the offsets below assume it):
                // htype 1, ptype 0x0800, hlen 6, plen 4.
                "@nh,0,48 != 0x000108000604 drop".to_string(),
                format!("iifname . arp saddr ether != @{SET_MAC} drop"),
                // An ARP probe (RFC 5227) has sender 0.0.0.0 and may only
                // ask about the pod's own address.
                format!(
                    "arp operation request arp saddr ip 0.0.0.0 iifname . arp daddr ip @{SET4} accept"
                ),
                // Requests, replies and gratuitous ARP claim the sender IP.
                format!("iifname . arp saddr ip != @{SET4} drop"),
            ];
            let ip6 = vec![
                "ip6 saddr :: goto as-unspec6".to_string(),
                format!("iifname . ip6 saddr != @{SET6} drop"),
                dhcp6,
                "icmpv6 type vmap { nd-router-advert : drop, nd-redirect : drop, \
                 nd-neighbor-solicit : goto as-ns, nd-neighbor-advert : goto as-na }"
                    .to_string(),
            ];
            let unspec6 = vec![
                // Duplicate address detection, for the pod's own addresses only.
                format!(
                    "icmpv6 type nd-neighbor-solicit ip6 nexthdr ipv6-icmp iifname . @th,64,128 @{SET_ND_TARGET} accept"
                ),
                "icmpv6 type { mld-listener-report, mld2-listener-report } accept".to_string(),
                "drop".to_string(),
            ];
            // NS/NA: no extension headers (so the IPv6 payload length is the
            // ICMPv6 length), and either no option or exactly one
            // link-layer address option that is the port's MAC (Linux sends
            // no other NS/NA; where an option sits is what the kernel reads).
            let nd_lladdr = |ty: &str| {
                vec![
                    "ip6 length 24 accept".to_string(),
                    "ip6 length != 32 drop".to_string(),
                    format!("@th,192,16 != {ty} drop"),
                    format!("iifname . @th,208,48 != @{SET_ND_LLADDR} drop"),
                ]
            };
            let mut ns = vec!["ip6 nexthdr != ipv6-icmp drop".to_string()];
            ns.extend(nd_lladdr("0x0101")); // source link-layer address, 8 bytes
            let mut na = vec![
                "ip6 nexthdr != ipv6-icmp drop".to_string(),
                // An advertisement speaks for its target: the pod's own only.
                format!("iifname . @th,64,128 != @{SET_ND_TARGET} drop"),
            ];
            na.extend(nd_lladdr("0x0201")); // target link-layer address, 8 bytes
            vec![
                ChainDef {
                    name: ANTISPOOF_CHAIN,
                    base: Some("type filter hook prerouting priority -300; policy accept;"),
                    rules: base,
                },
                ChainDef {
                    name: "as-ip4",
                    base: None,
                    rules: ip4,
                },
                ChainDef {
                    name: "as-arp",
                    base: None,
                    rules: arp,
                },
                ChainDef {
                    name: "as-ip6",
                    base: None,
                    rules: ip6,
                },
                ChainDef {
                    name: "as-unspec6",
                    base: None,
                    rules: unspec6,
                },
                ChainDef {
                    name: "as-ns",
                    base: None,
                    rules: ns,
                },
                ChainDef {
                    name: "as-na",
                    base: None,
                    rules: na,
                },
            ]
        }
        Mode::Routed => {
            // A routed veth is a link to the host alone: ARP and NDP on it
            // can only speak to the host about the pod's own /32 and the
            // gateway, so only what the host itself would act on is dropped:
            // router advertisements (a host with accept_ra=2 would route via
            // the pod), redirects and DHCP replies. Link-local sources are
            // never forwarded off the veth, so they stay exempt here.
            let rules = vec![
                not_ours,
                // Only veths: with br_netfilter loaded, bridged packets also traverse inet
                // prerouting with the *bridge* as input interface, and a bridge named tw*
                // (the default twill0) must not be checked against per-veth entries here.
                "meta iifkind != \"veth\" accept".to_string(),
                format!("meta nfproto ipv4 iifname . ip saddr != @{SET4} drop"),
                format!(
                    "meta nfproto ipv6 ip6 saddr != {{ ::, fe80::/10 }} iifname . ip6 saddr != @{SET6} drop"
                ),
                "udp sport . udp dport { 67 . 68, 547 . 546 } drop".to_string(),
                "icmpv6 type { nd-router-advert, nd-redirect } drop".to_string(),
            ];
            vec![ChainDef {
                name: ANTISPOOF_CHAIN,
                base: Some("type filter hook prerouting priority raw; policy accept;"),
                rules,
            }]
        }
    }
}

/// The `nft -f` transaction creating both anti-spoofing tables. Only `add`
/// commands (idempotent, safe when two plugins race) and flushes of the
/// chains themselves (their rules are fully rewritten in the same
/// transaction); the sets, which hold live containers' addresses, are never
/// flushed.
fn antispoof_script() -> String {
    let mut s = String::new();
    for mode in [Mode::Bridge, Mode::Routed] {
        let fam = mode.family_name();
        let _ = writeln!(s, "add table {fam} {TABLE}");
        for (set, decl) in antispoof_sets(mode) {
            let _ = writeln!(s, "add set {fam} {TABLE} {set} {{ {decl} }}");
        }
        let chains = antispoof_chains(mode);
        // All chains exist before any rule refers to them.
        for c in &chains {
            match c.base {
                Some(spec) => {
                    let _ = writeln!(s, "add chain {fam} {TABLE} {} {{ {spec} }}", c.name);
                }
                None => {
                    let _ = writeln!(s, "add chain {fam} {TABLE} {}", c.name);
                }
            }
        }
        for c in &chains {
            let _ = writeln!(s, "flush chain {fam} {TABLE} {}", c.name);
        }
        for c in chains.iter().rev() {
            for r in &c.rules {
                let _ = writeln!(s, "add rule {fam} {TABLE} {} {r}", c.name);
            }
        }
    }
    s
}

const ANTISPOOF_STAMP: &str = "antispoof";

/// Is the anti-spoofing base of `mode` complete in the kernel? Two dumps
/// (the table's sets, the table's rules): this runs on every ADD.
fn antispoof_in_place(sock: &mut NfSock, mode: Mode) -> Result<bool, NlError> {
    let fam = mode.family();
    let sets = match nfnl::set_names(sock, fam, TABLE) {
        Ok(s) => s,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(false),
        Err(e) => return Err(e),
    };
    if !antispoof_sets(mode)
        .iter()
        .all(|(want, _)| sets.iter().any(|s| s == want))
    {
        return Ok(false);
    }
    // Every chain has rules, so a chain missing from the dump is a missing chain.
    let counts = nfnl::rule_counts(sock, fam, TABLE)?;
    Ok(antispoof_chains(mode)
        .iter()
        .all(|c| counts.get(c.name) == Some(&c.rules.len())))
}

/// Creates the anti-spoofing sets and chains of both tables if they are
/// missing or incomplete.
///
/// Cheap when everything is in place: a stamp in `state_dir` records the
/// transaction last applied (so a twill upgrade that changes the rules
/// re-applies them), and sets/chains/rule counts are checked over netlink.
///
/// Note: after someone flushed the whole ruleset, the recreated address sets
/// are empty, so existing containers' traffic is dropped until their sources
/// are allowed again ([`allow_source`]); the caller re-adds them from its
/// state. The port bindings of bridge mode (MAC, link-local, ND sets), which
/// the caller does not keep, are rebuilt here whenever one of their sets is
/// missing (after a flush, or on the first run after an upgrade from a
/// twill without them): from the kernel (each bridged `tw*` veth's peer MAC,
/// read in the peer's namespace) and from `allowed6`, in the same
/// transaction as the rules, so running pods never see a gap.
///
/// Returns true when an address set had to be (re)created, so the caller
/// knows to re-add sources.
pub fn ensure_antispoof_base(state_dir: &Path) -> Result<bool, Error> {
    let script = antispoof_script();
    let op = format!("checking the anti-spoofing tables bridge/inet {TABLE}");
    let check = |f: &dyn Fn(&mut NfSock) -> Result<bool, NlError>| {
        nfnl::with_sock(f).map_err(|e| nl_error(op.clone(), e, ""))
    };
    if read_stamp(&state_dir.join(ANTISPOOF_STAMP)).as_deref() == Some(script.as_str())
        && check(&|sock| {
            Ok(antispoof_in_place(sock, Mode::Bridge)? && antispoof_in_place(sock, Mode::Routed)?)
        })?
    {
        return Ok(false);
    }
    // Slow path only: whether every set survived decides if callers must re-add sources.
    let sets_present = check(&|sock| {
        for mode in [Mode::Bridge, Mode::Routed] {
            for set in [SET4, SET6] {
                if !nfnl::set_exists(sock, mode.family(), TABLE, set)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    let ports_present = check(&|sock| {
        for set in [SET_MAC, SET_ND_TARGET, SET_ND_LLADDR] {
            if !nfnl::set_exists(sock, NFPROTO_BRIDGE, TABLE, set)? {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    let mut full = script.clone();
    if !ports_present {
        full.push_str(&port_restore_script()?);
    }
    nftcli::apply(
        &format!(
            "creates the anti-spoofing sets and chains (tables bridge {TABLE} and inet {TABLE})"
        ),
        &full,
    )?;
    write_stamp(state_dir, ANTISPOOF_STAMP, &script)?;
    // Sets that existed keep their elements (they are never flushed); new ones start empty.
    Ok(!sets_present)
}

/// `add element` commands that rebuild the bridge port bindings from the
/// kernel: every bridged `tw*` veth is bound to its peer's current MAC (and
/// the link-local address derived from it), and every IPv6 address in
/// `bridge twill allowed6` becomes an ND target of its port. A MAC found on
/// more than one port is bound to none of them (someone copied it; the
/// plugin's ADD-time knowledge is gone, and guessing could hand the victim's
/// traffic to the copier).
fn port_restore_script() -> Result<String, Error> {
    let ports = peer_macs::bridge_port_peer_macs().map_err(|source| Error::Netlink {
        op: "reading the MACs of twill's bridged veths' peers (to rebuild the MAC bindings)"
            .to_string(),
        source,
        hint: "",
    })?;
    let mut seen: std::collections::HashMap<[u8; 6], usize> = std::collections::HashMap::new();
    for (_, mac) in &ports {
        *seen.entry(*mac).or_default() += 1;
    }
    let v6: Vec<(String, Ipv6Addr)> = match list_sources(Mode::Bridge) {
        Ok(l) => l
            .into_iter()
            .filter_map(|(n, a)| match a {
                IpAddr::V6(a) => Some((n, a)),
                IpAddr::V4(_) => None,
            })
            .collect(),
        Err(_) => Vec::new(), // no set yet: nothing to copy
    };
    let mut macs = Vec::new();
    let mut lladdrs = Vec::new();
    let mut targets = Vec::new();
    let mut lls = Vec::new();
    for (name, mac) in &ports {
        if seen[mac] != 1 || validate_ifname(name).is_err() {
            continue;
        }
        let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        macs.push(format!("\"{name}\" . {}", text.join(":")));
        lladdrs.push(format!("\"{name}\" . 0x{}", text.concat()));
        let ll = link_local(mac);
        lls.push(format!("\"{name}\" . {ll}"));
        targets.push(format!("\"{name}\" . 0x{:032x}", u128::from(ll)));
    }
    for (name, a) in &v6 {
        targets.push(format!("\"{name}\" . 0x{:032x}", u128::from(*a)));
    }
    let mut s = String::new();
    for (set, elems) in [
        (SET_MAC, &macs),
        (SET_ND_LLADDR, &lladdrs),
        (SET6, &lls),
        (SET_ND_TARGET, &targets),
    ] {
        if !elems.is_empty() {
            let _ = writeln!(
                s,
                "add element bridge {TABLE} {set} {{ {} }}",
                elems.join(", ")
            );
        }
    }
    Ok(s)
}

/// The link-local address a Linux interface with `mac` gets (EUI-64, RFC 4291).
pub fn link_local(mac: &[u8; 6]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8] = mac[0] ^ 0x02;
    o[9] = mac[1];
    o[10] = mac[2];
    o[11] = 0xff;
    o[12] = 0xfe;
    o[13] = mac[3];
    o[14] = mac[4];
    o[15] = mac[5];
    Ipv6Addr::from(o)
}

/// Is the masquerade chain of `network` in the kernel with at least one rule? (for CNI CHECK)
pub fn masquerade_present(network: &str) -> Result<bool, Error> {
    validate_network(network)?;
    let chain = masq_chain(network);
    let op = format!("checking the ipMasq chain inet {TABLE} {chain}");
    nfnl::with_sock(|sock| {
        Ok(nfnl::chain_exists(sock, NFPROTO_INET, TABLE, &chain)?
            && nfnl::rule_count(sock, NFPROTO_INET, TABLE, &chain)? > 0)
    })
    .map_err(|e| nl_error(op, e, ""))
}

/// The `nft` binary twill would run, if installed (for CNI STATUS).
pub fn nft_binary() -> Option<std::path::PathBuf> {
    nftcli::find_nft().ok()
}

/// Set element keys for `ifname . addr`, split by address family.
fn keys(ifname: &str, addrs: &[IpAddr]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let name = nfnl::ifname_field(ifname);
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for a in addrs {
        match a {
            IpAddr::V4(a) => v4.push(nfnl::concat_key(&[&name, &a.octets()])),
            IpAddr::V6(a) => v6.push(nfnl::concat_key(&[&name, &a.octets()])),
        }
    }
    v4.sort();
    v4.dedup();
    v6.sort();
    v6.dedup();
    (v4, v6)
}

/// The sets and keys that allow `addrs` on a port of `mode`: the address
/// sets, and in bridge mode the IPv6 addresses as ND targets too.
fn source_sets(mode: Mode, ifname: &str, addrs: &[IpAddr]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let (v4, v6) = keys(ifname, addrs);
    let mut sets = vec![(SET4, v4), (SET6, v6.clone())];
    if mode == Mode::Bridge {
        sets.push((SET_ND_TARGET, v6));
    }
    sets
}

/// The sets and keys binding bridge port `ifname` to `mac`: the MAC itself
/// (frames, ARP sender, ND option) and its EUI-64 link-local address (source,
/// ND target).
fn mac_sets(ifname: &str, mac: &[u8; 6]) -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let name = nfnl::ifname_field(ifname);
    let m = nfnl::concat_key(&[&name, mac]);
    let ll = nfnl::concat_key(&[&name, &link_local(mac).octets()]);
    vec![
        (SET_MAC, vec![m.clone()]),
        (SET_ND_LLADDR, vec![m]),
        (SET6, vec![ll.clone()]),
        (SET_ND_TARGET, vec![ll]),
    ]
}

fn decode_key(key: &[u8]) -> Option<(String, IpAddr)> {
    let (name, addr) = key.split_at_checked(nfnl::IFNAMSIZ)?;
    let name = name.split(|b| *b == 0).next().unwrap_or_default();
    let name = String::from_utf8_lossy(name).into_owned();
    let addr = match addr.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
        _ => return None,
    };
    Some((name, addr))
}

/// `ifname . ether_addr` keys: the MAC is padded to 8 bytes.
fn decode_mac_key(key: &[u8]) -> Option<(String, [u8; 6])> {
    let (name, mac) = key.split_at_checked(nfnl::IFNAMSIZ)?;
    if mac.len() != 8 {
        return None;
    }
    let name = name.split(|b| *b == 0).next().unwrap_or_default();
    let name = String::from_utf8_lossy(name).into_owned();
    Some((name, <[u8; 6]>::try_from(&mac[..6]).ok()?))
}

fn setelem_batch(
    sock: &mut NfSock,
    op: SetElementOp,
    flags: u16,
    mode: Mode,
    sets: &[(&str, Vec<Vec<u8>>)],
) -> Batch {
    let mut batch = Batch::new(sock);
    for (set, keys) in sets {
        if !keys.is_empty() {
            batch.push(
                op(nfnl::set_elements(TABLE, set, keys)),
                flags,
                mode.family(),
            );
        }
    }
    batch
}

fn describe(ifname: &str, addrs: &[IpAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("{ifname} . {{{}}}", list.join(", "))
}

const NO_SETS_HINT: &str = "the anti-spoofing sets do not exist: call ensure_antispoof_base first \
     (or the host's nftables ruleset was flushed since)";

/// Allows `ifname` to send with the source addresses `addrs` (adds
/// `ifname . addr` to the `allowed4`/`allowed6` sets of the mode's table,
/// and in bridge mode the IPv6 ones to `ndtarget6`). Re-adding present
/// elements is fine. One netlink transaction, no process.
pub fn allow_source(mode: Mode, ifname: &str, addrs: &[IpAddr]) -> Result<(), Error> {
    validate_ifname(ifname)?;
    if addrs.is_empty() {
        return Ok(());
    }
    let sets = source_sets(mode, ifname, addrs);
    let fam = mode.family_name();
    let op = format!(
        "allowing source {} in {fam} {TABLE} {SET4}/{SET6}",
        describe(ifname, addrs)
    );
    nfnl::with_sock(|sock| add_keys(sock, mode, &sets)).map_err(|e| nl_error(op, e, NO_SETS_HINT))
}

/// Stops allowing `ifname` to send with `addrs`. Idempotent: elements (or
/// sets) that are already gone are not an error.
pub fn forget_source(mode: Mode, ifname: &str, addrs: &[IpAddr]) -> Result<(), Error> {
    validate_ifname(ifname)?;
    if addrs.is_empty() {
        return Ok(());
    }
    let sets = source_sets(mode, ifname, addrs);
    let fam = mode.family_name();
    let op = format!(
        "forgetting source {} in {fam} {TABLE} {SET4}/{SET6}",
        describe(ifname, addrs)
    );
    nfnl::with_sock(|sock| forget_keys(sock, mode, &sets)).map_err(|e| nl_error(op, e, ""))
}

/// Binds bridge port `ifname` to the MAC of the pod behind it (the MAC the
/// plugin gave the pod's end of the veth): from then on the port's frames,
/// ARP sender and ND link-layer options must carry `mac`, and its IPv6
/// link-local source and ND target may be `fe80::<EUI-64 of mac>`. One
/// netlink transaction, no process. Routed mode has no L2 neighbours to
/// protect: a no-op there.
pub fn allow_mac(mode: Mode, ifname: &str, mac: [u8; 6]) -> Result<(), Error> {
    validate_ifname(ifname)?;
    if mode == Mode::Routed {
        return Ok(());
    }
    let sets = mac_sets(ifname, &mac);
    let op = format!(
        "binding {ifname} to MAC {} in bridge {TABLE} {SET_MAC}",
        MacAddr(mac)
    );
    nfnl::with_sock(|sock| add_keys(sock, mode, &sets)).map_err(|e| nl_error(op, e, NO_SETS_HINT))
}

/// Removes the MAC binding(s) of bridge port `ifname`, and only those
/// (with the link-local address derived from each). Idempotent. Costs a
/// dump of the MAC set (one element per pod of the node).
pub fn forget_mac(mode: Mode, ifname: &str) -> Result<(), Error> {
    validate_ifname(ifname)?;
    let macs: Vec<[u8; 6]> = list_macs(mode)?
        .into_iter()
        .filter(|(n, _)| n == ifname)
        .map(|(_, m)| m)
        .collect();
    forget_macs_of(mode, ifname, &macs)
}

fn forget_macs_of(mode: Mode, ifname: &str, macs: &[[u8; 6]]) -> Result<(), Error> {
    if mode == Mode::Routed || macs.is_empty() {
        return Ok(());
    }
    let mut sets: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    for mac in macs {
        for (set, keys) in mac_sets(ifname, mac) {
            match sets.iter_mut().find(|(s, _)| *s == set) {
                Some((_, k)) => k.extend(keys),
                None => sets.push((set, keys)),
            }
        }
    }
    let list: Vec<String> = macs.iter().map(|m| MacAddr(*m).to_string()).collect();
    let op = format!(
        "unbinding {ifname} from MAC {} in bridge {TABLE} {SET_MAC}",
        list.join(", ")
    );
    nfnl::with_sock(|sock| forget_keys(sock, mode, &sets)).map_err(|e| nl_error(op, e, ""))
}

/// All `(ifname, MAC)` bindings of the mode's table (empty in routed mode
/// and when the set is missing).
pub fn list_macs(mode: Mode) -> Result<Vec<(String, [u8; 6])>, Error> {
    if mode == Mode::Routed {
        return Ok(Vec::new());
    }
    let op = format!("listing bridge {TABLE} {SET_MAC}");
    let keys = match nfnl::with_sock(|sock| nfnl::set_keys(sock, NFPROTO_BRIDGE, TABLE, SET_MAC)) {
        Ok(k) => k,
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(nl_error(op, e, "")),
    };
    let mut out = Vec::new();
    for key in keys {
        out.push(decode_mac_key(&key).ok_or_else(|| Error::Protocol {
            op: op.clone(),
            detail: format!(
                "set element key of {} bytes is not ifname . ether_addr",
                key.len()
            ),
        })?);
    }
    out.sort();
    Ok(out)
}

/// Is bridge port `ifname` bound to `mac`? (for CNI CHECK; always true in
/// routed mode, which binds no MAC)
pub fn mac_allowed(mode: Mode, ifname: &str, mac: [u8; 6]) -> Result<bool, Error> {
    validate_ifname(ifname)?;
    if mode == Mode::Routed {
        return Ok(true);
    }
    let key = nfnl::concat_key(&[&nfnl::ifname_field(ifname), &mac]);
    let op = format!(
        "looking up {ifname} . {} in bridge {TABLE} {SET_MAC}",
        MacAddr(mac)
    );
    nfnl::with_sock(|sock| nfnl::set_has_key(sock, NFPROTO_BRIDGE, TABLE, SET_MAC, &key))
        .map_err(|e| nl_error(op, e, ""))
}

/// Removes the MAC bindings of ports whose interface no longer exists in
/// this namespace (for GC: a binding names an interface, not a network, so
/// the interface's absence is what proves it is nobody's).
pub fn forget_stale_macs(mode: Mode) -> Result<(), Error> {
    let mut by_port: std::collections::BTreeMap<String, Vec<[u8; 6]>> = Default::default();
    for (name, mac) in list_macs(mode)? {
        by_port.entry(name).or_default().push(mac);
    }
    for (name, macs) in by_port {
        if validate_ifname(&name).is_err() {
            continue;
        }
        match nix::net::if_::if_nametoindex(name.as_str()) {
            Ok(_) => continue,
            Err(nix::errno::Errno::ENODEV) => {}
            Err(e) => {
                return Err(Error::Netlink {
                    op: format!("looking up interface {name}"),
                    source: io::Error::from(e),
                    hint: "",
                });
            }
        }
        forget_macs_of(mode, &name, &macs)?;
    }
    Ok(())
}

/// Deletes the present ones among the keys of `sets`.
///
/// Why look first: a transaction deleting an absent element fails, and the
/// kernel's abort waits for an RCU grace period (~15 ms), as does every retry.
/// A lookup costs microseconds. (Kernels >= 6.3 have DESTROYSETELEM, which
/// ignores absent elements, but Debian 12's 6.1 does not.)
/// Adds the keys to their sets in one batch. NLM_F_CREATE without NLM_F_EXCL: an element that
/// is already there is not an error.
fn add_keys(sock: &mut NfSock, mode: Mode, sets: &[(&str, Vec<Vec<u8>>)]) -> Result<(), NlError> {
    let batch = setelem_batch(
        sock,
        NfTablesMessage::NewSetElement,
        nfnl::NLM_F_CREATE,
        mode,
        sets,
    );
    sock.batch(batch)
}

fn forget_keys(
    sock: &mut NfSock,
    mode: Mode,
    sets: &[(&str, Vec<Vec<u8>>)],
) -> Result<(), NlError> {
    let fam = mode.family();
    let mut present: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
    for (set, keys) in sets {
        let mut here = Vec::new();
        for key in keys {
            // A missing set or table also answers ENOENT: nothing to forget.
            if nfnl::set_has_key(sock, fam, TABLE, set, key)? {
                here.push(key.clone());
            }
        }
        if !here.is_empty() {
            present.push((set, here));
        }
    }
    if present.is_empty() {
        return Ok(());
    }
    let batch = setelem_batch(sock, NfTablesMessage::DeleteSetElement, 0, mode, &present);
    match sock.batch(batch) {
        Err(e) if e.errno() == Some(libc::ENOENT) => {}
        other => return other,
    }
    // Lost a race with another deleter: one missing element aborts the whole
    // batch, so delete one by one, skipping those already gone.
    for (set, keys) in &present {
        for key in keys {
            let mut batch = Batch::new(sock);
            let one = nfnl::set_elements(TABLE, set, std::slice::from_ref(key));
            batch.push(NfTablesMessage::DeleteSetElement(one), 0, fam);
            match sock.batch(batch) {
                Err(e) if e.errno() != Some(libc::ENOENT) => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// All `(ifname, source address)` pairs allowed in the mode's table (for GC
/// and CNI CHECK). Missing sets yield an empty list. In bridge mode this
/// includes the link-local address of each MAC binding ([`allow_mac`]),
/// which [`forget_mac`] removes with the MAC.
pub fn list_sources(mode: Mode) -> Result<Vec<(String, IpAddr)>, Error> {
    let fam = mode.family_name();
    let op = format!("listing {fam} {TABLE} {SET4}/{SET6}");
    let mut out = Vec::new();
    for set in [SET4, SET6] {
        let keys = match nfnl::with_sock(|sock| nfnl::set_keys(sock, mode.family(), TABLE, set)) {
            Ok(k) => k,
            Err(e) if e.errno() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(nl_error(op, e, "")),
        };
        for key in keys {
            let pair = decode_key(&key).ok_or_else(|| Error::Protocol {
                op: op.clone(),
                detail: format!(
                    "set element key of {} bytes is not ifname . address",
                    key.len()
                ),
            })?;
            out.push(pair);
        }
    }
    out.sort();
    Ok(out)
}

/// Is `ifname` allowed to send with source `addr`? (for CNI CHECK)
pub fn source_allowed(mode: Mode, ifname: &str, addr: IpAddr) -> Result<bool, Error> {
    validate_ifname(ifname)?;
    let (v4, v6) = keys(ifname, &[addr]);
    let (set, key) = match (v4.first(), v6.first()) {
        (Some(k), _) => (SET4, k),
        (None, Some(k)) => (SET6, k),
        (None, None) => unreachable!("one address gives one key"),
    };
    let op = format!(
        "looking up {} in {} {TABLE} {set}",
        describe(ifname, &[addr]),
        mode.family_name()
    );
    // ENOENT (no such element, or no such set) is "not allowed".
    nfnl::with_sock(|sock| nfnl::set_has_key(sock, mode.family(), TABLE, set, key))
        .map_err(|e| nl_error(op, e, ""))
}

/// Reading the MACs of the pods behind twill's bridge ports straight from the
/// kernel, for rebuilding the bindings when their sets are gone (a flushed
/// ruleset, an upgrade from a twill without them). Slow path only.
///
/// A veth's dump entry names its peer (`IFLA_LINK`) and the peer's namespace
/// as an id of this namespace (`IFLA_LINK_NETNSID`); `RTM_GETLINK` with
/// `IFLA_TARGET_NETNSID` (Linux >= 4.20) reads the peer there without
/// entering it. Hand-encoded (the layouts are in
/// `include/uapi/linux/if_link.h` and `rtnetlink.h`) and read with `nfnl`'s
/// generic netlink reply helpers.
mod peer_macs {
    use std::io;
    use std::os::fd::AsFd;

    use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    use crate::nfnl::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

    const RTM_GETLINK: u16 = 18;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const IFLA_ADDRESS: u16 = 1;
    const IFLA_IFNAME: u16 = 3;
    const IFLA_LINK: u16 = 5;
    const IFLA_MASTER: u16 = 10;
    const IFLA_LINKINFO: u16 = 18;
    const IFLA_INFO_KIND: u16 = 1;
    const IFLA_LINK_NETNSID: u16 = 37;
    const IFLA_TARGET_NETNSID: u16 = 46;
    const IFINFOMSG_LEN: usize = 16;

    fn malformed(what: &str) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, what.to_string())
    }

    fn nl_io(e: nfnl::NlError) -> io::Error {
        match e {
            nfnl::NlError::Io(e) => e,
            nfnl::NlError::Kernel { errno, .. } => io::Error::from_raw_os_error(errno),
            nfnl::NlError::Malformed(m) => malformed(&m),
        }
    }

    struct Rtnl {
        sock: Socket,
        seq: u32,
        buf: Vec<u8>,
    }

    impl Rtnl {
        fn open() -> io::Result<Rtnl> {
            let mut sock = Socket::new(NETLINK_ROUTE)?;
            sock.bind_auto()?;
            sock.connect(&SocketAddr::new(0, 0))?;
            let tv = nix::sys::time::TimeVal::new(2, 0);
            nix::sys::socket::setsockopt(
                &sock.as_fd(),
                nix::sys::socket::sockopt::ReceiveTimeout,
                &tv,
            )
            .map_err(io::Error::from)?;
            Ok(Rtnl {
                sock,
                seq: 0,
                buf: Vec::with_capacity(256 * 1024),
            })
        }

        /// One `RTM_GETLINK` (a dump when `index` is 0); returns the
        /// payloads (ifinfomsg + attributes) of the answers.
        fn getlink(&mut self, index: i32, netnsid: Option<i32>) -> io::Result<Vec<Vec<u8>>> {
            self.seq += 1;
            let seq = self.seq;
            let flags = NLM_F_REQUEST | if index == 0 { NLM_F_DUMP } else { NLM_F_ACK };
            let mut m = Vec::with_capacity(48);
            m.extend_from_slice(&0u32.to_ne_bytes()); // length, patched below
            m.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
            m.extend_from_slice(&flags.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            // ifinfomsg: family AF_UNSPEC, pad, type, index, flags, change
            m.extend_from_slice(&[0, 0, 0, 0]);
            m.extend_from_slice(&index.to_ne_bytes());
            m.extend_from_slice(&[0; 8]);
            if let Some(id) = netnsid {
                m.extend_from_slice(&8u16.to_ne_bytes());
                m.extend_from_slice(&IFLA_TARGET_NETNSID.to_ne_bytes());
                m.extend_from_slice(&id.to_ne_bytes());
            }
            let len = m.len() as u32;
            m[..4].copy_from_slice(&len.to_ne_bytes());
            if self.sock.send(&m, 0)? != m.len() {
                return Err(malformed("short netlink send"));
            }
            let mut out = Vec::new();
            loop {
                self.buf.clear();
                let n = self.sock.recv(&mut self.buf, libc::MSG_TRUNC)?;
                if n > self.buf.len() {
                    return Err(malformed("netlink reply truncated"));
                }
                for msg in nfnl::parse_msgs(&self.buf).map_err(nl_io)? {
                    if msg.seq != seq {
                        continue;
                    }
                    match msg.ty {
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let (errno, _) = nfnl::parse_error(&msg).map_err(nl_io)?;
                            return if errno == 0 {
                                Ok(out)
                            } else {
                                Err(io::Error::from_raw_os_error(errno))
                            };
                        }
                        _ => out.push(msg.payload.to_vec()),
                    }
                }
            }
        }
    }

    fn attrs(payload: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
        let body = payload
            .get(IFINFOMSG_LEN..)
            .ok_or_else(|| malformed("short ifinfomsg"))?;
        nfnl::parse_attrs(body).map_err(nl_io)
    }

    fn i32_of(b: &[u8]) -> Option<i32> {
        Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
    }

    /// `(host veth name, peer MAC)` for every `tw*` veth that is a port of a
    /// bridge. A peer that vanished meanwhile is skipped.
    pub fn bridge_port_peer_macs() -> io::Result<Vec<(String, [u8; 6])>> {
        let mut rt = Rtnl::open()?;
        let mut ports = Vec::new();
        for payload in rt.getlink(0, None)? {
            let a = attrs(&payload)?;
            let name = match nfnl::find_attr(&a, IFLA_IFNAME) {
                Some(n) => String::from_utf8_lossy(n.split(|b| *b == 0).next().unwrap_or_default())
                    .into_owned(),
                None => continue,
            };
            let is_veth = nfnl::find_attr(&a, IFLA_LINKINFO)
                .and_then(|li| nfnl::parse_attrs(li).ok())
                .and_then(|li| nfnl::find_attr(&li, IFLA_INFO_KIND).map(|k| k.starts_with(b"veth")))
                .unwrap_or(false);
            if !name.starts_with(super::IFNAME_PREFIX)
                || !is_veth
                || nfnl::find_attr(&a, IFLA_MASTER).is_none()
            {
                continue;
            }
            let Some(peer) = nfnl::find_attr(&a, IFLA_LINK).and_then(i32_of) else {
                continue;
            };
            let nsid = nfnl::find_attr(&a, IFLA_LINK_NETNSID).and_then(i32_of);
            ports.push((name, peer, nsid));
        }
        let mut out = Vec::new();
        for (name, peer, nsid) in ports {
            let answer = match rt.getlink(peer, nsid) {
                Ok(a) => a,
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue,
                Err(e) => return Err(e),
            };
            for payload in answer {
                let a = attrs(&payload)?;
                if let Some(mac) =
                    nfnl::find_attr(&a, IFLA_ADDRESS).and_then(|m| <[u8; 6]>::try_from(m).ok())
                {
                    out.push((name.clone(), mac));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn masquerade_rules_single_and_multiple_ranges() {
        assert_eq!(
            masquerade_rules(&nets(&["10.88.0.0/16", "fd88::/64"])),
            vec![
                "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade",
                "ip6 saddr fd88::/64 ip6 daddr != { fd88::/64, ff00::/8 } masquerade",
            ]
        );
        // host bits cleared, overlaps merged, order normalised
        assert_eq!(
            masquerade_rules(&nets(&["10.99.0.0/24", "10.88.0.5/16", "10.88.1.0/24"])),
            vec![
                "ip saddr { 10.88.0.0/16, 10.99.0.0/24 } ip daddr != { 10.88.0.0/16, 10.99.0.0/24, 224.0.0.0/4 } masquerade"
            ]
        );
    }

    #[test]
    fn masquerade_script_shape() {
        let (s, n) = masquerade_script("net-1.a_b", &nets(&["10.88.0.0/16"]));
        assert_eq!(n, 1);
        assert_eq!(
            s,
            "add table inet twill\n\
             add chain inet twill masq-net-1.a_b { type nat hook postrouting priority srcnat; policy accept; }\n\
             flush chain inet twill masq-net-1.a_b\n\
             add rule inet twill masq-net-1.a_b ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade\n"
        );
    }

    #[test]
    fn the_agents_chain_is_recreated_with_the_fingerprint_of_its_rules() {
        let ranges = nets(&["10.88.0.0/16"]);
        let (s, n, mark) = marked_masquerade_script("net-1.a_b", &ranges);
        assert_eq!(n, 1);
        let rule = "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade";
        assert_eq!(mark, fingerprint(rule));
        assert_eq!(
            s,
            format!(
                "add table inet twill\n\
                 add chain inet twill masq-net-1.a_b {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                 delete chain inet twill masq-net-1.a_b\n\
                 add chain inet twill masq-net-1.a_b {{ type nat hook postrouting priority srcnat; policy accept; comment \"{mark}\"; }}\n\
                 add rule inet twill masq-net-1.a_b {rule}\n"
            )
        );
        let (_, _, other) = marked_masquerade_script("net-1.a_b", &nets(&["10.89.0.0/16"]));
        assert_ne!(mark, other);
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_network("cni0-net_1.x").is_ok());
        for bad in ["", "a b", "a;b", "a/b", "ä", &"x".repeat(251)] {
            assert!(validate_network(bad).is_err(), "{bad:?}");
        }
        assert!(validate_ifname("tw0123456789abc").is_ok());
        for bad in ["", "eth0", "tw0123456789abcd", "tw a", "tw/a", "tw:1"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        let e = validate_ifname("eth0").unwrap_err().to_string();
        assert!(e.contains("\"tw\""), "{e}");
    }

    #[test]
    fn keys_round_trip() {
        let addrs: Vec<IpAddr> = vec!["10.88.0.5".parse().unwrap(), "fd88::5".parse().unwrap()];
        let (v4, v6) = keys("tw1234", &addrs);
        assert_eq!(v4[0].len(), 20);
        assert_eq!(v6[0].len(), 32);
        assert_eq!(decode_key(&v4[0]), Some(("tw1234".into(), addrs[0])));
        assert_eq!(decode_key(&v6[0]), Some(("tw1234".into(), addrs[1])));
        assert_eq!(decode_key(&[0; 7]), None);
    }

    #[test]
    fn link_local_is_eui64_of_the_mac() {
        let mac = [0x4a, 0xaf, 0xd5, 0x90, 0xe2, 0x7c];
        assert_eq!(
            link_local(&mac),
            "fe80::48af:d5ff:fe90:e27c".parse::<Ipv6Addr>().unwrap()
        );
        let sets = mac_sets("tw1", &mac);
        assert_eq!(sets[0].0, SET_MAC);
        assert_eq!(sets[0].1[0].len(), 24);
        assert_eq!(decode_mac_key(&sets[0].1[0]), Some(("tw1".into(), mac)));
        assert_eq!(sets[0].1, sets[1].1, "ND option key = MAC key");
        assert_eq!(sets[2].1, sets[3].1, "ND target key = source key");
        assert_eq!(
            decode_key(&sets[2].1[0]),
            Some(("tw1".into(), IpAddr::V6(link_local(&mac))))
        );
        assert_eq!(decode_mac_key(&[0; 20]), None);
    }

    #[test]
    fn every_chain_has_rules_and_jumps_only_to_its_own_chains() {
        for mode in [Mode::Bridge, Mode::Routed] {
            let chains = antispoof_chains(mode);
            let names: Vec<&str> = chains.iter().map(|c| c.name).collect();
            for c in &chains {
                // antispoof_in_place counts on it: a chain without rules looks missing.
                assert!(!c.rules.is_empty(), "{}", c.name);
                for r in &c.rules {
                    for w in r.split_whitespace().collect::<Vec<_>>().windows(2) {
                        if w[0] == "goto" || w[0] == "jump" {
                            let target = w[1].trim_end_matches([',', '}']);
                            assert!(names.contains(&target), "{r}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn antispoof_script_only_adds_and_never_flushes_sets() {
        let s = antispoof_script();
        for line in s.lines() {
            assert!(
                line.starts_with("add ") || line.starts_with("flush chain "),
                "{line}"
            );
        }
        assert!(s.contains(
            "add chain bridge twill antispoof { type filter hook prerouting priority -300;"
        ));
        assert!(s.contains(
            "add chain inet twill antispoof { type filter hook prerouting priority raw;"
        ));
    }
}
