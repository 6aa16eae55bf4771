//! RFC 7606 judge and fallback parser for UPDATE messages.
//!
//! netgauze decodes attribute values, but it answers a malformed attribute by rejecting the
//! whole message, which would force a session reset. This module walks the raw UPDATE body
//! itself, only as deep as needed to decide what RFC 7606 asks for (accept, discard an
//! attribute, treat-as-withdraw, or reset the session) and to find every withdrawn prefix and
//! NLRI, so treat-as-withdraw works even when netgauze cannot parse the message at all.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::notification::{BgpNotificationMessage, UpdateMessageError};

use crate::attrs::{Afi, RawAttr};

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const PARTIAL: u8 = 0x20;
const EXTENDED: u8 = 0x10;

pub(crate) const ORIGIN: u8 = 1;
pub(crate) const AS_PATH: u8 = 2;
pub(crate) const NEXT_HOP: u8 = 3;
pub(crate) const MED: u8 = 4;
pub(crate) const LOCAL_PREF: u8 = 5;
pub(crate) const ATOMIC_AGGREGATE: u8 = 6;
pub(crate) const AGGREGATOR: u8 = 7;
pub(crate) const COMMUNITIES: u8 = 8;
pub(crate) const ORIGINATOR_ID: u8 = 9;
pub(crate) const CLUSTER_LIST: u8 = 10;
pub(crate) const MP_REACH: u8 = 14;
pub(crate) const MP_UNREACH: u8 = 15;
pub(crate) const AS4_PATH: u8 = 17;
pub(crate) const AS4_AGGREGATOR: u8 = 18;

/// What RFC 7606 asks for, from mildest to harshest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Every NLRI in the message is withdrawn; the reason is for the log.
    TreatAsWithdraw(String),
    /// The message cannot be trusted enough to find its NLRI: NOTIFICATION and close.
    SessionReset(BgpNotificationMessage),
}

/// What the raw walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Withdrawn prefixes, from the Withdrawn Routes field and MP_UNREACH_NLRI.
    pub withdrawn: Vec<IpNet>,
    /// Announced prefixes, from the NLRI field and MP_REACH_NLRI.
    pub announced: Vec<IpNet>,
    /// Attribute type codes present (first occurrence order).
    pub present: Vec<u8>,
    /// Attribute type codes dropped (attribute-discard).
    pub discard: Vec<u8>,
    /// The path attribute section without discarded and duplicate attributes, for the
    /// value decoder.
    pub clean_attrs: Vec<u8>,
    /// Optional transitive attributes twill does not model, as received but with the Partial
    /// bit set, in arrival order: they travel on with the route (RFC 4271 §5).
    pub carried: Vec<RawAttr>,
    /// Withdrawn Routes field and NLRI field, raw.
    pub withdrawn_raw: Vec<u8>,
    pub nlri_raw: Vec<u8>,
    pub verdict: Verdict,
}

fn reset(err: fn(Box<[u8]>) -> UpdateMessageError) -> Verdict {
    Verdict::SessionReset(BgpNotificationMessage::UpdateMessageError(err(
        Box::new([]),
    )))
}

fn malformed_list() -> Verdict {
    reset(|value| UpdateMessageError::MalformedAttributeList { value })
}

fn invalid_network() -> Verdict {
    reset(|value| UpdateMessageError::InvalidNetworkField { value })
}

/// Parses a run of (length, prefix) NLRI entries of one family. None when malformed.
pub(crate) fn parse_prefixes(mut buf: &[u8], afi: Afi) -> Option<Vec<IpNet>> {
    let max = match afi {
        Afi::Ipv4 => 32,
        Afi::Ipv6 => 128,
    };
    let mut out = Vec::new();
    while let Some((&len, rest)) = buf.split_first() {
        if len > max {
            return None;
        }
        let n = usize::from(len).div_ceil(8);
        if rest.len() < n {
            return None;
        }
        let net = match afi {
            Afi::Ipv4 => {
                let mut a = [0u8; 4];
                a[..n].copy_from_slice(&rest[..n]);
                IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).ok()?.trunc())
            }
            Afi::Ipv6 => {
                let mut a = [0u8; 16];
                a[..n].copy_from_slice(&rest[..n]);
                IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).ok()?.trunc())
            }
        };
        out.push(net);
        buf = &rest[n..];
    }
    Some(out)
}

fn afi_of(afi: u16, safi: u8) -> Option<Afi> {
    match (afi, safi) {
        (1, 1) => Some(Afi::Ipv4),
        (2, 1) => Some(Afi::Ipv6),
        _ => None,
    }
}

/// Checks an AS_PATH (or AS4_PATH) value: known segment types, non-empty segments, and
/// segments that exactly fill the attribute.
fn as_path_ok(mut v: &[u8], as_size: usize) -> bool {
    while !v.is_empty() {
        if v.len() < 2 {
            return false;
        }
        let (ty, count) = (v[0], usize::from(v[1]));
        // Only AS_SET and AS_SEQUENCE: we run no confederation, so confederation segments
        // from a peer are malformed (RFC 7606 §7.2).
        if !(ty == 1 || ty == 2) || count == 0 {
            return false;
        }
        let n = 2 + count * as_size;
        if v.len() < n {
            return false;
        }
        v = &v[n..];
    }
    true
}

