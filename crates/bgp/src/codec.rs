//! BGP message framing over netgauze-bgp-pkt (a tokio-util codec), OPEN building and
//! capability negotiation, and the conversion between netgauze's UPDATE and our attributes.
//!
//! Our own header check runs first (marker, length, type) so header errors get the
//! NOTIFICATION RFC 4271 §6.1 asks for; UPDATE bodies are judged by [`crate::scan`] before
//! netgauze decodes them, so malformed attributes end in treat-as-withdraw (RFC 7606), never
//! in a reset or a panic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, MessageHeaderError, OpenMessageError,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute::{
    Aggregator, As2Aggregator, As2PathSegment, As4Aggregator, As4Path, As4PathSegment, AsPath,
    AsPathSegmentType, AtomicAggregate, ClusterId, ClusterList, Communities, LocalPreference,
    MpReach, MpUnreach, MultiExitDiscriminator, NextHop, Origin as NgOrigin, Originator,
    PathAttribute, PathAttributeValue, UnknownAttribute,
};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::{BgpMessageParsingError, BgpParsingContext};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::WritablePdu;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use tokio_util::codec::{Decoder, Encoder};

use crate::attrs::{AS_TRANS, Afi, AsSegment, Origin, PathAttrs, RawAttr};
use crate::scan::{self, Verdict};

/// Maximum BGP message size without the extended-message capability.
pub const MAX_MESSAGE: usize = 4096;
const HEADER: usize = 19;

/// Errors of the codec layer.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent something that ends the session; send this NOTIFICATION and close.
    #[error("protocol error: {0:?}")]
    Fatal(BgpNotificationMessage),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding: {0}")]
    Encode(String),
}

/// Graceful restart capability contents (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrCap {
    /// R bit: the sender has restarted.
    pub restarting: bool,
    /// Restart time in seconds.
    pub time: u16,
    /// Families with the F bit (forwarding state preserved).
    pub families: Vec<(Afi, bool)>,
}

/// What one side says in its OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenInfo {
    pub asn: u32,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    /// Multiprotocol families; an OPEN without MP capabilities means IPv4 unicast only.
    pub families: BTreeSet<Afi>,
    pub asn4: bool,
    pub route_refresh: bool,
    pub graceful_restart: Option<GrCap>,
}

impl OpenInfo {
    /// Reads the parts of an OPEN we use.
    pub fn from_open(open: &BgpOpenMessage) -> OpenInfo {
        let mut families = BTreeSet::new();
        let mut saw_mp = false;
        let mut info = OpenInfo {
            asn: open.my_asn4(),
            hold_time: open.hold_time(),
            router_id: open.bgp_id(),
            families: BTreeSet::new(),
            asn4: false,
            route_refresh: false,
            graceful_restart: None,
        };
        for cap in open.capabilities() {
            match cap {
                BgpCapability::MultiProtocolExtensions(mp) => {
                    saw_mp = true;
                    match mp.address_type() {
                        AddressType::Ipv4Unicast => {
                            families.insert(Afi::Ipv4);
                        }
                        AddressType::Ipv6Unicast => {
                            families.insert(Afi::Ipv6);
                        }
                        _ => {}
                    }
                }
                BgpCapability::FourOctetAs(_) => info.asn4 = true,
                BgpCapability::RouteRefresh | BgpCapability::EnhancedRouteRefresh => {
                    info.route_refresh = true
                }
                BgpCapability::GracefulRestartCapability(gr) => {
                    info.graceful_restart = Some(GrCap {
                        restarting: gr.restart(),
                        time: gr.time(),
                        families: gr
                            .address_families()
                            .iter()
                            .filter_map(|f| {
                                let afi = match f.address_type() {
                                    AddressType::Ipv4Unicast => Afi::Ipv4,
                                    AddressType::Ipv6Unicast => Afi::Ipv6,
                                    _ => return None,
                                };
                                Some((afi, f.forwarding_state()))
                            })
                            .collect(),
                    })
                }
                _ => {}
            }
        }
        if !saw_mp {
            families.insert(Afi::Ipv4);
        }
        info.families = families;
        info
    }

