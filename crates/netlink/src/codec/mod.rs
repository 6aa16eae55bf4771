//! rtnetlink messages that more than one client sends or reads: routes ([`route`]) and
//! nexthop objects ([`nexthop`]). The asynchronous client ([`crate::rtnl`]) and the bulk
//! route writer ([`crate::bulk`]) both build on these and never on each other's.

pub mod nexthop;
pub mod route;
