//! The kernel's nexthop objects (`ip nexthop`), which [`crate::bulk`] creates for next hops
//! that many routes share: listing them and deleting those nobody uses any more. Both run on
//! the bulk socket, which keeps the list of known objects.

use super::{Rtnl, all_closed};
use crate::Result;
use crate::codec::nexthop::Nexthop;

impl Rtnl {
    /// The kernel's single-gateway IPv4 nexthop objects, of all protocols (an error when the
    /// kernel refuses to list them, e.g. one built without nexthop objects).
    pub async fn nexthops(&self) -> Result<Vec<Nexthop>> {
        self.on_bulk("list nexthop objects", |b| b.nexthops())
            .await?
    }

    /// Deletes nexthop objects (and every route through them); one outcome per id, an
    /// object already gone is success.
    pub async fn delete_nexthops(&self, ids: Vec<u32>) -> Vec<Result<()>> {
        let n = ids.len();
        self.on_bulk("delete nexthop objects", move |b| b.delete_nexthops(&ids))
            .await
            .unwrap_or_else(|_| all_closed(n, "delete nexthop objects"))
    }
}