    /// Builds our OPEN: the 2-octet My AS field carries AS_TRANS when the ASN does not fit
    /// (RFC 6793 §4.1); capabilities MP (each family), route refresh, 4-octet AS and, when
    /// given, graceful restart.
    pub fn to_message(&self) -> BgpMessage {
        let my_as = u16::try_from(self.asn).unwrap_or(AS_TRANS);
        let mut caps = Vec::new();
        for afi in &self.families {
            caps.push(BgpCapability::MultiProtocolExtensions(
                MultiProtocolExtensionsCapability::new(address_type(*afi)),
            ));
        }
        if self.route_refresh {
            caps.push(BgpCapability::RouteRefresh);
        }
        caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(
            self.asn,
        )));
        if let Some(gr) = &self.graceful_restart {
            caps.push(BgpCapability::GracefulRestartCapability(
                GracefulRestartCapability::new(
                    gr.restarting,
                    false,
                    gr.time.min(0x0fff),
                    gr.families
                        .iter()
                        .map(|(afi, f)| GracefulRestartAddressFamily::new(*f, address_type(*afi)))
                        .collect::<Vec<_>>(),
                ),
            ));
        }
        BgpMessage::Open(BgpOpenMessage::new(
            my_as,
            self.hold_time,
            self.router_id,
            vec![BgpOpenMessageParameter::new_capabilities(caps)],
        ))
    }
}

fn address_type(afi: Afi) -> AddressType {
    match afi {
        Afi::Ipv4 => AddressType::Ipv4Unicast,
        Afi::Ipv6 => AddressType::Ipv6Unicast,
    }
}

/// A decoded UPDATE in our terms.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpdateIn {
    pub withdrawn: Vec<IpNet>,
    /// Announced prefixes with their attributes (one entry per family, as the next hop
    /// differs).
    pub announced: Vec<(PathAttrs, Vec<IpNet>)>,
    /// End-of-RIB marker for this family (RFC 4724 §2).
    pub end_of_rib: Option<Afi>,
    /// Set when RFC 7606 treat-as-withdraw turned announcements into withdrawals.
    pub treat_as_withdraw: Option<String>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Open(OpenInfo),
    Update(UpdateIn),
    Notification(BgpNotificationMessage),
    Keepalive,
    RouteRefresh(Option<Afi>),
}

/// The framing codec. `asn4` is whether both sides announced 4-octet AS support; it is set
/// by the session once OPENs are exchanged.
#[derive(Debug, Clone)]
pub struct BgpCodec {
    pub asn4: bool,
}

impl Default for BgpCodec {
    fn default() -> Self {
        BgpCodec { asn4: true }
    }
}

fn header_error(err: fn(Box<[u8]>) -> MessageHeaderError, data: &[u8]) -> CodecError {
    CodecError::Fatal(BgpNotificationMessage::MessageHeaderError(err(data
        .to_vec()
        .into_boxed_slice())))
}

fn parse_ctx(asn4: bool) -> BgpParsingContext {
    // Fail on any malformed attribute: the scan has already decided what to do with
    // malformed attributes, and a netgauze failure falls back to the scan's NLRI.
    // Non-unicast IPv4 prefixes are ignored (RFC 4271 §6.3 says ignore them).
    BgpParsingContext::new(
        asn4,
        HashMap::new(),
        HashMap::new(),
        false,
        false,
        false,
        true,
    )
}

