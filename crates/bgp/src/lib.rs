//! twill's BGP-4 speaker.
//!
//! Data flows one way: bytes → [`codec`] (netgauze framing, RFC 7606 judgement in [`scan`]) →
//! [`fsm`] (pure session state machine) → [`rib`] (pure Adj-RIB-In, Loc-RIB best path,
//! Adj-RIB-Out export with route reflection and graceful restart) → events for the agent.
//! [`speaker`] is the only part that does I/O: it runs the sessions on tokio and feeds the
//! pure parts.

pub mod attrs;
pub mod codec;
pub mod fsm;
pub mod rib;
pub mod scan;
pub mod speaker;

pub use attrs::{Afi, AsSegment, Origin, PathAttrs};
pub use codec::UpdateIn;
pub use fsm::State;
pub use rib::{BestChange, PrefixCounts, Route, Source};
pub use speaker::{
    BgpError, GracefulRestart, PeerConfig, PeerStatus, Speaker, SpeakerConfig, SpeakerEvent,
    Status, learned_route,
};
