//! Order-preserving key encoding for the `state` column family.
//!
//! Owns the byte layout of every state-machine key: `[shard u32 BE][kind u8][components...]`.
//!
//! Invariants:
//! - Byte order of two encoded keys equals the order of their `(shard, kind, components...)`
//!   tuples, provided both keys use the same component types in the same positions (a key
//!   *schema*). Integers are fixed-width big-endian; strings and byte strings are escaped
//!   (`0x00` becomes `0x00 0xFF`) and terminated by `0x00 0x01`, so a shorter string sorts
//!   before every string it is a prefix of.
//! - Every component is self-delimiting, so the encoding of a prefix of components is a byte
//!   prefix of the full key: a prefix scan over `KeyBuilder::new(s, k).str(ns)` finds exactly
//!   the keys whose first component is `ns`.
//! - All keys of one shard form the contiguous range returned by [`shard_range`].
//! - Decoding ([`KeyReader`]) never panics: malformed keys are [`KeyError`]s.
//!
//! Kind `0x00` ([`KIND_SHARD_META`]) is reserved for per-shard state-machine metadata written by
//! `weft-raft` (applied log id, last membership); kinds from [`KIND_DOMAIN_MIN`] up belong to the
//! domain. Kinds in between are reserved for future storage-level records.

/// Kind of the per-shard state-machine metadata records (applied log id, membership).
pub const KIND_SHARD_META: u8 = 0x00;
/// First kind the domain may use for its own records.
pub const KIND_DOMAIN_MIN: u8 = 0x10;
/// Largest shard id a key may carry. `u32::MAX` is excluded so that [`shard_range`] always has a
/// finite exclusive end (`shard + 1`).
pub const SHARD_ID_MAX: u32 = u32::MAX - 1;

/// Escape byte sequence for a `0x00` inside a string component.
const ESCAPED_ZERO: [u8; 2] = [0x00, 0xFF];
/// Terminator of a string component; sorts below [`ESCAPED_ZERO`] and below every other byte
/// that can follow a string's last byte, which makes shorter strings sort first.
const TERMINATOR: [u8; 2] = [0x00, 0x01];
/// Bytes of the `[shard][kind]` header every state key starts with.
const HEADER_BYTES: usize = 5;

/// Builds one state key component by component.
///
/// ```
/// use weft_storage::keys::{KeyBuilder, KeyReader};
/// let key = KeyBuilder::new(3, 0x10).str("payments").u64(42).finish();
/// let mut reader = KeyReader::new(&key).expect("well-formed key");
/// assert_eq!((reader.shard(), reader.kind()), (3, 0x10));
/// assert_eq!(reader.str().expect("string"), "payments");
/// assert_eq!(reader.u64().expect("u64"), 42);
/// reader.finish().expect("no trailing bytes");
/// ```
#[derive(Debug, Clone)]
#[must_use = "a KeyBuilder does nothing until finish() is called"]
pub struct KeyBuilder {
    key: Vec<u8>,
}

impl KeyBuilder {
    /// Starts a key of record `kind` in `shard`.
    ///
    /// Panics if `shard > SHARD_ID_MAX` (a programmer error: shard ids come from the cluster's
    /// fixed shard count).
    pub fn new(shard: u32, kind: u8) -> KeyBuilder {
        assert!(shard <= SHARD_ID_MAX, "shard id {shard} exceeds SHARD_ID_MAX");
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(&shard.to_be_bytes());
        key.push(kind);
        KeyBuilder { key }
    }

    /// Appends a string component (escaped, order-preserving, self-delimiting).
    pub fn str(self, value: &str) -> KeyBuilder {
        self.bytes(value.as_bytes())
    }

    /// Appends a byte-string component (same encoding as [`KeyBuilder::str`]).
    pub fn bytes(mut self, value: &[u8]) -> KeyBuilder {
        for &byte in value {
            if byte == 0x00 {
                self.key.extend_from_slice(&ESCAPED_ZERO);
            } else {
                self.key.push(byte);
            }
        }
        self.key.extend_from_slice(&TERMINATOR);
        self
    }

