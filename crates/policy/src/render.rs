//! Writing a [`Ruleset`] as an `nft -f` script, and the smallest script that turns one
//! rule set into another.
//!
//! Every script is applied with one `nft -f`, which the kernel runs as one transaction: a
//! packet sees the old table or the new one, never a mix.
//!
//! - [`render`] writes the whole table, preceded by the idiom that replaces it atomically
//!   (`table ... {}` creates it if missing, `delete table` empties the slate, then the
//!   definition), so it works whether or not the table exists.
//! - [`diff`] writes only `add element` / `delete element` lines when the chains and the set
//!   definitions are unchanged (endpoints came or went, or were relabelled), and the full
//!   replace otherwise. An empty string means nothing to do.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::compile::{
    AddrMatch, Chain, Dispatch, Element, Family, PortMatch, Rule, Ruleset, Set, SetKind, TABLE,
    Verdict,
};
use crate::model::{Direction, PortRange};

const INGRESS_MAP: &str = "ingress-dispatch";
const EGRESS_MAP: &str = "egress-dispatch";

/// The dispatch maps of a rule set: name -> (key type, elements key -> chain).
fn maps(rs: &Ruleset) -> Vec<(String, &'static str, BTreeMap<String, String>)> {
    match rs.dispatch {
        Dispatch::Interface => vec![
            (INGRESS_MAP.to_string(), "ifname", quote_keys(&rs.ingress)),
            (EGRESS_MAP.to_string(), "ifname", quote_keys(&rs.egress)),
        ],
        Dispatch::Address => {
            let split = |m: &BTreeMap<String, String>, v4: bool| -> BTreeMap<String, String> {
                m.iter()
                    .filter(|(k, _)| k.parse::<IpAddr>().is_ok_and(|a| a.is_ipv4() == v4))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            vec![
                (
                    format!("{INGRESS_MAP}4"),
                    "ipv4_addr",
                    split(&rs.ingress, true),
                ),
                (
                    format!("{INGRESS_MAP}6"),
                    "ipv6_addr",
                    split(&rs.ingress, false),
                ),
                (
                    format!("{EGRESS_MAP}4"),
                    "ipv4_addr",
                    split(&rs.egress, true),
                ),
                (
                    format!("{EGRESS_MAP}6"),
                    "ipv6_addr",
                    split(&rs.egress, false),
                ),
            ]
        }
    }
}

fn quote_keys(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(k, v)| (format!("\"{}\"", k.replace('"', "")), v.clone()))
        .collect()
}

fn set_type(kind: SetKind) -> (&'static str, bool) {
    match kind {
        SetKind::Addr(Family::V4) => ("ipv4_addr", false),
        SetKind::Addr(Family::V6) => ("ipv6_addr", false),
        SetKind::Net(Family::V4) => ("ipv4_addr", true),
        SetKind::Net(Family::V6) => ("ipv6_addr", true),
        SetKind::ProtoPort => ("inet_proto . inet_service", true),
        SetKind::NetProtoPort(Family::V4) => ("ipv4_addr . inet_proto . inet_service", true),
        SetKind::NetProtoPort(Family::V6) => ("ipv6_addr . inet_proto . inet_service", true),
    }
}

fn element(e: &Element) -> String {
    match e {
        Element::Addr(a) => a.to_string(),
        Element::Range(a, b) => range(a, b),
        Element::ProtoPort(p, r) => format!("{} . {}", p.nft_name(), ports(r)),
        Element::NetProtoPort(a, b, p, r) => {
            format!("{} . {} . {}", range(a, b), p.nft_name(), ports(r))
        }
    }
}

fn ports(r: &PortRange) -> String {
    if r.lo == r.hi {
        r.lo.to_string()
    } else {
        format!("{}-{}", r.lo, r.hi)
    }
}

/// An inclusive address range: one address, a prefix when it is one (how nft lists them
/// back), or `a-b`.
fn range(a: &IpAddr, b: &IpAddr) -> String {
    let (lo, hi, bits) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(*a)), u128::from(u32::from(*b)), 32)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(*a), u128::from(*b), 128),
        _ => unreachable!("ranges never mix families"),
    };
    let size = hi - lo;
    if size == 0 {
        return a.to_string();
    }
    if size.checked_add(1).is_some_and(u128::is_power_of_two) && lo & size == 0 {
        let prefix = bits - (size + 1).trailing_zeros();
        return format!("{a}/{prefix}");
    }
    if size == u128::MAX {
        return format!("{a}/0");
    }
    format!("{a}-{b}")
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Accept => "accept".into(),
        Verdict::Return => "return".into(),
        Verdict::Drop => "drop".into(),
        Verdict::Log(prefix) => format!("log prefix \"{}\"", prefix.replace('"', "")),
        Verdict::Goto(c) => format!("goto {c}"),
    }
}

