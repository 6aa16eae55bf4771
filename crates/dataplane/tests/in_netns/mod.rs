//! Running a reconciler test's async code inside a test namespace: a current-thread runtime
//! on a thread switched into the namespace (netlink, nft and sysctls all act there). Shared by
//! the reconciler, host-object and watch tests.

use std::path::Path;

use twill_testkit::Netns;

/// Runs `f`'s future on a runtime of a thread inside `ns`.
pub fn in_ns<T: Send, F: std::future::Future<Output = T>>(
    ns: &Netns,
    f: impl FnOnce() -> F + Send,
) -> T {
    let netns = twill_netlink::netns::Netns::open(Path::new(&ns.path())).unwrap();
    netns
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .unwrap()
}