    /// Appends a big-endian `u64` component.
    pub fn u64(mut self, value: u64) -> KeyBuilder {
        self.key.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a big-endian `u32` component.
    pub fn u32(mut self, value: u32) -> KeyBuilder {
        self.key.extend_from_slice(&value.to_be_bytes());
        self
    }

    /// Appends a single-byte component (e.g. a sub-kind or an enum tag).
    pub fn u8(mut self, value: u8) -> KeyBuilder {
        self.key.push(value);
        self
    }

    /// Returns the encoded key.
    pub fn finish(self) -> Vec<u8> {
        self.key
    }
}

/// The reason a key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is {len_bytes} bytes, shorter than the 5-byte [shard][kind] header")]
    MissingHeader { len_bytes: usize },
    #[error("key ends inside a {component} component at byte {offset}")]
    Truncated { component: &'static str, offset: usize },
    #[error("invalid escape 0x00 0x{byte:02x} in string component at byte {offset}")]
    BadEscape { byte: u8, offset: usize },
    #[error("string component at byte {offset} is not UTF-8")]
    NotUtf8 { offset: usize },
    #[error("{remaining_bytes} unexpected trailing bytes after the last component")]
    TrailingBytes { remaining_bytes: usize },
}

/// Decodes a key produced by [`KeyBuilder`], component by component, in the same order.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    key: &'a [u8],
    offset: usize,
    shard: u32,
    kind: u8,
}

impl<'a> KeyReader<'a> {
    /// Reads the `[shard][kind]` header.
    pub fn new(key: &'a [u8]) -> Result<KeyReader<'a>, KeyError> {
        let Some((header, _)) = key.split_first_chunk::<HEADER_BYTES>() else {
            return Err(KeyError::MissingHeader { len_bytes: key.len() });
        };
        let shard = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        Ok(KeyReader { key, offset: HEADER_BYTES, shard, kind: header[4] })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// Reads a string component.
    pub fn str(&mut self) -> Result<String, KeyError> {
        let start = self.offset;
        let raw = self.bytes()?;
        String::from_utf8(raw).map_err(|_| KeyError::NotUtf8 { offset: start })
    }

    /// Reads a byte-string component.
    pub fn bytes(&mut self) -> Result<Vec<u8>, KeyError> {
        let mut value = Vec::new();
        let mut offset = self.offset;
        loop {
            let Some(&byte) = self.key.get(offset) else {
                return Err(KeyError::Truncated { component: "string", offset });
            };
            if byte != 0x00 {
                value.push(byte);
                offset += 1;
                continue;
            }
            match self.key.get(offset + 1) {
                Some(0xFF) => {
                    value.push(0x00);
                    offset += 2;
                }
                Some(0x01) => {
                    self.offset = offset + 2;
                    return Ok(value);
                }
                Some(&other) => return Err(KeyError::BadEscape { byte: other, offset }),
                None => return Err(KeyError::Truncated { component: "string", offset }),
            }
        }
    }

    /// Reads a big-endian `u64` component.
    pub fn u64(&mut self) -> Result<u64, KeyError> {
        let raw = self.fixed::<8>("u64")?;
        Ok(u64::from_be_bytes(raw))
    }

    /// Reads a big-endian `u32` component.
    pub fn u32(&mut self) -> Result<u32, KeyError> {
        let raw = self.fixed::<4>("u32")?;
        Ok(u32::from_be_bytes(raw))
    }

    /// Reads a single-byte component.
    pub fn u8(&mut self) -> Result<u8, KeyError> {
        let [byte] = self.fixed::<1>("u8")?;
        Ok(byte)
    }

    /// Checks that every byte of the key was consumed.
    pub fn finish(self) -> Result<(), KeyError> {
        let remaining_bytes = self.key.len() - self.offset;
        if remaining_bytes == 0 { Ok(()) } else { Err(KeyError::TrailingBytes { remaining_bytes }) }
    }

    fn fixed<const N: usize>(&mut self, component: &'static str) -> Result<[u8; N], KeyError> {
        let rest = self.key.get(self.offset..).unwrap_or_default();
        let Some((raw, _)) = rest.split_first_chunk::<N>() else {
            return Err(KeyError::Truncated { component, offset: self.offset });
        };
        self.offset += N;
        Ok(*raw)
    }
}

/// The key range `[start, end)` holding every state key of `shard`, all kinds included.
pub fn shard_range(shard: u32) -> (Vec<u8>, Vec<u8>) {
    assert!(shard <= SHARD_ID_MAX, "shard id {shard} exceeds SHARD_ID_MAX");
    (shard.to_be_bytes().to_vec(), (shard + 1).to_be_bytes().to_vec())
}

/// The key range `[start, end)` holding every state key of `kind` in `shard`.
pub fn kind_range(shard: u32, kind: u8) -> (Vec<u8>, Vec<u8>) {
    let start = KeyBuilder::new(shard, kind).finish();
    let end = match kind.checked_add(1) {
        Some(next_kind) => KeyBuilder::new(shard, next_kind).finish(),
        None => shard_range(shard).1,
    };
    (start, end)
}

/// The smallest key strictly greater than `key` (for turning an inclusive bound exclusive).
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0x00);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One component of a test key schema `(str, u64, bytes, u32)`.
    type Tuple = (u32, u8, String, u64, Vec<u8>, u32);

