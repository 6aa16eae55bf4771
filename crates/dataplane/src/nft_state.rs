//! What the kernel holds of an nft object twill writes whole (the agent's masquerade chain,
//! its host protection table): each object carries a comment naming its rules
//! ([`fingerprint`]), and observing reads that comment and the object's rule count over
//! netlink, so a reconcile that changes nothing spawns no `nft` and writes no file, also the
//! first one after the agent restarted. The writers' records in memory of what they last
//! wrote spare reading the host table's elements back.

/// One nft object as observed against what its writer last wrote or now wants, `T`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NftState<T> {
    /// Not in the kernel.
    #[default]
    Absent,
    /// In the kernel with the fingerprint and rule count of `T`.
    AsWritten(T),
    /// In the kernel, but not known to hold what the writer wrote or wants (written by an
    /// older agent without the fingerprint, or changed behind the writer's back).
    Other,
}

/// The comment twill writes on an nft object it writes whole, naming what the object holds:
/// `twill:` and 16 hex digits of the FNV-1a hash of `content` (the rules it was written
/// with). The kernel keeps it with the object, so a writer without a record (a restarted
/// agent) can tell an object that already holds what it wants from any other: same
/// fingerprint and same rule count. A comment cannot be changed on an existing table or
/// chain (the kernel ignores it on update), so the writers recreate the object to change it.
pub fn fingerprint(content: &str) -> String {
    format!("twill:{:016x}", twill_types::hash::fnv1a(content.bytes()))
}