/// Decodes one complete message (header included). Pure; used by the codec and the fuzzer.
pub fn decode_message(frame: &[u8], asn4: bool) -> Result<Incoming, CodecError> {
    if frame.len() < HEADER || frame[..16].iter().any(|b| *b != 0xff) {
        return Err(header_error(
            |value| MessageHeaderError::ConnectionNotSynchronized { value },
            &[],
        ));
    }
    let len = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let ty = frame[18];
    let len_ok = len == frame.len()
        && match ty {
            1 => len >= 29,
            2 => len >= 23,
            3 => len >= 21,
            4 => len == 19,
            5 => len == 23,
            _ => true,
        };
    if !len_ok {
        return Err(header_error(
            |value| MessageHeaderError::BadMessageLength { value },
            &frame[16..18],
        ));
    }
    if !(1..=5).contains(&ty) {
        return Err(header_error(
            |value| MessageHeaderError::BadMessageType { value },
            &[ty],
        ));
    }
    if ty == 2 {
        return decode_update(frame, asn4).map(Incoming::Update);
    }
    let mut ctx = parse_ctx(asn4);
    let mut reader = SliceReader::new(frame);
    match BgpMessage::parse(&mut reader, &mut ctx) {
        Ok(BgpMessage::Open(open)) => Ok(Incoming::Open(OpenInfo::from_open(&open))),
        Ok(BgpMessage::Notification(n)) => Ok(Incoming::Notification(n)),
        Ok(BgpMessage::KeepAlive) => Ok(Incoming::Keepalive),
        Ok(BgpMessage::RouteRefresh(rr)) => Ok(Incoming::RouteRefresh(match rr.address_type() {
            AddressType::Ipv4Unicast => Some(Afi::Ipv4),
            AddressType::Ipv6Unicast => Some(Afi::Ipv6),
            _ => None,
        })),
        Ok(BgpMessage::Update(_)) => unreachable!("UPDATE handled above"),
        Err(e) => Err(CodecError::Fatal(match (ty, e) {
            (1, BgpMessageParsingError::BgpOpenMessageParsingError(oe)) => {
                use netgauze_bgp_pkt::wire::deserializer::open::BgpOpenMessageParsingError as O;
                BgpNotificationMessage::OpenMessageError(match oe {
                    O::UnsupportedVersionNumber { .. } => {
                        OpenMessageError::UnsupportedVersionNumber {
                            value: Box::new([0, 4]),
                        }
                    }
                    O::UnacceptableHoldTime { .. } => OpenMessageError::UnacceptableHoldTime {
                        value: Box::new([]),
                    },
                    O::InvalidBgpId { .. } => OpenMessageError::BadBgpIdentifier {
                        value: Box::new([]),
                    },
                    _ => OpenMessageError::Unspecific {
                        value: Box::new([]),
                    },
                })
            }
            // A NOTIFICATION we cannot parse still ends the session; answer with a bare
            // header error rather than echoing it.
            _ => BgpNotificationMessage::MessageHeaderError(MessageHeaderError::Unspecific {
                value: Box::new([]),
            }),
        })),
    }
}

/// UPDATE: RFC 7606 judgement by the raw scan, values by netgauze.
fn decode_update(frame: &[u8], asn4: bool) -> Result<UpdateIn, CodecError> {
    let scan = scan::scan_update(&frame[HEADER..], asn4);
    let withdraw_all = |why: String| UpdateIn {
        withdrawn: scan
            .withdrawn
            .iter()
            .chain(&scan.announced)
            .copied()
            .collect(),
        announced: Vec::new(),
        end_of_rib: None,
        treat_as_withdraw: Some(why),
    };
    match &scan.verdict {
        Verdict::SessionReset(n) => return Err(CodecError::Fatal(n.clone())),
        Verdict::TreatAsWithdraw(why) => return Ok(withdraw_all(why.clone())),
        Verdict::Ok => {}
    }
    // netgauze sees the message without the attributes RFC 7606 told us to discard.
    let mut clean = vec![0xff; 16];
    let body_len = 2 + scan.withdrawn_raw.len() + 2 + scan.clean_attrs.len() + scan.nlri_raw.len();
    let Ok(total) = u16::try_from(HEADER + body_len) else {
        return Ok(withdraw_all("oversized".into()));
    };
    clean.extend_from_slice(&total.to_be_bytes());
    clean.push(2);
    clean.extend_from_slice(&(scan.withdrawn_raw.len() as u16).to_be_bytes());
    clean.extend_from_slice(&scan.withdrawn_raw);
    clean.extend_from_slice(&(scan.clean_attrs.len() as u16).to_be_bytes());
    clean.extend_from_slice(&scan.clean_attrs);
    clean.extend_from_slice(&scan.nlri_raw);
    let mut ctx = parse_ctx(asn4);
    let mut reader = SliceReader::new(&clean);
    match BgpMessage::parse(&mut reader, &mut ctx) {
        Ok(BgpMessage::Update(u)) => match convert_update(&u, &scan.discard, &scan.carried, asn4) {
            Ok(upd) => Ok(upd),
            Err(why) => Ok(withdraw_all(why)),
        },
        // The fallback: netgauze refused a message the scan could walk; its NLRI is known, so
        // withdraw them rather than reset.
        Ok(_) => Ok(withdraw_all("not an UPDATE".into())),
        Err(e) => Ok(withdraw_all(format!("undecodable UPDATE: {e}"))),
    }
}