    fn encode(t: &Tuple) -> Vec<u8> {
        KeyBuilder::new(t.0, t.1).str(&t.2).u64(t.3).bytes(&t.4).u32(t.5).finish()
    }

    fn decode(key: &[u8]) -> Result<Tuple, KeyError> {
        let mut r = KeyReader::new(key)?;
        let t = (r.shard(), r.kind(), r.str()?, r.u64()?, r.bytes()?, r.u32()?);
        r.finish()?;
        Ok(t)
    }

    /// Strings biased towards the bytes that matter for the escaping: 0x00, 0x01 and 0xFF
    /// (as U+00FF in UTF-8 is 0xC3 0xBF, 0xFF itself only appears in the byte-string component).
    fn interesting_string() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![Just('\0'), Just('\u{1}'), Just('\u{ff}'), Just('a'), any::<char>()],
            0..6,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![Just(0x00u8), Just(0x01u8), Just(0xFFu8), any::<u8>()], 0..6)
    }

    fn tuple() -> impl Strategy<Value = Tuple> {
        (
            0..4u32,
            prop_oneof![Just(0u8), Just(0x10u8), Just(0xFFu8)],
            interesting_string(),
            prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
            interesting_bytes(),
            any::<u32>(),
        )
    }

    proptest! {
        #[test]
        fn round_trip(t in tuple()) {
            prop_assert_eq!(decode(&encode(&t)), Ok(t));
        }

        #[test]
        fn byte_order_equals_tuple_order(a in tuple(), b in tuple()) {
            prop_assert_eq!(encode(&a).cmp(&encode(&b)), a.cmp(&b));
        }

        #[test]
        fn component_prefix_is_key_prefix(t in tuple()) {
            let prefix = KeyBuilder::new(t.0, t.1).str(&t.2).finish();
            prop_assert!(encode(&t).starts_with(&prefix));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode(&raw);
        }

        #[test]
        fn keys_stay_in_their_shard_and_kind_range(t in tuple()) {
            let key = encode(&t);
            let (start, end) = shard_range(t.0);
            prop_assert!(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice());
            let (start, end) = kind_range(t.0, t.1);
            prop_assert!(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice());
        }
    }

    #[test]
    fn shorter_string_sorts_first() {
        let a = KeyBuilder::new(0, 0x10).str("a").u64(u64::MAX).finish();
        let b = KeyBuilder::new(0, 0x10).str("a\0").u64(0).finish();
        let c = KeyBuilder::new(0, 0x10).str("ab").u64(0).finish();
        assert!(a < b && b < c);
    }

    #[test]
    fn malformed_keys_are_errors() {
        assert_eq!(KeyReader::new(&[0, 0, 0]).err(), Some(KeyError::MissingHeader { len_bytes: 3 }));
        let mut r = KeyReader::new(&[0, 0, 0, 1, 0x10, b'a', 0x00, 0x07]).expect("header");
        assert_eq!(r.str(), Err(KeyError::BadEscape { byte: 0x07, offset: 6 }));
        let mut r = KeyReader::new(&[0, 0, 0, 1, 0x10, 1, 2]).expect("header");
        assert_eq!(r.u64(), Err(KeyError::Truncated { component: "u64", offset: 5 }));
        let r = KeyReader::new(&[0, 0, 0, 1, 0x10, 1]).expect("header");
        assert_eq!(r.finish(), Err(KeyError::TrailingBytes { remaining_bytes: 1 }));
    }
}
