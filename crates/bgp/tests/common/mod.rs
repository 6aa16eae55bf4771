//! Loopback speakers for the speaker's tests (`loopback.rs`, `auth.rs`): speaker `n` listens
//! on 127.0.0.n with short timers, and `peer_of` configures the session from one to another.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use twill_bgp::{PeerConfig, Speaker, SpeakerConfig, SpeakerEvent};

pub fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

pub async fn speaker(last: u8, asn: u32) -> (Speaker, UnboundedReceiver<SpeakerEvent>) {
    let mut cfg = SpeakerConfig::new(asn, Ipv4Addr::new(10, 0, 0, last));
    cfg.listen = Some(SocketAddr::new(ip(last), 0));
    cfg.connect_retry = Duration::from_secs(1);
    cfg.hold_time = 9;
    Speaker::start(cfg).await.unwrap()
}

/// The session from speaker `me` to `other` (which listens on 127.0.0.`other_last`).
pub fn peer_of(me: u8, other: &Speaker, other_last: u8, asn: u32) -> PeerConfig {
    let mut p = PeerConfig::new(ip(other_last), asn);
    p.port = other.listen_addr().unwrap().port();
    p.local_address = Some(ip(me));
    p
}
