//! The key layout and the record codec: how every record the crate keeps is
//! named in the engine's one ordered key space, and how records are encoded.
//!
//! Owns: key prefixes and key encodings, JSON (de)serialization of stored
//! records and the [`Error::Corrupt`] a bad record becomes. Must not: read or
//! write the engine, or know about indexes.
//!
//! # Layout
//! Keys are prefixed by kind, so one atomic batch covers a whole write:
//! `m` + machine id (u32, big-endian) → machine JSON; `p` + name → profile
//! JSON; `d` + name → param definition JSON; `j` + job Uuid (16 bytes) → job
//! JSON; `l` + lease id (u64, big-endian) → lease JSON (its TTL and what
//! it holds; its deadline is not stored here, see `lease_clock`); `c` + revision (u64, big-endian) + first sequence (u32,
//! big-endian) + count (u32, big-endian) → a record of `count` change events
//! of one revision, from that sequence on (see `super::changelog`; a store
//! written before stop 35 has 13-byte keys without the count, one event
//! each); `s:rev` → the store revision (kept by the engine, see
//! [`super::backend`]); `s:intent` → the last small batch the sled engine
//! committed (see [`super::sled_backend`]); `s:next` → the next machine id; `s:logn` → events
//! in the change log (u64) as of a revision (u64; see `super::changelog`,
//! "Trimming"; before stop 42, the events alone, as of the last write); `s:secret` → the token signing secret.

use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::Kind;

pub(crate) const REV_KEY: &[u8] = b"s:rev";
pub(crate) const INTENT_KEY: &[u8] = b"s:intent";
pub(crate) const NEXT_ID_KEY: &[u8] = b"s:next";
pub(crate) const SECRET_KEY: &[u8] = b"s:secret";
pub(crate) const LOG_LEN_KEY: &[u8] = b"s:logn";
pub(crate) const MACHINE_PREFIX: &[u8] = b"m";
pub(crate) const PROFILE_PREFIX: u8 = b'p';
pub(crate) const PARAM_PREFIX: u8 = b'd';
pub(crate) const LOG_PREFIX: &[u8] = b"c";
pub(crate) const LEASE_PREFIX: &[u8] = b"l";

pub(crate) fn lease_key(id: u64) -> [u8; 9] {
    let mut k = [b'l'; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub(crate) fn machine_key(id: u32) -> [u8; 5] {
    let mut k = [b'm'; 5];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The id in a machine key, if `key` is one.
pub(crate) fn machine_id_of(key: &[u8]) -> Option<u32> {
    match key {
        [b'm', id @ ..] => id.try_into().ok().map(u32::from_be_bytes),
        _ => None,
    }
}

pub(crate) fn named_key(prefix: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 1);
    k.push(prefix);
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn job_key(id: Uuid) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(b'j');
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn log_key(rev: u64, seq: u32) -> [u8; 13] {
    let mut k = [b'c'; 13];
    k[1..9].copy_from_slice(&rev.to_be_bytes());
    k[9..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The key of a change-log record holding events `first .. first + count`
/// of revision `rev`.
pub(crate) fn log_record_key(rev: u64, first: u32, count: u32) -> [u8; 17] {
    let mut k = [b'c'; 17];
    k[1..9].copy_from_slice(&rev.to_be_bytes());
    k[9..13].copy_from_slice(&first.to_be_bytes());
    k[13..].copy_from_slice(&count.to_be_bytes());
    k
}

/// The (revision, sequence) of one event's key, if `key` is one.
pub(crate) fn log_position(key: &[u8]) -> Option<(u64, u32)> {
    match key {
        [b'c', rest @ ..] if rest.len() == 12 => {
            let rev = u64::from_be_bytes(rest[..8].try_into().ok()?);
            let seq = u32::from_be_bytes(rest[8..].try_into().ok()?);
            Some((rev, seq))
        }
        _ => None,
    }
}

/// The (revision, first sequence, count) of a change-log record's key, if
/// `key` is one: a record of several events, or one event under its own
/// key (the layout before stop 35).
pub(crate) fn log_record(key: &[u8]) -> Option<(u64, u32, u32)> {
    match key.len() {
        13 => log_position(key).map(|(rev, seq)| (rev, seq, 1)),
        17 => {
            let (rev, first) = log_position(&key[..13])?;
            let count = u32::from_be_bytes(key[13..].try_into().ok()?);
            (count > 0).then_some((rev, first, count))
        }
        _ => None,
    }
}

/// The kind of object a record key holds.
pub(crate) fn kind_of_key(key: &[u8]) -> Kind {
    match key.first() {
        Some(b'm') => Kind::Machine,
        Some(b'p') => Kind::Profile,
        Some(b'j') => Kind::Job,
        Some(b'l') => Kind::Lease,
        _ => Kind::Param,
    }
}

/// A record key as text, for errors.
pub(crate) fn show_key(key: &[u8]) -> String {
    String::from_utf8_lossy(key).escape_debug().to_string()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt {
        key: show_key(key),
        reason: e.to_string(),
    })
}

/// A record's JSON, in a vector of its exact length. It is written into a
/// buffer this thread keeps and then copied once: `serde_json::to_vec`
/// grows its vector from 128 bytes, two reallocations for a machine's
/// 350-odd bytes, a million of each in a 1M import.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    /// The buffer is given up when a record left it larger than this.
    const KEEP_AT_MOST: usize = 64 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Serializing our own model types to JSON cannot fail (string keys only).
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let out = match serde_json::to_writer(&mut *buf, v) {
                Ok(()) => buf.to_vec(),
                Err(_) => Vec::new(),
            };
            if buf.capacity() > KEEP_AT_MOST {
                *buf = Vec::new();
            }
            out
        }
        // A record encoded while another is (not done by our types).
        Err(_) => serde_json::to_vec(v).unwrap_or_default(),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(kind: Kind, v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::invalid(format!("{kind}"), e.to_string()))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}