fn convert_segments_as4(segs: &[As4PathSegment]) -> Vec<AsSegment> {
    segs.iter()
        .map(|s| AsSegment {
            set: s.segment_type() == AsPathSegmentType::AsSet,
            asns: s.as_numbers().to_vec(),
        })
        .collect()
}

/// netgauze UPDATE → ours. Err(reason) means treat-as-withdraw.
fn convert_update(
    u: &BgpUpdateMessage,
    discard: &[u8],
    carried: &[RawAttr],
    asn4: bool,
) -> Result<UpdateIn, String> {
    let mut out = UpdateIn {
        end_of_rib: match u.end_of_rib() {
            Some(AddressType::Ipv4Unicast) => Some(Afi::Ipv4),
            Some(AddressType::Ipv6Unicast) => Some(Afi::Ipv6),
            _ => None,
        },
        ..UpdateIn::default()
    };
    out.withdrawn.extend(
        u.withdraw_routes()
            .iter()
            .map(|a| IpNet::V4(a.network().address())),
    );
    let mut attrs = PathAttrs::local(None, Afi::Ipv4);
    attrs.unknown = carried.to_vec();
    attrs.unknown.sort_by_key(|raw| raw.code);
    let mut as4_path: Option<Vec<AsSegment>> = None;
    let mut next_hop_v4: Option<Ipv4Addr> = None;
    let mut mp_reach: Option<(IpAddr, Afi, Vec<IpNet>)> = None;
    for pa in u.path_attributes() {
        let code = type_code(pa);
        if discard.contains(&code) {
            continue;
        }
        if pa.partial() && (code == scan::AGGREGATOR || code == scan::COMMUNITIES) {
            attrs.partial.push(code);
        }
        match pa.value() {
            PathAttributeValue::Origin(o) => {
                attrs.origin = match o {
                    NgOrigin::IGP => Origin::Igp,
                    NgOrigin::EGP => Origin::Egp,
                    NgOrigin::Incomplete => Origin::Incomplete,
                }
            }
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs)) => {
                attrs.as_path = convert_segments_as4(segs)
            }
            PathAttributeValue::AsPath(AsPath::As2PathSegments(segs)) => {
                attrs.as_path = segs
                    .iter()
                    .map(|s| AsSegment {
                        set: s.segment_type() == AsPathSegmentType::AsSet,
                        asns: s.as_numbers().iter().map(|a| u32::from(*a)).collect(),
                    })
                    .collect()
            }
            PathAttributeValue::As4Path(p) if !asn4 => {
                as4_path = Some(convert_segments_as4(p.segments()));
            }
            PathAttributeValue::NextHop(nh) => next_hop_v4 = Some(nh.next_hop()),
            PathAttributeValue::MultiExitDiscriminator(m) => attrs.med = Some(m.metric()),
            PathAttributeValue::LocalPreference(l) => attrs.local_pref = Some(l.metric()),
            PathAttributeValue::AtomicAggregate(_) => attrs.atomic_aggregate = true,
            PathAttributeValue::Aggregator(Aggregator::As4Aggregator(a)) => {
                attrs.aggregator = Some((*a.asn(), a.origin()))
            }
            PathAttributeValue::Aggregator(Aggregator::As2Aggregator(a)) => {
                attrs.aggregator = Some((u32::from(*a.asn()), a.origin()))
            }
            PathAttributeValue::Communities(c) => {
                attrs.communities = c.communities().iter().map(|c| c.value()).collect()
            }
            PathAttributeValue::Originator(o) => attrs.originator_id = Some(o.id()),
            PathAttributeValue::ClusterList(c) => {
                attrs.cluster_list = c.cluster_list().iter().map(|c| c.id()).collect()
            }
            PathAttributeValue::MpReach(MpReach::Ipv4Unicast { next_hop, nlri, .. }) => {
                mp_reach = Some((
                    *next_hop,
                    Afi::Ipv4,
                    nlri.iter()
                        .map(|a| IpNet::V4(a.network().address()))
                        .collect(),
                ))
            }
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global,
                next_hop_local,
                nlri,
            }) => {
                // RFC 2545: global then (optionally) link-local; a lone link-local address
                // is a link-local next hop without a global one.
                let (global, local) = if is_link_local(next_hop_global) {
                    (Ipv6Addr::UNSPECIFIED, Some(*next_hop_global))
                } else {
                    (*next_hop_global, next_hop_local.filter(is_link_local))
                };
                attrs.next_hop_local = local;
                mp_reach = Some((
                    IpAddr::V6(global),
                    Afi::Ipv6,
                    nlri.iter()
                        .map(|a| IpNet::V6(a.network().address()))
                        .collect(),
                ))
            }
            PathAttributeValue::MpUnreach(MpUnreach::Ipv4Unicast { nlri }) => out
                .withdrawn
                .extend(nlri.iter().map(|a| IpNet::V4(a.network().address()))),
            PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri }) => out
                .withdrawn
                .extend(nlri.iter().map(|a| IpNet::V6(a.network().address()))),
            // Other families, and the attributes the scan carries raw (`scan.carried`).
            _ => {}
        }
    }
    if let Some(as4) = as4_path {
        // RFC 6793 §4.2.3: the trailing ASes of AS_PATH are replaced by AS4_PATH when the
        // latter is not longer.
        let flat = attrs.as_path_flat();
        let n4: usize = as4.iter().map(|s| s.asns.len()).sum();
        if n4 <= flat.len() {
            let mut merged = vec![AsSegment {
                set: false,
                asns: flat[..flat.len() - n4].to_vec(),
            }];
            merged.retain(|s| !s.asns.is_empty());
            merged.extend(as4);
            attrs.as_path = merged;
        }
    }
    let v4_nlri: Vec<IpNet> = u
        .nlri()
        .iter()
        .map(|a| IpNet::V4(a.network().address()))
        .collect();
    if !v4_nlri.is_empty() {
        let nh = next_hop_v4.ok_or("missing NEXT_HOP")?;
        let mut a = attrs.clone();
        a.next_hop = IpAddr::V4(nh);
        a.next_hop_local = None;
        out.announced.push((a, v4_nlri));
    }
    if let Some((nh, _afi, nlri)) = mp_reach
        && !nlri.is_empty()
    {
        let mut a = attrs;
        a.next_hop = nh;
        out.announced.push((a, nlri));
    }
    Ok(out)
}

