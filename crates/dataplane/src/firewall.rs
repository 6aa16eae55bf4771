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
//! Ruleset (the anti-spoofing part is the same in both families, matched on
//! the host ends of container veths, which twill names `tw*`):
//!
//! ```text
//! table bridge twill {                      # bridge mode: veth is a bridge port
//!   set allowed4 { type ifname . ipv4_addr; }
//!   set allowed6 { type ifname . ipv6_addr; }
//!   chain antispoof {
//!     type filter hook prerouting priority -300; policy accept;
//!     iifname != "tw*" accept
//!     ether type ip iifname . ip saddr != @allowed4 drop
//!     ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @allowed4 drop
//!     ether type ip6 ip6 saddr != { ::, fe80::/10 } iifname . ip6 saddr != @allowed6 drop
//!   }
//! }
//! table inet twill {                        # routed mode + masquerade
//!   set allowed4 { ... } set allowed6 { ... }
//!   chain antispoof { type filter hook prerouting priority raw; ... same checks ... }
//!   chain masq-<network> {
//!     type nat hook postrouting priority srcnat; policy accept;
//!     ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade
//!     ip6 saddr fd88::/64 ip6 daddr != { fd88::/64, ff00::/8 } masquerade
//!   }
//! }
//! ```

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::Error;
use crate::nfnl::{self, Batch, NFPROTO_BRIDGE, NFPROTO_INET, NfSock, NlError, msg};
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

