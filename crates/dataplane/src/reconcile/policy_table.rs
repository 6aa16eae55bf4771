//! The policy table (`inet twill-policy`) as the reconciler's task writes it: the policy
//! task's scripts, each one `nft -f` transaction, with the table's status and the retry of a
//! refused whole table.
//!
//! A whole table ([`PolicyTable::table`], every resync of the policy task) is written with
//! its fingerprint as the table's comment ([`crate::policy::table_script`]). When the kernel's
//! table carries the comment of the definition handed over and the rules per chain it had
//! right after this writer wrote that definition, nothing is written: two netlink requests
//! and no process. Any other change of the table (an incremental script, the whole table
//! written as a fallback without a comment) drops that record, because the comment then no
//! longer names what the table holds: the next whole table is written, which makes the
//! comment right again. A table deleted or edited by hand no longer matches and is written
//! again too. Without a record (a restarted agent) the first whole table is written.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tracing::{debug, warn};

use super::model::ObjectKey;
use super::status::{ObjectStatus, Statuses, lock};
use crate::nfnl::{self, NFPROTO_INET};
use crate::nft_state::fingerprint;
use crate::policy::TABLE;

/// Renders the whole policy table, for when a change of it was refused.
pub type WholePolicy = Box<dyn FnOnce() -> String + Send>;

/// What writing a whole policy table did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyWrite {
    /// The table was written (one `nft -f`).
    Written,
    /// The kernel's table already held the definition: nothing ran.
    Unchanged,
}

/// A whole table this writer wrote, as the kernel held it right after.
#[derive(Debug)]
struct Written {
    /// The table's comment: the fingerprint of the definition.
    mark: String,
    /// Rules per chain.
    rules: HashMap<String, usize>,
}

/// A script to write (again), with the comment it gives the table if it is a whole table.
#[derive(Debug)]
struct Script {
    text: String,
    mark: Option<String>,
}

/// The task's record of the policy table.
#[derive(Debug, Default)]
pub(super) struct PolicyTable {
    /// The whole table last written, while nothing else changed the table since.
    written: Option<Written>,
    /// The whole table, while writing it is refused.
    retry: Option<Script>,
}

impl PolicyTable {
    /// Makes the table hold `definition` (`table inet twill-policy { ... }`): nothing when it
    /// already does (see the module header), otherwise the whole table in one transaction.
    pub fn table(
        &mut self,
        definition: &str,
        statuses: &Mutex<Statuses>,
    ) -> Result<PolicyWrite, crate::Error> {
        let mark = fingerprint(definition);
        if self.holds(&mark) {
            debug!("policy table unchanged: not written");
            self.retry = None;
            record(&Ok(()), statuses);
            return Ok(PolicyWrite::Unchanged);
        }
        let script = Script {
            text: crate::policy::table_script(definition, &mark),
            mark: Some(mark),
        };
        let result = self.write(&script);
        record(&result, statuses);
        self.retry = result.is_err().then_some(script);
        result.map(|()| PolicyWrite::Written)
    }

    /// Applies a change of the table (or, refused, the whole table rendered by `whole`).
    pub fn change(
        &mut self,
        script: String,
        whole: Option<WholePolicy>,
        statuses: &Mutex<Statuses>,
    ) -> Result<(), crate::Error> {
        let mut last = Script {
            text: script,
            mark: None,
        };
        let mut result = self.write(&last);
        if result.is_err()
            && let Some(whole) = whole
        {
            last.text = whole();
            result = self.write(&last);
        }
        record(&result, statuses);
        self.retry = result.is_err().then_some(last);
        result
    }

    /// Writes the whole table again if that was refused and its retry is due.
    pub fn retry_due(&mut self, statuses: &Mutex<Statuses>) {
        let Some(script) = self.retry.take() else {
            return;
        };
        let due = match lock(statuses).get(&ObjectKey::policy_table()) {
            Some(ObjectStatus::Error { retry_at, .. }) => *retry_at <= Instant::now(),
            _ => true,
        };
        if !due {
            self.retry = Some(script);
            return;
        }
        let result = self.write(&script);
        if let Err(e) = &result {
            warn!("retrying the policy table: {e}");
        }
        record(&result, statuses);
        if result.is_err() {
            self.retry = Some(script);
        }
    }

    /// The table was removed with everything else twill owns.
    pub fn forget(&mut self) {
        *self = PolicyTable::default();
    }

    /// Whether the kernel's table is the whole table this writer last wrote, with comment
    /// `mark`, unchanged since (as far as its comment and rules per chain tell). A table that
    /// cannot be read counts as not holding it.
    fn holds(&self, mark: &str) -> bool {
        let Some(written) = self.written.as_ref().filter(|w| w.mark == mark) else {
            return false;
        };
        let held = nfnl::with_sock(|sock| {
            let comment = nfnl::table_comment(sock, NFPROTO_INET, TABLE)?;
            Ok(comment.flatten().as_deref() == Some(mark)
                && nfnl::rule_counts(sock, NFPROTO_INET, TABLE)? == written.rules)
        });
        held.unwrap_or_else(|e| {
            debug!("checking the policy table: {e:?}");
            false
        })
    }

    /// Runs a script; records a whole table the kernel accepted, with the rules it then holds.
    fn write(&mut self, script: &Script) -> Result<(), crate::Error> {
        self.written = None;
        crate::policy::apply("network policy", &script.text)?;
        if let Some(mark) = &script.mark {
            // One dump now spares the next resync its nft run. Unreadable, there is no
            // record and the next whole table is written again.
            match nfnl::with_sock(|sock| nfnl::rule_counts(sock, NFPROTO_INET, TABLE)) {
                Ok(rules) => {
                    self.written = Some(Written {
                        mark: mark.clone(),
                        rules,
                    })
                }
                Err(e) => debug!("reading back the policy table: {e:?}"),
            }
        }
        Ok(())
    }
}

fn record(result: &Result<(), crate::Error>, statuses: &Mutex<Statuses>) {
    let key = ObjectKey::policy_table();
    let mut statuses = lock(statuses);
    match result {
        Ok(()) => statuses.done(&key),
        Err(e) => statuses.failed(key, e.to_string(), Instant::now()),
    }
}