/// Walks an UPDATE body (the bytes after the 19-octet header) and judges it.
pub fn scan_update(body: &[u8], asn4: bool) -> Scan {
    let mut scan = Scan {
        withdrawn: Vec::new(),
        announced: Vec::new(),
        present: Vec::new(),
        discard: Vec::new(),
        clean_attrs: Vec::new(),
        carried: Vec::new(),
        withdrawn_raw: Vec::new(),
        nlri_raw: Vec::new(),
        verdict: Verdict::Ok,
    };
    // Withdrawn Routes and Total Path Attribute Length must be consistent with the message
    // length; if not, the NLRI cannot be located and only a reset is safe (RFC 7606 §4).
    if body.len() < 4 {
        scan.verdict = malformed_list();
        return scan;
    }
    let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if 2 + wlen + 2 > body.len() {
        scan.verdict = malformed_list();
        return scan;
    }
    let withdrawn = &body[2..2 + wlen];
    let alen_at = 2 + wlen;
    let alen = usize::from(u16::from_be_bytes([body[alen_at], body[alen_at + 1]]));
    let attrs_start = alen_at + 2;
    if attrs_start + alen > body.len() {
        scan.verdict = malformed_list();
        return scan;
    }
    let attrs = &body[attrs_start..attrs_start + alen];
    let nlri = &body[attrs_start + alen..];
    scan.withdrawn_raw = withdrawn.to_vec();
    scan.nlri_raw = nlri.to_vec();

    match parse_prefixes(withdrawn, Afi::Ipv4) {
        Some(p) => scan.withdrawn = p,
        None => {
            scan.verdict = invalid_network();
            return scan;
        }
    }
    match parse_prefixes(nlri, Afi::Ipv4) {
        Some(p) => scan.announced = p,
        None => {
            scan.verdict = invalid_network();
            return scan;
        }
    }

    let mut taw: Option<String> = None;
    let note = |taw: &mut Option<String>, why: String| {
        if taw.is_none() {
            *taw = Some(why);
        }
    };
    let as_size = if asn4 { 4 } else { 2 };
    let mut rest = attrs;
    while !rest.is_empty() {
        // An attribute header or value overrunning the attribute section: the NLRI is still
        // where the Total Path Attribute Length says, so treat-as-withdraw (RFC 7606 §4).
        if rest.len() < 3 {
            note(&mut taw, "truncated attribute header".into());
            break;
        }
        let (flags, code) = (rest[0], rest[1]);
        let (len, hdr) = if flags & EXTENDED != 0 {
            if rest.len() < 4 {
                note(&mut taw, "truncated attribute header".into());
                break;
            }
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        if rest.len() < hdr + len {
            note(
                &mut taw,
                format!("attribute {code} length {len} overruns the attribute section"),
            );
            break;
        }
        let value = &rest[hdr..hdr + len];
        let whole = &rest[..hdr + len];
        rest = &rest[hdr + len..];

        if scan.present.contains(&code) {
            // Duplicates: a second MP attribute makes the NLRI ambiguous (reset); any other
            // duplicate is dropped and the first kept (RFC 7606 §3 g).
            if code == MP_REACH || code == MP_UNREACH {
                scan.verdict = malformed_list();
                return scan;
            }
            continue;
        }
        scan.present.push(code);

        let well_known = flags & (OPTIONAL | TRANSITIVE) == TRANSITIVE && flags & PARTIAL == 0;
        let opt_nontrans = flags & (OPTIONAL | TRANSITIVE) == OPTIONAL && flags & PARTIAL == 0;
        let opt_trans = flags & (OPTIONAL | TRANSITIVE) == OPTIONAL | TRANSITIVE;
        match code {
            ORIGIN => {
                if !well_known {
                    note(&mut taw, "ORIGIN flags".into());
                } else if len != 1 || value[0] > 2 {
                    note(&mut taw, "malformed ORIGIN".into());
                }
            }
            AS_PATH => {
                if !well_known {
                    note(&mut taw, "AS_PATH flags".into());
                } else if !as_path_ok(value, as_size) {
                    note(&mut taw, "malformed AS_PATH".into());
                }
            }
            NEXT_HOP => {
                if !well_known {
                    note(&mut taw, "NEXT_HOP flags".into());
                } else if len != 4 {
                    note(&mut taw, "malformed NEXT_HOP".into());
                }
            }
            MED => {
                if !opt_nontrans {
                    note(&mut taw, "MULTI_EXIT_DISC flags".into());
                } else if len != 4 {
                    note(&mut taw, "malformed MULTI_EXIT_DISC".into());
                }
            }
            LOCAL_PREF => {
                if !well_known {
                    note(&mut taw, "LOCAL_PREF flags".into());
                } else if len != 4 {
                    note(&mut taw, "malformed LOCAL_PREF".into());
                }
            }
            ATOMIC_AGGREGATE => {
                // Attribute-discard (RFC 7606 §7.6).
                if !well_known || len != 0 {
                    scan.discard.push(code);
                }
            }
            AGGREGATOR => {
                if !opt_trans || len != 2 + as_size + 2 {
                    scan.discard.push(code);
                }
            }
            COMMUNITIES => {
                if !opt_trans {
                    note(&mut taw, "COMMUNITIES flags".into());
                } else if len == 0 || len % 4 != 0 {
                    note(&mut taw, "malformed COMMUNITIES".into());
                }
            }
            ORIGINATOR_ID => {
                if !opt_nontrans {
                    note(&mut taw, "ORIGINATOR_ID flags".into());
                } else if len != 4 {
                    note(&mut taw, "malformed ORIGINATOR_ID".into());
                }
            }
            CLUSTER_LIST => {
                if !opt_nontrans {
                    note(&mut taw, "CLUSTER_LIST flags".into());
                } else if len == 0 || len % 4 != 0 {
                    note(&mut taw, "malformed CLUSTER_LIST".into());
                }
            }
            MP_REACH => {
                // The NLRI inside must be found whatever else is wrong; if it cannot be,
                // reset (RFC 7606 §7.11); wrong flags alone are treat-as-withdraw.
                if value.len() < 5 {
                    scan.verdict = malformed_list();
                    return scan;
                }
                let afi = u16::from_be_bytes([value[0], value[1]]);
                let nh_len = usize::from(value[3]);
                if value.len() < 4 + nh_len + 1 {
                    scan.verdict = malformed_list();
                    return scan;
                }
                if let Some(fam) = afi_of(afi, value[2]) {
                    match parse_prefixes(&value[4 + nh_len + 1..], fam) {
                        Some(p) => scan.announced.extend(p),
                        None => {
                            scan.verdict = malformed_list();
                            return scan;
                        }
                    }
                    let nh_ok = match fam {
                        Afi::Ipv4 => matches!(nh_len, 4 | 16 | 32),
                        Afi::Ipv6 => matches!(nh_len, 16 | 32),
                    };
                    if !nh_ok {
                        note(&mut taw, "malformed MP_REACH_NLRI next hop".into());
                    }
                } else {
                    // A family we did not negotiate: ignore the attribute.
                    scan.discard.push(code);
                }
                if !opt_nontrans {
                    note(&mut taw, "MP_REACH_NLRI flags".into());
                }
            }
            MP_UNREACH => {
                if value.len() < 3 {
                    scan.verdict = malformed_list();
                    return scan;
                }
                let afi = u16::from_be_bytes([value[0], value[1]]);
                if let Some(fam) = afi_of(afi, value[2]) {
                    match parse_prefixes(&value[3..], fam) {
                        Some(p) => scan.withdrawn.extend(p),
                        None => {
                            scan.verdict = malformed_list();
                            return scan;
                        }
                    }
                } else {
                    scan.discard.push(code);
                }
            }
            AS4_PATH => {
                // RFC 6793 §6: a malformed AS4_PATH is discarded.
                if !opt_trans || !as_path_ok(value, 4) {
                    scan.discard.push(code);
                }
            }
            AS4_AGGREGATOR => {
                if !opt_trans || len != 8 {
                    scan.discard.push(code);
                }
            }
            _ => {
                // Every type code not matched above is one twill does not model: extended
                // communities (16), IPv6 extended communities (25), large communities (32),
                // and any other, whether or not netgauze has a type for it. Optional
                // transitive ones are passed on byte for byte with the Partial bit set, as
                // RFC 4271 §5 asks of an unrecognised attribute; optional non-transitive ones
                // are quietly dropped. Their values are still checked by netgauze, so a
                // malformed one (an extended community list not a multiple of 8 octets, ...)
                // ends in treat-as-withdraw as before (RFC 7606 §7.14, RFC 8092 §6).
                if flags & (OPTIONAL | TRANSITIVE) == OPTIONAL | TRANSITIVE {
                    scan.carried.push(RawAttr {
                        flags: flags | PARTIAL,
                        code,
                        value: value.to_vec(),
                    });
                }
                if flags & OPTIONAL == 0 {
                    // An unrecognised well-known attribute: RFC 4271 would reset; we keep
                    // the session and withdraw the routes, in the spirit of RFC 7606.
                    note(
                        &mut taw,
                        format!("unrecognised well-known attribute {code}"),
                    );
                }
            }
        }
        if !scan.discard.contains(&code) {
            scan.clean_attrs.extend_from_slice(whole);
        }
    }

    // Mandatory attributes are checked only when there is something to announce
    // (RFC 7606 §3 d): ORIGIN and AS_PATH always, NEXT_HOP for NLRI in the classic field.
    if taw.is_none() && !scan.announced.is_empty() {
        let has = |c: u8| scan.present.contains(&c) && !scan.discard.contains(&c);
        if !has(ORIGIN) || !has(AS_PATH) {
            taw = Some("missing well-known mandatory attribute".into());
        } else if !nlri.is_empty() && !has(NEXT_HOP) {
            taw = Some("missing NEXT_HOP".into());
        }
    }
    if let Some(why) = taw {
        scan.verdict = Verdict::TreatAsWithdraw(why);
    }
    scan
}
