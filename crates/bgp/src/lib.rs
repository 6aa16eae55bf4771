//! twill's BGP-4 speaker.
//!
//! Data flows one way: bytes → [`codec`] (netgauze framing, RFC 7606 judgement in [`scan`]) →
//! [`fsm`] (pure session state machine) → [`rib`] (pure Adj-RIB-In, Loc-RIB best path,
//! Adj-RIB-Out export with route reflection and graceful restart) → events for the agent.
//! [`speaker`] is the only part that does I/O: it runs the sessions on tokio and feeds the
//! pure parts.
//!
//! The agent's view:
//!
//! ```no_run
//! # async fn agent() -> Result<(), twill_bgp::BgpError> {
//! use twill_bgp::{PeerConfig, Speaker, SpeakerConfig, SpeakerEvent, learned_route};
//!
//! let mut cfg = SpeakerConfig::new(64512, "10.0.0.1".parse().unwrap());
//! // The node's pod block, advertised before End-of-RIB so a restart withdraws nothing.
//! cfg.local_routes.push(("10.244.1.0/24".parse().unwrap(), None));
//! cfg.graceful_restart.restarting = true; // after an agent restart: set the R bit
//! let mut tor = PeerConfig::new("10.0.0.254".parse().unwrap(), 65000);
//! tor.hold_time = Some(9);
//! cfg.peers.push(tor);
//! let (speaker, mut events) = Speaker::start(cfg).await?;
//! speaker.add_peer(PeerConfig::new("10.0.0.2".parse().unwrap(), 64512))?;
//! while let Some(ev) = events.recv().await {
//!     match ev {
//!         SpeakerEvent::BestRoutes(changes) => for change in &changes {
//!             match learned_route(change) {
//!                 Some((prefix, next_hop)) => { /* install prefix via next_hop */ }
//!                 None => { /* remove our kernel route for change.prefix, if any */ }
//!             }
//!         },
//!         SpeakerEvent::PeerState { peer, state } => { /* log, metrics */ }
//!     }
//! }
//! let status = speaker.status().await?; // per peer: state, uptime, prefix counts
//! # Ok(()) }
//! ```

pub mod attrs;
pub mod codec;
pub mod fsm;
pub mod link;
pub mod rib;
pub mod scan;
pub mod sockopt;
pub mod speaker;

pub use attrs::{Afi, AsSegment, Origin, PathAttrs};
pub use codec::UpdateIn;
pub use fsm::State;
pub use rib::{BestChange, PrefixCounts, Route, SharedLink, Source};
pub use speaker::{
    BgpError, GracefulRestart, Password, PeerConfig, PeerStatus, Speaker, SpeakerConfig,
    SpeakerEvent, Status, learned_route,
};