impl Decoder for BgpCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        if buf[..16].iter().any(|b| *b != 0xff) {
            return Err(header_error(
                |value| MessageHeaderError::ConnectionNotSynchronized { value },
                &[],
            ));
        }
        let len = usize::from(u16::from_be_bytes([buf[16], buf[17]]));
        // The length is checked before waiting for the body, so a bogus length cannot make us
        // buffer forever or split a zero-length frame.
        if !(HEADER..=MAX_MESSAGE).contains(&len) {
            return Err(header_error(
                |value| MessageHeaderError::BadMessageLength { value },
                &buf[16..18],
            ));
        }
        if buf.len() < len {
            buf.reserve(len - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(len);
        decode_message(&frame, self.asn4).map(Some)
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Open(OpenInfo),
    Keepalive,
    Notification(BgpNotificationMessage),
    RouteRefresh(Afi),
    /// A ready-made netgauze message (UPDATEs from [`encode_updates`]).
    Raw(BgpMessage),
}

impl Outgoing {
    pub fn to_message(&self) -> BgpMessage {
        match self {
            Outgoing::Open(o) => o.to_message(),
            Outgoing::Keepalive => BgpMessage::KeepAlive,
            Outgoing::Notification(n) => BgpMessage::Notification(n.clone()),
            Outgoing::RouteRefresh(afi) => BgpMessage::RouteRefresh(BgpRouteRefreshMessage::new(
                address_type(*afi),
                RouteRefreshSubcode::NormalRequest,
            )),
            Outgoing::Raw(m) => m.clone(),
        }
    }
}

/// Encodes one message to bytes.
pub fn encode_message(msg: &BgpMessage) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    msg.write(&mut out)
        .map_err(|e| CodecError::Encode(format!("{e:?}")))?;
    if out.len() > MAX_MESSAGE {
        return Err(CodecError::Encode(format!(
            "message of {} bytes exceeds {MAX_MESSAGE}",
            out.len()
        )));
    }
    Ok(out)
}

