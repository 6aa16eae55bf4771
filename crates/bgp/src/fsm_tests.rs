//! FSM tests: every path through the states, with no sockets and no clock.

use super::*;
use crate::attrs::Afi;

fn local(hold: u16) -> OpenInfo {
    OpenInfo {
        asn: 65001,
        hold_time: hold,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        families: [Afi::Ipv4].into(),
        asn4: true,
        route_refresh: true,
        graceful_restart: None,
    }
}

fn peer_open(hold: u16) -> OpenInfo {
    OpenInfo {
        asn: 65002,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        ..local(hold)
    }
}

fn fsm(hold: u16, passive: bool) -> Fsm {
    Fsm::new(FsmConfig {
        local: local(hold),
        peer_asn: 65002,
        passive,
        connect_retry: Duration::from_secs(5),
    })
}

fn established(hold_local: u16, hold_peer: u16) -> Fsm {
    let mut f = fsm(hold_local, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(peer_open(hold_peer)));
    let acts = f.handle(Event::KeepaliveReceived);
    assert!(acts.iter().any(|a| matches!(a, Action::SessionUp(_))));
    f
}

#[test]
fn active_start_connects_and_passive_waits() {
    let mut f = fsm(90, false);
    let acts = f.handle(Event::ManualStart);
    assert_eq!(f.state(), State::Connect);
    assert!(acts.contains(&Action::Connect));
    assert!(acts.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(5)
    )));

    let mut p = fsm(90, true);
    let acts = p.handle(Event::ManualStart);
    assert_eq!(p.state(), State::Active);
    assert!(!acts.contains(&Action::Connect));
}

#[test]
fn full_handshake_to_established() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    let acts = f.handle(Event::TcpConnected);
    assert_eq!(f.state(), State::OpenSent);
    assert!(acts.contains(&Action::Send(Outgoing::Open(local(90)))));
    assert!(acts.contains(&Action::StartTimer(Timer::Hold, LARGE_HOLD)));

    let acts = f.handle(Event::OpenReceived(peer_open(30)));
    assert_eq!(f.state(), State::OpenConfirm);
    assert!(acts.contains(&Action::Send(Outgoing::Keepalive)));
    // Negotiated hold is the smaller (30), keepalive a third of it.
    assert!(acts.contains(&Action::StartTimer(Timer::Hold, Duration::from_secs(30))));
    assert!(acts.contains(&Action::StartTimer(
        Timer::Keepalive,
        Duration::from_secs(10)
    )));

    let acts = f.handle(Event::KeepaliveReceived);
    assert_eq!(f.state(), State::Established);
    let Some(Action::SessionUp(n)) = acts.iter().find(|a| matches!(a, Action::SessionUp(_))) else {
        panic!("{acts:?}")
    };
    assert_eq!((n.hold_time, n.keepalive), (30, 10));
    assert_eq!(n.peer.router_id, Ipv4Addr::new(10, 0, 0, 2));
}

#[test]
fn hold_time_zero_means_no_timers() {
    let mut f = fsm(0, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    let acts = f.handle(Event::OpenReceived(peer_open(90)));
    assert!(acts.contains(&Action::StopTimer(Timer::Hold)));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Keepalive, _)))
    );
    let acts = f.handle(Event::KeepaliveReceived);
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::Hold, _)))
    );
}

#[test]
fn negotiate_hold_rules() {
    assert_eq!(negotiate_hold(90, 30), Some(30));
    assert_eq!(negotiate_hold(3, 90), Some(3));
    assert_eq!(negotiate_hold(90, 0), Some(0));
    assert_eq!(negotiate_hold(90, 1), None);
    assert_eq!(negotiate_hold(90, 2), None);
}

#[test]
fn open_with_hold_time_two_is_refused() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    let acts = f.handle(Event::OpenReceived(peer_open(2)));
    assert_eq!(f.state(), State::Idle);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(
            BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime { .. })
        ))
    )));
    assert!(acts.contains(&Action::Close));
}

#[test]
fn open_from_wrong_as_is_refused() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    let mut o = peer_open(90);
    o.asn = 65099;
    let acts = f.handle(Event::OpenReceived(o));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(
            BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { .. })
        ))
    )));
    // The session never came up, so it does not "go down".
    assert!(!acts.iter().any(|a| matches!(a, Action::SessionDown(_))));
}

#[test]
fn open_with_our_router_id_is_refused() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    let mut o = peer_open(90);
    o.router_id = Ipv4Addr::new(10, 0, 0, 1);
    let acts = f.handle(Event::OpenReceived(o));
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(
            BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier { .. })
        ))
    )));
}

