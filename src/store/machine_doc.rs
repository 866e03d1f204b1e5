//! A stored machine record read and changed as bytes, for a write of one
//! own param ([`super::Machines::set_param`] and its kin).
//!
//! Owns: finding the parts of a record such a write needs (its Uuid,
//! Profiles, Revision and the param's value) without decoding the machine,
//! and writing the new record by splicing the param's and the Revision's
//! new text into the old. Must not: check the value, or decide what the
//! write means for the index or the change log (`machines`, `state`).
//!
//! Decoding a record into a [`crate::Machine`] costs about 2.5 µs on this
//! project's machine kind (each param a `String` and a `Value`), encoding
//! it again about 0.7 µs; a scan of the record that allocates nothing
//! costs about a fifth of the decode. The records are the store's own
//! encoding (`serde_json`, compact, a map's members in order), and the
//! splice writes each part as that encoding would, so the new record is
//! byte for byte the encoding of the machine it describes: a test holds it
//! to that over generated machines.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::layout::show_key;
use crate::error::{Error, Result};

/// The parts of a stored machine record a param write reads.
pub(super) struct MachineDoc<'a> {
    bytes: &'a [u8],
    /// The Uuid's text (empty for a record without one).
    pub(super) uuid: &'a str,
    /// The machine's profiles, in order.
    pub(super) profiles: Vec<Cow<'a, str>>,
    /// The Revision.
    pub(super) revision: u64,
    revision_span: (usize, usize),
    /// The Params object's span, braces included.
    params_span: (usize, usize),
    /// Each own param's name and value span.
    params: Vec<(Cow<'a, str>, (usize, usize))>,
}

#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(rename = "Uuid", borrow, default)]
    uuid: Option<&'a str>,
    #[serde(rename = "Profiles", borrow, default)]
    profiles: Vec<Cow<'a, str>>,
    #[serde(rename = "Params", borrow)]
    params: &'a RawValue,
    #[serde(rename = "Revision", borrow)]
    revision: &'a RawValue,
}

/// An object's members in order, each value left as its text.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut a: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(16));
                while let Some((k, v)) = a.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> MachineDoc<'a> {
    /// Reads record `bytes` (stored under `key`, for errors).
    pub(super) fn scan(key: &[u8], bytes: &'a [u8]) -> Result<MachineDoc<'a>> {
        let corrupt = |reason: String| Error::Corrupt {
            key: show_key(key),
            reason,
        };
        let parts: Parts<'a> = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let members: Members<'a> =
            serde_json::from_str(parts.params.get()).map_err(|e| corrupt(e.to_string()))?;
        let revision =
            serde_json::from_str(parts.revision.get()).map_err(|e| corrupt(e.to_string()))?;
        Ok(MachineDoc {
            bytes,
            uuid: parts.uuid.unwrap_or_default(),
            profiles: parts.profiles,
            revision,
            revision_span: span(bytes, parts.revision.get()),
            params_span: span(bytes, parts.params.get()),
            params: members
                .0
                .into_iter()
                .map(|(k, v)| (k, span(bytes, v.get())))
                .collect(),
        })
    }

    /// Own param `name`'s value.
    pub(super) fn param(&self, name: &str) -> Result<Option<Value>> {
        let Some((_, (start, end))) = self.params.iter().find(|(k, _)| k == name) else {
            return Ok(None);
        };
        serde_json::from_slice(&self.bytes[*start..*end])
            .map(Some)
            .map_err(|e| Error::Corrupt {
                key: format!("param {name:?} of machine {}", self.uuid),
                reason: e.to_string(),
            })
    }

    /// The record with own param `name` set to `value` (`None`: removed;
    /// a new param goes last) and Revision `revision`; `None` for a removal
    /// from a record not laid out as the store's encoding lays it out (the
    /// member's bytes are not exactly its name, a colon and its value).
    pub(super) fn with_param(
        &self,
        name: &str,
        value: Option<&Value>,
        revision: u64,
    ) -> Option<Vec<u8>> {
        let b = self.bytes;
        let found = self.params.iter().find(|(k, _)| k == name).map(|(_, s)| *s);
        // The param's splice: the bytes it replaces and what replaces them.
        let mut text = Vec::with_capacity(64);
        let replaced = match (found, value) {
            (Some(at), Some(v)) => {
                write_json(&mut text, v);
                at
            }
            (None, Some(v)) => {
                let close = self.params_span.1 - 1; // the Params object's `}`
                if !self.params.is_empty() {
                    text.push(b',');
                }
                write_json(&mut text, name);
                text.push(b':');
                write_json(&mut text, v);
                (close, close)
            }
            (Some((start, end)), None) => {
                // The member's name, as the encoding wrote it, ends at the
                // `:` before its value.
                let mut quoted = Vec::with_capacity(name.len() + 2);
                write_json(&mut quoted, name);
                quoted.push(b':');
                let start = start.checked_sub(quoted.len())?;
                if b[start..][..quoted.len()] != quoted[..] {
                    return None;
                }
                if b.get(end) == Some(&b',') {
                    (start, end + 1)
                } else if start.checked_sub(1).and_then(|i| b.get(i)) == Some(&b',') {
                    (start - 1, end)
                } else {
                    (start, end)
                }
            }
            (None, None) => (self.params_span.1, self.params_span.1),
        };
        let mut rev = Vec::with_capacity(20);
        write_json(&mut rev, &revision);
        let mut splices = [(replaced, text), (self.revision_span, rev)];
        splices.sort_by_key(|((start, _), _)| *start);
        let mut out = Vec::with_capacity(b.len() + 64);
        let mut at = 0;
        for ((start, end), text) in splices {
            out.extend_from_slice(&b[at..start]);
            out.extend_from_slice(&text);
            at = end;
        }
        out.extend_from_slice(&b[at..]);
        Some(out)
    }
}