impl Encoder<Outgoing> for BgpCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Outgoing, dst: &mut BytesMut) -> Result<(), CodecError> {
        let bytes = encode_message(&msg.to_message())?;
        dst.put_slice(&bytes);
        Ok(())
    }
}

/// A NOTIFICATION Cease with the given subcode builder (helper for the speaker).
pub fn cease(err: fn(Box<[u8]>) -> CeaseError) -> BgpNotificationMessage {
    BgpNotificationMessage::CeaseError(err(Box::new([])))
}

fn attr(opt: bool, trans: bool, ext: bool, v: PathAttributeValue) -> PathAttribute {
    // The flags come from the attribute's own definition, so `from` cannot refuse them.
    PathAttribute::from(opt, trans, false, ext, v).unwrap_or_else(|(v, e)| {
        panic!("internal: attribute flags for {v:?} rejected: {e:?}");
    })
}

/// An optional transitive attribute twill models, with the Partial bit it arrived with.
fn attr_partial(partial: bool, ext: bool, v: PathAttributeValue) -> PathAttribute {
    PathAttribute::from(true, true, partial, ext, v).unwrap_or_else(|(v, e)| {
        panic!("internal: attribute flags for {v:?} rejected: {e:?}");
    })
}

/// Builds the path attributes for one group of prefixes (all of one family), in ascending
/// type code.
fn build_attrs(
    a: &PathAttrs,
    afi: Afi,
    nlri: &[IpNet],
    asn4: bool,
) -> Result<Vec<PathAttribute>, CodecError> {
    let mut out = Vec::new();
    out.push(attr(
        false,
        true,
        false,
        PathAttributeValue::Origin(match a.origin {
            Origin::Igp => NgOrigin::IGP,
            Origin::Egp => NgOrigin::EGP,
            Origin::Incomplete => NgOrigin::Incomplete,
        }),
    ));
    let seg_type = |set: bool| {
        if set {
            AsPathSegmentType::AsSet
        } else {
            AsPathSegmentType::AsSequence
        }
    };
    if asn4 {
        let segs: Vec<As4PathSegment> = a
            .as_path
            .iter()
            .map(|s| As4PathSegment::new(seg_type(s.set), s.asns.clone()))
            .collect();
        out.push(attr(
            false,
            true,
            true,
            PathAttributeValue::AsPath(AsPath::As4PathSegments(segs.into())),
        ));
    } else {
        // A 2-octet peer: AS_TRANS in AS_PATH and the real path in AS4_PATH (RFC 6793 §4.2.2).
        let mut big = false;
        let segs: Vec<As2PathSegment> = a
            .as_path
            .iter()
            .map(|s| {
                As2PathSegment::new(
                    seg_type(s.set),
                    s.asns
                        .iter()
                        .map(|x| {
                            u16::try_from(*x).unwrap_or_else(|_| {
                                big = true;
                                AS_TRANS
                            })
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        out.push(attr(
            false,
            true,
            true,
            PathAttributeValue::AsPath(AsPath::As2PathSegments(segs.into())),
        ));
        if big {
            let segs: Vec<As4PathSegment> = a
                .as_path
                .iter()
                .map(|s| As4PathSegment::new(seg_type(s.set), s.asns.clone()))
                .collect();
            out.push(attr(
                true,
                true,
                true,
                PathAttributeValue::As4Path(As4Path::new(segs)),
            ));
        }
    }
    if afi == Afi::Ipv4 {
        let IpAddr::V4(nh) = a.next_hop else {
            return Err(CodecError::Encode(format!(
                "IPv4 route with IPv6 next hop {}",
                a.next_hop
            )));
        };
        out.push(attr(
            false,
            true,
            false,
            PathAttributeValue::NextHop(NextHop::new(nh)),
        ));
    }
    if let Some(m) = a.med {
        out.push(attr(
            true,
            false,
            false,
            PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(m)),
        ));
    }
    if let Some(lp) = a.local_pref {
        out.push(attr(
            false,
            true,
            false,
            PathAttributeValue::LocalPreference(LocalPreference::new(lp)),
        ));
    }
    if a.atomic_aggregate {
        out.push(attr(
            false,
            true,
            false,
            PathAttributeValue::AtomicAggregate(AtomicAggregate),
        ));
    }
    if let Some((asn, id)) = a.aggregator {
        let agg = if asn4 {
            Aggregator::As4Aggregator(As4Aggregator::new(asn, id))
        } else {
            Aggregator::As2Aggregator(As2Aggregator::new(
                u16::try_from(asn).unwrap_or(AS_TRANS),
                id,
            ))
        };
        out.push(attr_partial(
            a.partial.contains(&scan::AGGREGATOR),
            false,
            PathAttributeValue::Aggregator(agg),
        ));
    }
    if !a.communities.is_empty() {
        out.push(attr_partial(
            a.partial.contains(&scan::COMMUNITIES),
            // Extended length only when needed, so a route passed on keeps its bytes.
            a.communities.len() * 4 > usize::from(u8::MAX),
            PathAttributeValue::Communities(Communities::new(
                a.communities
                    .iter()
                    .map(|c| netgauze_bgp_pkt::community::Community::new(*c))
                    .collect::<Vec<_>>(),
            )),
        ));
    }
    if let Some(o) = a.originator_id {
        out.push(attr(
            true,
            false,
            false,
            PathAttributeValue::Originator(Originator::new(o)),
        ));
    }
    if !a.cluster_list.is_empty() {
        out.push(attr(
            true,
            false,
            true,
            PathAttributeValue::ClusterList(ClusterList::new(
                a.cluster_list
                    .iter()
                    .map(|c| ClusterId::new(*c))
                    .collect::<Vec<_>>(),
            )),
        ));
    }
    if afi == Afi::Ipv6 {
        let global = match a.next_hop {
            IpAddr::V6(v6) => v6,
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        };
        // Without a global next hop the link-local one goes alone (16 octets), the form the
        // decoder reads back as "link-local only".
        let (nh, local) = match a.next_hop_local {
            Some(ll) if global.is_unspecified() => (ll, None),
            local => (global, local),
        };
        out.push(attr(
            true,
            false,
            true,
            PathAttributeValue::MpReach(MpReach::Ipv6Unicast {
                next_hop_global: nh,
                next_hop_local: local,
                nlri: v6_nlri(nlri).into(),
            }),
        ));
    }
    for raw in &a.unknown {
        // The received flags go out as they came (Partial already set by the scan); the
        // extended-length bit is forced only when the value needs it, as netgauze writes a
        // two-octet length for a long value whatever the flag says.
        let ext = raw.flags & 0x10 != 0 || raw.value.len() > usize::from(u8::MAX);
        let value = PathAttributeValue::UnknownAttribute(UnknownAttribute::new(
            raw.code,
            raw.value.clone(),
        ));
        out.push(
            PathAttribute::from(true, true, raw.flags & 0x20 != 0, ext, value)
                .map_err(|(_, e)| CodecError::Encode(format!("attribute {}: {e:?}", raw.code)))?,
        );
    }
    // Ascending type code, the order most speakers send (AS4_PATH was pushed next to
    // AS_PATH, the carried attributes last).
    out.sort_by_key(type_code);
    Ok(out)
}

fn type_code(pa: &PathAttribute) -> u8 {
    match pa.path_attribute_type() {
        Ok(t) => t as u8,
        Err(c) => c,
    }
}

fn v4_nlri(p: &[IpNet]) -> Vec<Ipv4UnicastAddress> {
    p.iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Ipv4Unicast::from_net(*v4)
                .ok()
                .map(Ipv4UnicastAddress::new_no_path_id),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn v6_nlri(p: &[IpNet]) -> Vec<Ipv6UnicastAddress> {
    p.iter()
        .filter_map(|n| match n {
            IpNet::V6(v6) => Ipv6Unicast::from_net(*v6)
                .ok()
                .map(|u| Ipv6UnicastAddress::new(None, u)),
            IpNet::V4(_) => None,
        })
        .collect()
}

/// Withdrawn prefixes per UPDATE: a /32 is 5 octets and an IPv6 /128 is 17, so these stay
/// well inside 4096 octets. Announcements are split by size instead ([`chunks_within`]).
const V4_PER_UPDATE: usize = 500;
const V6_PER_UPDATE: usize = 150;

/// Encodes announcements and withdrawals as UPDATE messages (IPv4 in the classic fields,
/// IPv6 in MP_REACH / MP_UNREACH), grouping prefixes that share attributes.
pub fn encode_updates(
    announce: &[(PathAttrs, IpNet)],
    withdraw: &[IpNet],
    asn4: bool,
) -> Result<Vec<BgpMessage>, CodecError> {
    let mut msgs = Vec::new();
    let w4: Vec<IpNet> = withdraw
        .iter()
        .filter(|n| n.addr().is_ipv4())
        .copied()
        .collect();
    let w6: Vec<IpNet> = withdraw
        .iter()
        .filter(|n| n.addr().is_ipv6())
        .copied()
        .collect();
    for chunk in w4.chunks(V4_PER_UPDATE) {
        msgs.push(BgpMessage::Update(BgpUpdateMessage::new(
            v4_nlri(chunk),
            vec![],
            vec![],
        )));
    }
    for chunk in w6.chunks(V6_PER_UPDATE) {
        msgs.push(BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![attr(
                true,
                false,
                true,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast {
                    nlri: v6_nlri(chunk).into(),
                }),
            )],
            vec![],
        )));
    }
    // Group by attributes; BTreeMap over the debug form keeps the output order stable.
    let mut groups: BTreeMap<String, (&PathAttrs, Vec<IpNet>)> = BTreeMap::new();
    for (a, n) in announce {
        let key = format!("{}{a:?}", Afi::of(n) as u8);
        groups
            .entry(key)
            .or_insert_with(|| (a, Vec::new()))
            .1
            .push(*n);
    }
    for (a, nets) in groups.values() {
        let afi = Afi::of(&nets[0]);
        // The attributes do not depend on the prefixes (an empty MP_REACH already has its
        // two-octet length), so what is left of the 4096 octets goes to prefixes. Carried
        // attributes can be large: a route a peer sent in a full message, grown by our AS or
        // reflection attributes, may not fit at all; it is then not passed on (the session
        // stays up), as a reset would drop every other route with it.
        let base: usize = build_attrs(a, afi, &[], asn4)?
            .iter()
            .map(WritablePdu::len)
            .sum();
        let room = MAX_MESSAGE.saturating_sub(HEADER + 4 + base);
        let Some(chunks) = chunks_within(nets, room) else {
            tracing::warn!(
                "bgp: {} prefixes (first {}) not sent: their attributes leave no room in a \
                 {MAX_MESSAGE}-octet UPDATE",
                nets.len(),
                nets[0]
            );
            continue;
        };
        for chunk in chunks {
            let attrs = build_attrs(a, afi, chunk, asn4)?;
            let nlri = if afi == Afi::Ipv4 {
                v4_nlri(chunk)
            } else {
                Vec::new()
            };
            msgs.push(BgpMessage::Update(BgpUpdateMessage::new(
                vec![],
                attrs,
                nlri,
            )));
        }
    }
    Ok(msgs)
}

/// Splits prefixes into runs whose encoded NLRI (length octet plus address octets each)
/// fit in `room` octets; None when not even one fits.
fn chunks_within(nets: &[IpNet], room: usize) -> Option<Vec<&[IpNet]>> {
    let mut out = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, n) in nets.iter().enumerate() {
        let size = 1 + usize::from(n.prefix_len()).div_ceil(8);
        if size > room {
            return None;
        }
        if used + size > room {
            out.push(&nets[start..i]);
            (start, used) = (i, 0);
        }
        used += size;
    }
    out.push(&nets[start..]);
    Some(out)
}

/// The End-of-RIB marker for a family (RFC 4724 §2).
pub fn end_of_rib(afi: Afi) -> BgpMessage {
    match afi {
        Afi::Ipv4 => BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![])),
        Afi::Ipv6 => BgpMessage::Update(BgpUpdateMessage::new(
            vec![],
            vec![attr(
                true,
                false,
                false,
                PathAttributeValue::MpUnreach(MpUnreach::Ipv6Unicast { nlri: Box::new([]) }),
            )],
            vec![],
        )),
    }
}

/// fe80::/10: RFC 4291 link-local unicast.
pub fn is_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// An unspecified next hop of the given family (used for "next hop self" placeholders).
pub fn unspecified(afi: Afi) -> IpAddr {
    match afi {
        Afi::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Afi::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
pub(crate) mod tests;