#[test]
fn traffic_restarts_hold_timer_and_keepalive_timer_sends() {
    let mut f = established(9, 9);
    for ev in [
        Event::KeepaliveReceived,
        Event::UpdateReceived,
        Event::RouteRefreshReceived,
    ] {
        assert_eq!(
            f.handle(ev),
            vec![Action::StartTimer(Timer::Hold, Duration::from_secs(9))]
        );
    }
    let acts = f.handle(Event::TimerExpired(Timer::Keepalive));
    assert_eq!(
        acts,
        vec![
            Action::Send(Outgoing::Keepalive),
            Action::StartTimer(Timer::Keepalive, Duration::from_secs(3))
        ]
    );
}

#[test]
fn hold_expiry_sends_notification_and_is_not_graceful() {
    let mut f = established(9, 9);
    let acts = f.handle(Event::TimerExpired(Timer::Hold));
    assert_eq!(f.state(), State::Idle);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(
            BgpNotificationMessage::HoldTimerExpiredError(_)
        ))
    )));
    let Some(Action::SessionDown(r)) = acts.iter().find(|a| matches!(a, Action::SessionDown(_)))
    else {
        panic!()
    };
    assert_eq!(*r, DownReason::HoldTimerExpired);
    assert!(!r.graceful());
    // Automatic restart: the ConnectRetry timer brings it back.
    assert!(acts.contains(&Action::StartTimer(
        Timer::ConnectRetry,
        Duration::from_secs(5)
    )));
    let acts = f.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(f.state(), State::Connect);
    assert!(acts.contains(&Action::Connect));
}

#[test]
fn tcp_loss_when_established_is_graceful() {
    let mut f = established(90, 90);
    let acts = f.handle(Event::TcpClosed);
    let Some(Action::SessionDown(r)) = acts.iter().find(|a| matches!(a, Action::SessionDown(_)))
    else {
        panic!()
    };
    assert!(r.graceful());
    assert!(!acts.iter().any(|a| matches!(a, Action::Send(_))));
}

#[test]
fn update_in_open_confirm_is_an_fsm_error() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(peer_open(90)));
    let acts = f.handle(Event::UpdateReceived);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(
            BgpNotificationMessage::FiniteStateMachineError(
                FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { .. }
            )
        ))
    )));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn connect_failure_goes_active_then_retries() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpFailed);
    assert_eq!(f.state(), State::Active);
    let acts = f.handle(Event::TimerExpired(Timer::ConnectRetry));
    assert_eq!(f.state(), State::Connect);
    assert!(acts.contains(&Action::Connect));
}

#[test]
fn passive_accepts_inbound() {
    let mut f = fsm(90, true);
    f.handle(Event::ManualStart);
    let acts = f.handle(Event::TcpConnected);
    assert_eq!(f.state(), State::OpenSent);
    assert!(acts.contains(&Action::Send(Outgoing::Open(local(90)))));
}

#[test]
fn manual_stop_sends_cease_and_stays_down() {
    let mut f = established(90, 90);
    let acts = f.handle(Event::ManualStop);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(BgpNotificationMessage::CeaseError(
            CeaseError::AdministrativeShutdown { .. }
        )))
    )));
    assert!(acts.contains(&Action::StopTimer(Timer::ConnectRetry)));
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::StartTimer(Timer::ConnectRetry, _)))
    );
}

#[test]
fn notification_received_ends_session_without_reply() {
    let mut f = established(90, 90);
    let n = BgpNotificationMessage::CeaseError(CeaseError::AdministrativeReset {
        value: Box::new([]),
    });
    let acts = f.handle(Event::NotificationReceived(n));
    assert!(!acts.iter().any(|a| matches!(a, Action::Send(_))));
    assert!(acts.contains(&Action::Close));
    assert_eq!(f.state(), State::Idle);
}

#[test]
fn collision_loser_sends_cease_collision() {
    let mut f = fsm(90, false);
    f.handle(Event::ManualStart);
    f.handle(Event::TcpConnected);
    f.handle(Event::OpenReceived(peer_open(90)));
    let acts = f.handle(Event::CollisionLost);
    assert!(acts.iter().any(|a| matches!(
        a,
        Action::Send(Outgoing::Notification(BgpNotificationMessage::CeaseError(
            CeaseError::ConnectionCollisionResolution { .. }
        )))
    )));
}

#[test]
fn collision_resolution_by_router_id() {
    let lo = Ipv4Addr::new(10, 0, 0, 1);
    let hi = Ipv4Addr::new(10, 0, 0, 2);
    assert!(collision_keeps_local(hi, lo));
    assert!(!collision_keeps_local(lo, hi));
}