/// Writes a stamp atomically (temp file + rename) so a concurrent reader sees
/// the old or the new content, never a torn one. No fsync: losing a stamp
/// only costs one re-apply.
fn write_stamp(dir: &Path, name: &str, content: &str) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::State {
        action: "create the state directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(name);
    // Unique per process and call, so concurrent writers never share a temp file.
    static TMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    std::fs::write(&tmp, content).map_err(|source| Error::State {
        action: "write",
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        Error::State {
            action: "rename a stamp into",
            path: path.clone(),
            source,
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

/// The `nft -f` transaction that (re)creates a network's masquerade chain,
/// and the number of rules it holds.
fn masquerade_script(network: &str, ranges: &[IpNet]) -> (String, usize) {
    let chain = masq_chain(network);
    let rules = masquerade_rules(ranges);
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {TABLE}");
    let _ = writeln!(
        s,
        "add chain inet {TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}"
    );
    let _ = writeln!(s, "flush chain inet {TABLE} {chain}");
    for r in &rules {
        let _ = writeln!(s, "add rule inet {TABLE} {chain} {r}");
    }
    (s, rules.len())
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
    if read_stamp(&state_dir.join(&stamp_name)).as_deref() == Some(script.as_str()) {
        let op = format!("checking the ipMasq chain inet {TABLE} {chain}");
        let present = nfnl::with_sock(|sock| {
            Ok(nfnl::chain_exists(sock, NFPROTO_INET, TABLE, &chain)?
                && nfnl::rule_count(sock, NFPROTO_INET, TABLE, &chain)? == nrules)
        })
        .map_err(|e| nl_error(op, e, ""))?;
        if present {
            return Ok(());
        }
    }
    nftcli::apply(
        &format!("sets up ipMasq for network {network:?} (chain inet {TABLE} {chain})"),
        &script,
    )?;
    write_stamp(state_dir, &stamp_name, &script)
}

/// Deletes the masquerade chain of `network` and its stamp. Idempotent.
pub fn remove_masquerade(state_dir: &Path, network: &str) -> Result<(), Error> {
    validate_network(network)?;
    let chain = masq_chain(network);
    let op = format!("deleting the ipMasq chain inet {TABLE} {chain}");
    let res = nfnl::with_sock(|sock| {
        let mut batch = Batch::new(sock);
        let b = batch.msg(msg::DELCHAIN, 0, NFPROTO_INET);
        b.attr_strz(nfnl::attr::NFTA_CHAIN_TABLE, TABLE);
        b.attr_strz(nfnl::attr::NFTA_CHAIN_NAME, &chain);
        sock.batch(batch)
    });
    match res {
        Ok(()) => {}
        Err(e) if e.errno() == Some(libc::ENOENT) => {} // already gone
        Err(e) => return Err(nl_error(op, e, "")),
    }
    remove_stamp(state_dir.join(&chain))
}

// ---- anti-spoofing ------------------------------------------------------------

/// Rules of the anti-spoofing chain for one family (without `add rule`).
fn antispoof_rules(mode: Mode) -> Vec<String> {
    // Only twill's veths are checked; every other port/interface passes.
    let mut rules = vec![format!("iifname != \"{IFNAME_PREFIX}*\" accept")];
    match mode {
        Mode::Bridge => {
            rules.push(format!("ether type ip iifname . ip saddr != @{SET4} drop"));
            // ARP claims an address too (gratuitous ARP could hijack another
            // container's IP); probes use sender 0.0.0.0 and must pass.
            rules.push(format!(
                "ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @{SET4} drop"
            ));
            // Link-local and :: are needed by NDP/DAD/MLD before and besides
            // the container's configured addresses.
            rules.push(format!(
                "ether type ip6 ip6 saddr != {{ ::, fe80::/10 }} iifname . ip6 saddr != @{SET6} drop"
            ));
        }
        Mode::Routed => {
            // Only veths: with br_netfilter loaded, bridged packets also traverse inet
            // prerouting with the *bridge* as input interface, and a bridge named tw*
            // (the default twill0) must not be checked against per-veth entries here.
            rules.push("meta iifkind != \"veth\" accept".to_string());
            rules.push(format!(
                "meta nfproto ipv4 iifname . ip saddr != @{SET4} drop"
            ));
            rules.push(format!(
                "meta nfproto ipv6 ip6 saddr != {{ ::, fe80::/10 }} iifname . ip6 saddr != @{SET6} drop"
            ));
        }
    }
    rules
}

/// The `nft -f` transaction creating both anti-spoofing tables. Only `add`
/// commands (idempotent, safe when two plugins race) and a flush of the
/// chains themselves (the rules are fully rewritten in the same transaction);
/// the sets, which hold live containers' addresses, are never flushed.
fn antispoof_script() -> String {
    let mut s = String::new();
    for mode in [Mode::Bridge, Mode::Routed] {
        let fam = mode.family_name();
        let (hook_prio, chain) = match mode {
            Mode::Bridge => ("-300", ANTISPOOF_CHAIN),
            Mode::Routed => ("raw", ANTISPOOF_CHAIN),
        };
        let _ = writeln!(s, "add table {fam} {TABLE}");
        let _ = writeln!(
            s,
            "add set {fam} {TABLE} {SET4} {{ type ifname . ipv4_addr; }}"
        );
        let _ = writeln!(
            s,
            "add set {fam} {TABLE} {SET6} {{ type ifname . ipv6_addr; }}"
        );
        let _ = writeln!(
            s,
            "add chain {fam} {TABLE} {chain} {{ type filter hook prerouting priority {hook_prio}; policy accept; }}"
        );
        let _ = writeln!(s, "flush chain {fam} {TABLE} {chain}");
        for r in antispoof_rules(mode) {
            let _ = writeln!(s, "add rule {fam} {TABLE} {chain} {r}");
        }
    }
    s
}

const ANTISPOOF_STAMP: &str = "antispoof";

/// Is the anti-spoofing base of `mode` complete in the kernel?
fn antispoof_in_place(sock: &mut NfSock, mode: Mode) -> Result<bool, NlError> {
    let fam = mode.family();
    Ok(nfnl::set_exists(sock, fam, TABLE, SET4)?
        && nfnl::set_exists(sock, fam, TABLE, SET6)?
        && nfnl::chain_exists(sock, fam, TABLE, ANTISPOOF_CHAIN)?
        && nfnl::rule_count(sock, fam, TABLE, ANTISPOOF_CHAIN)? == antispoof_rules(mode).len())
}

/// Creates the anti-spoofing sets and chains of both tables if they are
/// missing or incomplete.
///
/// Cheap when everything is in place: a stamp in `state_dir` records the
/// transaction last applied (so a twill upgrade that changes the rules
/// re-applies them), and sets/chains/rule counts are checked over netlink.
///
/// Note: after someone flushed the whole ruleset, the recreated sets are
/// empty, so existing containers' traffic is dropped until their sources are
/// allowed again ([`allow_source`]); the caller re-adds them from its state.
///
/// Returns true when it had to (re)create them, so the caller knows to re-add sources.
pub fn ensure_antispoof_base(state_dir: &Path) -> Result<bool, Error> {
    let script = antispoof_script();
    let op = format!("checking the anti-spoofing tables bridge/inet {TABLE}");
    let check = |f: fn(&mut NfSock) -> Result<bool, NlError>| {
        nfnl::with_sock(f).map_err(|e| nl_error(op.clone(), e, ""))
    };
    if read_stamp(&state_dir.join(ANTISPOOF_STAMP)).as_deref() == Some(script.as_str())
        && check(|sock| {
            Ok(antispoof_in_place(sock, Mode::Bridge)? && antispoof_in_place(sock, Mode::Routed)?)
        })?
    {
        return Ok(false);
    }
    // Slow path only: whether every set survived decides if callers must re-add sources.
    let sets_present = check(|sock| {
        for mode in [Mode::Bridge, Mode::Routed] {
            for set in [SET4, SET6] {
                if !nfnl::set_exists(sock, mode.family(), TABLE, set)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    })?;
    nftcli::apply(
        &format!(
            "creates the anti-spoofing sets and chains (tables bridge {TABLE} and inet {TABLE})"
        ),
        &script,
    )?;
    write_stamp(state_dir, ANTISPOOF_STAMP, &script)?;
    // Sets that existed keep their elements (they are never flushed); new ones start empty.
    Ok(!sets_present)
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

fn setelem_batch(
    sock: &mut NfSock,
    m: u16,
    flags: u16,
    mode: Mode,
    v4: &[Vec<u8>],
    v6: &[Vec<u8>],
) -> Batch {
    let mut batch = Batch::new(sock);
    for (set, keys) in [(SET4, v4), (SET6, v6)] {
        if !keys.is_empty() {
            nfnl::put_setelems(batch.msg(m, flags, mode.family()), TABLE, set, keys);
        }
    }
    batch
}

fn describe(ifname: &str, addrs: &[IpAddr]) -> String {
    let list: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    format!("{ifname} . {{{}}}", list.join(", "))
}

/// Allows `ifname` to send with the source addresses `addrs` (adds
/// `ifname . addr` to the `allowed4`/`allowed6` sets of the mode's table).
/// Re-adding present elements is fine. One netlink transaction, no process.
pub fn allow_source(mode: Mode, ifname: &str, addrs: &[IpAddr]) -> Result<(), Error> {
    validate_ifname(ifname)?;
    if addrs.is_empty() {
        return Ok(());
    }
    let (v4, v6) = keys(ifname, addrs);
    let fam = mode.family_name();
    let op = format!(
        "allowing source {} in {fam} {TABLE} {SET4}/{SET6}",
        describe(ifname, addrs)
    );
    nfnl::with_sock(|sock| {
        // NLM_F_CREATE without NLM_F_EXCL: an existing element is not an error.
        let batch = setelem_batch(sock, msg::NEWSETELEM, nfnl::NLM_F_CREATE, mode, &v4, &v6);
        sock.batch(batch)
    })
    .map_err(|e| {
        nl_error(
            op,
            e,
            "the anti-spoofing sets do not exist: call ensure_antispoof_base first \
             (or the host's nftables ruleset was flushed since)",
        )
    })
}

/// Stops allowing `ifname` to send with `addrs`. Idempotent: elements (or
/// sets) that are already gone are not an error.
pub fn forget_source(mode: Mode, ifname: &str, addrs: &[IpAddr]) -> Result<(), Error> {
    validate_ifname(ifname)?;
    if addrs.is_empty() {
        return Ok(());
    }
    let (v4, v6) = keys(ifname, addrs);
    let fam = mode.family_name();
    let op = format!(
        "forgetting source {} in {fam} {TABLE} {SET4}/{SET6}",
        describe(ifname, addrs)
    );
    nfnl::with_sock(|sock| forget_keys(sock, mode, &v4, &v6)).map_err(|e| nl_error(op, e, ""))
}

/// Deletes the present ones among `v4`/`v6` keys.
///
/// Why look first: a transaction deleting an absent element fails, and the
/// kernel's abort waits for an RCU grace period (~15 ms), as does every retry.
/// A lookup costs microseconds. (Kernels >= 6.3 have DESTROYSETELEM, which
/// ignores absent elements, but Debian 12's 6.1 does not.)
fn forget_keys(
    sock: &mut NfSock,
    mode: Mode,
    v4: &[Vec<u8>],
    v6: &[Vec<u8>],
) -> Result<(), NlError> {
    let fam = mode.family();
    let mut present4 = Vec::new();
    let mut present6 = Vec::new();
    for (set, keys, present) in [(SET4, v4, &mut present4), (SET6, v6, &mut present6)] {
        for key in keys {
            // A missing set or table also answers ENOENT: nothing to forget.
            if nfnl::set_has_key(sock, fam, TABLE, set, key)? {
                present.push(key.clone());
            }
        }
    }
    if present4.is_empty() && present6.is_empty() {
        return Ok(());
    }
    let batch = setelem_batch(sock, msg::DELSETELEM, 0, mode, &present4, &present6);
    match sock.batch(batch) {
        Err(e) if e.errno() == Some(libc::ENOENT) => {}
        other => return other,
    }
    // Lost a race with another deleter: one missing element aborts the whole
    // batch, so delete one by one, skipping those already gone.
    for (set, key) in present4
        .iter()
        .map(|k| (SET4, k))
        .chain(present6.iter().map(|k| (SET6, k)))
    {
        let mut batch = Batch::new(sock);
        nfnl::put_setelems(
            batch.msg(msg::DELSETELEM, 0, fam),
            TABLE,
            set,
            std::slice::from_ref(key),
        );
        match sock.batch(batch) {
            Err(e) if e.errno() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// All `(ifname, source address)` pairs allowed in the mode's table (for GC
/// and CNI CHECK). Missing sets yield an empty list.
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
