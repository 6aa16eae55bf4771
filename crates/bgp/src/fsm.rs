//! The RFC 4271 §8 session state machine, pure: events in, actions out.
//!
//! No sockets and no clocks: the speaker turns socket results, received messages and timer
//! expiries into [`Event`]s and carries out the returned [`Action`]s, so every transition is
//! unit-tested deterministically. One machine drives one connection; the speaker resolves
//! connection collisions with [`collision_keeps_local`].

use std::net::Ipv4Addr;
use std::time::Duration;

use netgauze_bgp_pkt::notification::{
    BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError,
    OpenMessageError,
};

use crate::codec::{OpenInfo, Outgoing};

/// Session states (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// The three session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    ConnectRetry,
    Hold,
    Keepalive,
}

/// Inputs to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    ManualStart,
    ManualStop,
    /// The TCP connection (ours or the peer's) is up.
    TcpConnected,
    /// Our connection attempt failed.
    TcpFailed,
    /// The connection closed or broke.
    TcpClosed,
    OpenReceived(OpenInfo),
    KeepaliveReceived,
    UpdateReceived,
    RouteRefreshReceived,
    NotificationReceived(BgpNotificationMessage),
    /// The codec found an error that ends the session; send this NOTIFICATION.
    DecodeError(BgpNotificationMessage),
    /// This connection lost a collision (RFC 4271 §6.8).
    CollisionLost,
    TimerExpired(Timer),
}

/// Why a session went down.
#[derive(Debug, Clone, PartialEq)]
pub enum DownReason {
    Stopped,
    TcpClosed,
    HoldTimerExpired,
    NotificationSent(BgpNotificationMessage),
    NotificationReceived(BgpNotificationMessage),
}

impl DownReason {
    /// Whether graceful restart keeps the peer's routes (RFC 4724 §4.2: only when the
    /// session ended without a NOTIFICATION, i.e. the TCP session simply went away).
    pub fn graceful(&self) -> bool {
        matches!(self, DownReason::TcpClosed)
    }
}

/// What the session agreed on when it reached Established.
#[derive(Debug, Clone, PartialEq)]
pub struct Negotiated {
    pub hold_time: u16,
    pub keepalive: u16,
    pub peer: OpenInfo,
}

/// Outputs of the machine, carried out in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Connect,
    Close,
    Send(Outgoing),
    StartTimer(Timer, Duration),
    StopTimer(Timer),
    SessionUp(Negotiated),
    SessionDown(DownReason),
}

/// Static settings of one session.
#[derive(Debug, Clone, PartialEq)]
pub struct FsmConfig {
    /// Our OPEN (ASN, hold time, router ID, capabilities).
    pub local: OpenInfo,
    /// The AS the peer must announce.
    pub peer_asn: u32,
    /// Only accept connections, never connect.
    pub passive: bool,
    pub connect_retry: Duration,
}

/// The hold time used while waiting for an OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD: Duration = Duration::from_secs(240);

/// Negotiated hold time: the smaller of both, where 0 means no keepalives (RFC 4271 §4.2).
/// Returns None for a proposal of 1 or 2 seconds, which must be refused.
pub fn negotiate_hold(local: u16, remote: u16) -> Option<u16> {
    if remote == 1 || remote == 2 {
        return None;
    }
    Some(local.min(remote))
}

