//! The byte encoding of the embedded store's records: a key's value with its revisions, and
//! one change-log entry.
//!
//! A hand-written format rather than serde: values are arbitrary bytes (JSON would inflate them)
//! and the layout has to stay readable by later versions, so it is explicit, versioned by a
//! leading byte, and every field is length-checked. Decoding never panics; anything malformed
//! (truncated, trailing bytes, unknown version or kind, a key that is not UTF-8) is an error.
//!
//! ```text
//! value record: 01 | create_revision i64 | mod_revision i64 | lease i64 (0: none)
//!                   | len u32 | value
//! log entry:    01 | kind u8 (0 put, 1 delete) | mod_revision i64 | len u32 | key
//!                   [put only: | create_revision i64 | lease i64 | len u32 | value]
//! ```
//! All integers are little-endian.

use crate::{Event, KeyValue, LeaseId};

const VERSION: u8 = 1;
const KIND_PUT: u8 = 0;
const KIND_DELETE: u8 = 1;

/// A key's stored state; the key itself is the table key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValueRecord {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: Option<LeaseId>,
}

impl ValueRecord {
    pub fn into_kv(self, key: String) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

pub(crate) fn encode_value(rec: &ValueRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(29 + rec.value.len());
    out.push(VERSION);
    out.extend_from_slice(&rec.create_revision.to_le_bytes());
    out.extend_from_slice(&rec.mod_revision.to_le_bytes());
    out.extend_from_slice(&lease_to_raw(rec.lease).to_le_bytes());
    put_bytes(&mut out, &rec.value);
    out
}

pub(crate) fn decode_value(bytes: &[u8]) -> Result<ValueRecord, String> {
    let mut r = Reader(bytes);
    r.version()?;
    let rec = ValueRecord {
        create_revision: r.i64()?,
        mod_revision: r.i64()?,
        lease: lease_from_raw(r.i64()?),
        value: r.bytes()?.to_vec(),
    };
    r.end()?;
    Ok(rec)
}

pub(crate) fn encode_event(ev: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    out.push(VERSION);
    match ev {
        Event::Put(kv) => {
            out.push(KIND_PUT);
            out.extend_from_slice(&kv.mod_revision.to_le_bytes());
            put_bytes(&mut out, kv.key.as_bytes());
            out.extend_from_slice(&kv.create_revision.to_le_bytes());
            out.extend_from_slice(&lease_to_raw(kv.lease).to_le_bytes());
            put_bytes(&mut out, &kv.value);
        }
        Event::Delete { key, mod_revision } => {
            out.push(KIND_DELETE);
            out.extend_from_slice(&mod_revision.to_le_bytes());
            put_bytes(&mut out, key.as_bytes());
        }
    }
    out
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let mut r = Reader(bytes);
    r.version()?;
    let kind = r.u8()?;
    let mod_revision = r.i64()?;
    let key = String::from_utf8(r.bytes()?.to_vec()).map_err(|_| "key is not UTF-8")?;
    let ev = match kind {
        KIND_PUT => Event::Put(KeyValue {
            key,
            create_revision: r.i64()?,
            lease: lease_from_raw(r.i64()?),
            value: r.bytes()?.to_vec(),
            mod_revision,
        }),
        KIND_DELETE => Event::Delete { key, mod_revision },
        other => return Err(format!("unknown event kind {other}")),
    };
    r.end()?;
    Ok(ev)
}

// Lease 0 is "no lease" in etcd too, so no real lease ever has that id.
fn lease_to_raw(lease: Option<LeaseId>) -> i64 {
    lease.map_or(0, |l| l.0)
}

fn lease_from_raw(raw: i64) -> Option<LeaseId> {
    (raw != 0).then_some(LeaseId(raw))
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // A store value beyond 4 GiB is far past anything etcd accepts (1.5 MiB by default).
    let len = u32::try_from(bytes.len()).expect("store values are far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!(
                "truncated: wanted {n} more bytes, {} left",
                self.0.len()
            ));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn i64(&mut self) -> Result<i64, String> {
        let b = self.take(8)?;
        Ok(i64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let b = self.take(4)?;
        let len = u32::from_le_bytes(b.try_into().expect("took 4 bytes"));
        self.take(len as usize)
    }

    fn version(&mut self) -> Result<(), String> {
        match self.u8()? {
            VERSION => Ok(()),
            v => Err(format!("unknown record version {v}")),
        }
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.0.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lease() -> impl Strategy<Value = Option<LeaseId>> {
        prop_oneof![
            Just(None),
            any::<i64>()
                .prop_filter("0 means none", |&v| v != 0)
                .prop_map(|v| Some(LeaseId(v))),
        ]
    }

    fn value_record() -> impl Strategy<Value = ValueRecord> {
        (
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<i64>(),
            any::<i64>(),
            lease(),
        )
            .prop_map(
                |(value, create_revision, mod_revision, lease)| ValueRecord {
                    value,
                    create_revision,
                    mod_revision,
                    lease,
                },
            )
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (".{0,40}", value_record()).prop_map(|(key, rec)| Event::Put(rec.into_kv(key))),
            (".{0,40}", any::<i64>())
                .prop_map(|(key, mod_revision)| Event::Delete { key, mod_revision }),
        ]
    }

    proptest! {
        #[test]
        fn value_records_round_trip(rec in value_record()) {
            prop_assert_eq!(decode_value(&encode_value(&rec)).unwrap(), rec);
        }

        #[test]
        fn events_round_trip(ev in event()) {
            prop_assert_eq!(decode_event(&encode_event(&ev)).unwrap(), ev);
        }

        #[test]
        fn truncated_or_extended_records_are_rejected(
            rec in value_record(),
            ev in event(),
            cut in any::<prop::sample::Index>(),
            extra in 1u8..,
        ) {
            let v = encode_value(&rec);
            prop_assert!(decode_value(&v[..cut.index(v.len())]).is_err());
            let mut longer = v.clone();
            longer.push(extra);
            prop_assert!(decode_value(&longer).is_err());

            let e = encode_event(&ev);
            prop_assert!(decode_event(&e[..cut.index(e.len())]).is_err());
            let mut longer = e.clone();
            longer.push(extra);
            prop_assert!(decode_event(&longer).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_value(&bytes);
            let _ = decode_event(&bytes);
        }
    }

    #[test]
    fn layout_is_pinned() {
        // Files written today must stay readable: pin the exact bytes of one record.
        let rec = ValueRecord {
            value: b"hi".to_vec(),
            create_revision: 2,
            mod_revision: 3,
            lease: Some(LeaseId(0x0102)),
        };
        let mut want = vec![1];
        want.extend_from_slice(&2i64.to_le_bytes());
        want.extend_from_slice(&3i64.to_le_bytes());
        want.extend_from_slice(&0x0102i64.to_le_bytes());
        want.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
        assert_eq!(encode_value(&rec), want);

        let del = Event::Delete {
            key: "k".into(),
            mod_revision: 7,
        };
        let mut want = vec![1, 1];
        want.extend_from_slice(&7i64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, b'k']);
        assert_eq!(encode_event(&del), want);
    }
}