fn rule_text(rule: &Rule, dir: Direction) -> String {
    let mut parts: Vec<String> = Vec::new();
    if rule.ct_invalid {
        parts.push("ct state invalid".into());
    }
    let fam = rule.family;
    let ip = match fam {
        Some(Family::V6) => "ip6",
        _ => "ip",
    };
    let (remote, local) = match dir {
        Direction::Ingress => ("saddr", "daddr"),
        Direction::Egress => ("daddr", "saddr"),
    };
    // Address matches imply the family; state it only when nothing else does.
    let implied = !rule.remote.is_empty()
        || !rule.local.is_empty()
        || matches!(rule.ports, Some(PortMatch::Remote(_)));
    if let (Some(f), false) = (fam, implied) {
        parts.push(format!(
            "meta nfproto {}",
            if f == Family::V4 { "ipv4" } else { "ipv6" }
        ));
    }
    if let Some(p) = rule.protocol {
        parts.push(format!("meta l4proto {}", p.nft_name()));
    }
    for AddrMatch { set, negate } in &rule.remote {
        let op = if *negate { "!= " } else { "" };
        parts.push(format!("{ip} {remote} {op}@{set}"));
    }
    if !rule.local.is_empty() {
        let list: Vec<String> = rule.local.iter().map(IpAddr::to_string).collect();
        parts.push(format!("{ip} {local} {{ {} }}", list.join(", ")));
    }
    match &rule.ports {
        None => {}
        Some(PortMatch::ProtoPorts(set)) => parts.push(format!("meta l4proto . th dport @{set}")),
        Some(PortMatch::Remote(set)) => {
            parts.push(format!("{ip} {remote} . meta l4proto . th dport @{set}"))
        }
    }
    if let Some(v) = &rule.verdict {
        parts.push(verdict(v));
    }
    if let Some(c) = &rule.comment {
        parts.push(format!("comment \"{}\"", c.replace('"', "'")));
    }
    parts.join(" ")
}

fn elements_block(elements: impl Iterator<Item = String>) -> String {
    let list: Vec<String> = elements.collect();
    if list.is_empty() {
        String::new()
    } else {
        format!("\t\telements = {{ {} }}\n", list.join(", "))
    }
}

fn map_elements(m: &BTreeMap<String, String>) -> impl Iterator<Item = String> + '_ {
    m.iter().map(|(k, c)| format!("{k} : jump {c}"))
}

fn set_block(name: &str, set: &Set) -> String {
    let (ty, interval) = set_type(set.kind);
    let mut s = format!("\tset {name} {{\n\t\ttype {ty}\n");
    if interval {
        s.push_str("\t\tflags interval\n");
    }
    s.push_str(&elements_block(set.elements.iter().map(element)));
    s.push_str("\t}\n");
    s
}

fn chain_block(name: &str, chain: &Chain) -> String {
    let mut s = format!("\tchain {name} {{\n");
    for r in &chain.rules {
        let _ = writeln!(s, "\t\t{}", rule_text(r, chain.direction));
    }
    s.push_str("\t}\n");
    s
}

/// The table definition alone (no replace idiom).
pub fn table(rs: &Ruleset) -> String {
    let mut s = format!("table inet {TABLE} {{\n");
    for (name, ty, elements) in maps(rs) {
        let _ = write!(s, "\tmap {name} {{\n\t\ttype {ty} : verdict\n");
        s.push_str(&elements_block(map_elements(&elements)));
        s.push_str("\t}\n");
    }
    for (name, set) in &rs.sets {
        s.push_str(&set_block(name, set));
    }
    s.push_str(
        "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n\t\tct state established,related accept\n",
    );
    match rs.dispatch {
        Dispatch::Interface => {
            let _ = writeln!(s, "\t\tiifname vmap @{EGRESS_MAP}");
            let _ = writeln!(s, "\t\toifname vmap @{INGRESS_MAP}");
        }
        Dispatch::Address => {
            let _ = writeln!(s, "\t\tip saddr vmap @{EGRESS_MAP}4");
            let _ = writeln!(s, "\t\tip6 saddr vmap @{EGRESS_MAP}6");
            let _ = writeln!(s, "\t\tip daddr vmap @{INGRESS_MAP}4");
            let _ = writeln!(s, "\t\tip6 daddr vmap @{INGRESS_MAP}6");
        }
    }
    s.push_str("\t}\n");
    for (name, chain) in &rs.chains {
        s.push_str(&chain_block(name, chain));
    }
    s.push_str("}\n");
    s
}

/// A script that makes table `inet twill-policy` exactly `rs`, whatever was there.
pub fn render(rs: &Ruleset) -> String {
    format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\n{}",
        table(rs)
    )
}

/// A script that removes twill's policy table (when the node has no policy at all any more,
/// or twill is uninstalled); harmless when it is absent.
pub fn remove() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// The smallest script turning `old` (what was last applied) into `new`: element changes
/// only, when nothing else changed; otherwise the full replace. Empty when equal.
pub fn diff(old: Option<&Ruleset>, new: &Ruleset) -> String {
    let Some(old) = old else {
        return render(new);
    };
    if old == new {
        return String::new();
    }
    let same_shape = old.dispatch == new.dispatch
        && old.chains == new.chains
        && old.sets.len() == new.sets.len()
        && old
            .sets
            .iter()
            .all(|(name, s)| new.sets.get(name).is_some_and(|n| n.kind == s.kind));
    if !same_shape {
        return render(new);
    }
    let mut deletes = String::new();
    let mut adds = String::new();
    for (name, set) in &new.sets {
        let before = &old.sets[name].elements;
        push_elements(
            &mut deletes,
            "delete",
            name,
            before.difference(&set.elements).map(element),
        );
        push_elements(
            &mut adds,
            "add",
            name,
            set.elements.difference(before).map(element),
        );
    }
    for ((name, _, before), (_, _, after)) in maps(old).into_iter().zip(maps(new)) {
        let gone = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .map(|(k, _)| k.clone());
        push_elements(&mut deletes, "delete", &name, gone);
        let came: BTreeMap<String, String> = after
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        push_elements(&mut adds, "add", &name, map_elements(&came));
    }
    // Deletes first: an interval set may not hold overlapping ranges even for a moment.
    deletes + &adds
}

fn push_elements(out: &mut String, verb: &str, set: &str, elements: impl Iterator<Item = String>) {
    let list: BTreeSet<String> = elements.collect();
    if list.is_empty() {
        return;
    }
    let list: Vec<String> = list.into_iter().collect();
    let _ = writeln!(
        out,
        "{verb} element inet {TABLE} {set} {{ {} }}",
        list.join(", ")
    );
}