/// Where `part`, a slice of `whole`, starts and ends in it.
fn span(whole: &[u8], part: &str) -> (usize, usize) {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    (start, start + part.len())
}

fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Strings, numbers and JSON values into a Vec: cannot fail.
    let _ = serde_json::to_writer(out, v);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::model::Machine;

    fn machine(params: &[(String, Value)], profiles: &[String]) -> Machine {
        let mut m = Machine::new("node-1");
        m.uuid = uuid::Uuid::from_u128(0x5eed_0000_0000_4000_8000_0000_0000_0042);
        m.address = "10.0.0.1".into();
        m.profiles = profiles.to_vec();
        m.revision = 17;
        m.meta.insert("icon".into(), "server".into());
        for (k, v) in params {
            m.params.insert(k.clone(), v.clone());
        }
        m.extra.insert("Stage".into(), json!("none"));
        m
    }

    /// The record `with_param` writes against the encoding of the machine
    /// changed the way `Machines::write_param` changes it.
    fn check(m: &Machine, name: &str, value: Option<Value>, revision: u64) {
        let bytes = serde_json::to_vec(m).unwrap();
        let doc = MachineDoc::scan(b"m", &bytes).unwrap();
        assert_eq!(doc.uuid, m.uuid.to_string());
        assert_eq!(doc.profiles, m.profiles);
        assert_eq!(doc.revision, m.revision);
        // As a decode of the record reads it (a float's last digit may
        // differ from the value encoded).
        let decoded: Machine = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc.param(name).unwrap().as_ref(), decoded.params.get(name));
        let spliced = doc.with_param(name, value.as_ref(), revision).unwrap();
        let mut want = m.clone();
        match value {
            Some(v) => {
                want.params.insert(name.to_string(), v);
            }
            None => {
                want.params.shift_remove(name);
            }
        }
        want.revision = revision;
        assert_eq!(
            String::from_utf8_lossy(&spliced),
            String::from_utf8_lossy(&serde_json::to_vec(&want).unwrap()),
            "{name:?} in {m:?}"
        );
    }

    #[test]
    fn each_kind_of_change_writes_the_encoding_of_the_changed_machine() {
        let p = |k: &str, v: Value| (k.to_string(), v);
        let three = [
            p("a", json!(1)),
            p("b/c~d", json!("x")),
            p("e", json!({"f": [1]})),
        ];
        for (params, name) in [
            (&three[..], "a"),
            (&three[..], "b/c~d"),
            (&three[..], "e"),
            (&three[..], "new"),
            (&three[..1], "a"),
            (&[][..], "a"),
        ] {
            let m = machine(params, &["p1".into()]);
            check(&m, name, Some(json!({"changed": "to \"this\""})), 18);
            check(&m, name, None, 1u64 << 40);
        }
    }

    #[test]
    fn a_removal_from_a_record_laid_out_otherwise_is_declined() {
        let spaced = br#"{"Uuid":"u","Params":{"a" : 1, "b":2},"Revision":3}"#;
        let doc = MachineDoc::scan(b"m", spaced).unwrap();
        assert_eq!(doc.with_param("a", None, 4), None);
        // Setting needs only the value's own span.
        let set = doc.with_param("a", Some(&json!(5)), 4).unwrap();
        assert_eq!(
            &set[..],
            &br#"{"Uuid":"u","Params":{"a" : 5, "b":2},"Revision":4}"#[..]
        );
    }

    #[test]
    fn a_record_that_is_not_a_machine_is_corrupt() {
        for bad in [
            &b"{"[..],
            b"[]",
            br#"{"Params":[],"Revision":1}"#,
            br#"{"Params":{}}"#,
        ] {
            assert!(matches!(
                MachineDoc::scan(b"m", bad),
                Err(Error::Corrupt { .. })
            ));
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::vec((".{0,4}", inner), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_spliced_record_is_the_encoding_of_the_changed_machine(
            params in prop::collection::vec(("[a-c/~\"\\\\é]{0,4}", value()), 0..5),
            profiles in prop::collection::vec("[a-z\"]{1,4}", 0..3),
            pick in any::<prop::sample::Index>(),
            fresh in "[a-c/~\"\\\\é]{0,4}",
            new in prop::option::of(value()),
            revision in any::<u64>(),
        ) {
            let m = machine(&params, &profiles);
            let name = match m.params.len() {
                0 => fresh,
                n => match pick.index(n + 1) {
                    i if i < n => m.params.keys().nth(i).cloned().unwrap_or_default(),
                    _ => fresh,
                },
            };
            check(&m, &name, new, revision);
        }
    }
}