/// Collision resolution (RFC 4271 §6.8): the connection initiated by the speaker with the
/// higher BGP Identifier survives. True when the connection we initiated is kept.
pub fn collision_keeps_local(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

/// The machine itself.
#[derive(Debug, Clone)]
pub struct Fsm {
    cfg: FsmConfig,
    state: State,
    negotiated: Option<Negotiated>,
}

fn open_error(err: fn(Box<[u8]>) -> OpenMessageError, data: Vec<u8>) -> BgpNotificationMessage {
    BgpNotificationMessage::OpenMessageError(err(data.into_boxed_slice()))
}

impl Fsm {
    pub fn new(cfg: FsmConfig) -> Fsm {
        Fsm {
            cfg,
            state: State::Idle,
            negotiated: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn config(&self) -> &FsmConfig {
        &self.cfg
    }

    /// The peer's OPEN and the agreed timers, from OpenConfirm on.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.negotiated.as_ref()
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
        if self.cfg.passive {
            self.state = State::Active;
        } else {
            self.state = State::Connect;
            out.push(Action::Connect);
        }
    }

    /// Ends the session: optional NOTIFICATION, close, timers off, back to Idle with the
    /// ConnectRetry timer running so the session comes back by itself (automatic start).
    fn down(
        &mut self,
        out: &mut Vec<Action>,
        notify: Option<BgpNotificationMessage>,
        reason: DownReason,
    ) {
        if let Some(n) = notify {
            out.push(Action::Send(Outgoing::Notification(n)));
        }
        out.push(Action::Close);
        out.push(Action::StopTimer(Timer::Hold));
        out.push(Action::StopTimer(Timer::Keepalive));
        let was_up = self.state == State::Established;
        self.state = State::Idle;
        self.negotiated = None;
        out.push(Action::StartTimer(
            Timer::ConnectRetry,
            self.cfg.connect_retry,
        ));
        // Only a session that was up goes down; failed attempts are just retried.
        if was_up {
            out.push(Action::SessionDown(reason));
        }
    }

    fn fsm_error(&self) -> BgpNotificationMessage {
        let value = Box::new([]);
        BgpNotificationMessage::FiniteStateMachineError(match self.state {
            State::OpenSent => {
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value }
            }
            State::OpenConfirm => {
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { value }
            }
            State::Established => {
                FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { value }
            }
            _ => FiniteStateMachineError::Unspecific { value },
        })
    }

    fn restart_hold(&self, out: &mut Vec<Action>) {
        if let Some(n) = &self.negotiated
            && n.hold_time > 0
        {
            out.push(Action::StartTimer(
                Timer::Hold,
                Duration::from_secs(n.hold_time.into()),
            ));
        }
    }

    /// Checks a received OPEN (RFC 4271 §6.2).
    fn check_open(&self, open: &OpenInfo) -> Result<u16, BgpNotificationMessage> {
        if open.asn != self.cfg.peer_asn {
            return Err(open_error(
                |value| OpenMessageError::BadPeerAs { value },
                u16::try_from(open.asn)
                    .unwrap_or(crate::attrs::AS_TRANS)
                    .to_be_bytes()
                    .to_vec(),
            ));
        }
        if open.router_id.is_unspecified() || open.router_id == self.cfg.local.router_id {
            return Err(open_error(
                |value| OpenMessageError::BadBgpIdentifier { value },
                open.router_id.octets().to_vec(),
            ));
        }
        negotiate_hold(self.cfg.local.hold_time, open.hold_time).ok_or_else(|| {
            open_error(
                |value| OpenMessageError::UnacceptableHoldTime { value },
                vec![],
            )
        })
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        use State::*;
        match (self.state, ev) {
            (Idle, Event::ManualStart) | (Idle, Event::TimerExpired(Timer::ConnectRetry)) => {
                self.start(&mut out)
            }
            // An inbound connection while idle is accepted as if started (automatic start
            // with passive TCP establishment).
            (Idle, Event::TcpConnected) => {
                self.start(&mut out);
                out.retain(|a| *a != Action::Connect);
                self.connected(&mut out);
            }
            (Idle, _) => {}
            (_, Event::ManualStop) => {
                let notify =
                    matches!(self.state, OpenSent | OpenConfirm | Established).then(|| {
                        BgpNotificationMessage::CeaseError(CeaseError::AdministrativeShutdown {
                            value: Box::new([]),
                        })
                    });
                self.down(&mut out, notify, DownReason::Stopped);
                // Stopped means stopped: no automatic restart.
                out.retain(|a| {
                    *a != Action::StartTimer(Timer::ConnectRetry, self.cfg.connect_retry)
                });
                out.push(Action::StopTimer(Timer::ConnectRetry));
            }
            (Connect | Active, Event::TcpConnected) => self.connected(&mut out),
            (Connect, Event::TcpFailed) => {
                self.state = Active;
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
            }
            (Connect | Active, Event::TimerExpired(Timer::ConnectRetry)) => {
                out.push(Action::StartTimer(
                    Timer::ConnectRetry,
                    self.cfg.connect_retry,
                ));
                if !self.cfg.passive {
                    self.state = Connect;
                    out.push(Action::Connect);
                }
            }
            (Connect | Active, Event::TcpClosed | Event::TcpFailed) => {
                self.state = Active;
            }
            (Connect | Active, _) => {}
            (OpenSent, Event::OpenReceived(open)) => match self.check_open(&open) {
                Err(n) => self.down(&mut out, Some(n.clone()), DownReason::NotificationSent(n)),
                Ok(hold) => {
                    let keepalive = hold / 3;
                    out.push(Action::StopTimer(Timer::ConnectRetry));
                    out.push(Action::Send(Outgoing::Keepalive));
                    if hold > 0 {
                        out.push(Action::StartTimer(
                            Timer::Hold,
                            Duration::from_secs(hold.into()),
                        ));
                        out.push(Action::StartTimer(
                            Timer::Keepalive,
                            Duration::from_secs(keepalive.max(1).into()),
                        ));
                    } else {
                        out.push(Action::StopTimer(Timer::Hold));
                    }
                    self.negotiated = Some(Negotiated {
                        hold_time: hold,
                        keepalive,
                        peer: open,
                    });
                    self.state = OpenConfirm;
                }
            },
            (OpenConfirm, Event::KeepaliveReceived) => {
                self.restart_hold(&mut out);
                self.state = Established;
                let n = self.negotiated.clone().expect("negotiated in OpenConfirm");
                out.push(Action::SessionUp(n));
            }
            (
                Established,
                Event::KeepaliveReceived | Event::UpdateReceived | Event::RouteRefreshReceived,
            ) => self.restart_hold(&mut out),
            (OpenConfirm | Established, Event::TimerExpired(Timer::Keepalive)) => {
                out.push(Action::Send(Outgoing::Keepalive));
                if let Some(n) = &self.negotiated {
                    out.push(Action::StartTimer(
                        Timer::Keepalive,
                        Duration::from_secs(n.keepalive.max(1).into()),
                    ));
                }
            }
            (OpenSent | OpenConfirm | Established, Event::TimerExpired(Timer::Hold)) => {
                let n = BgpNotificationMessage::HoldTimerExpiredError(
                    HoldTimerExpiredError::Unspecific {
                        sub_code: 0,
                        value: Box::new([]),
                    },
                );
                self.down(&mut out, Some(n), DownReason::HoldTimerExpired)
            }
            (_, Event::TimerExpired(_)) => {}
            (_, Event::NotificationReceived(n)) => {
                self.down(&mut out, None, DownReason::NotificationReceived(n))
            }
            (_, Event::DecodeError(n)) => {
                self.down(&mut out, Some(n.clone()), DownReason::NotificationSent(n))
            }
            (_, Event::CollisionLost) => {
                let n =
                    BgpNotificationMessage::CeaseError(CeaseError::ConnectionCollisionResolution {
                        value: Box::new([]),
                    });
                self.down(&mut out, Some(n.clone()), DownReason::NotificationSent(n))
            }
            (_, Event::TcpClosed | Event::TcpFailed) => {
                self.down(&mut out, None, DownReason::TcpClosed)
            }
            // OPEN received twice, UPDATE before Established, and the like.
            (
                _,
                Event::OpenReceived(_)
                | Event::KeepaliveReceived
                | Event::UpdateReceived
                | Event::RouteRefreshReceived,
            ) => {
                let n = self.fsm_error();
                self.down(&mut out, Some(n.clone()), DownReason::NotificationSent(n))
            }
            (_, Event::ManualStart | Event::TcpConnected) => {}
        }
        out
    }

    fn connected(&mut self, out: &mut Vec<Action>) {
        out.push(Action::StopTimer(Timer::ConnectRetry));
        out.push(Action::Send(Outgoing::Open(self.cfg.local.clone())));
        out.push(Action::StartTimer(Timer::Hold, LARGE_HOLD));
        self.state = State::OpenSent;
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
