//! The record codec: the only place where values are turned into bytes for the disk.
//!
//! Format of every record: one format-version byte ([`FORMAT_VERSION`]), then the value encoded
//! with bincode 2 (serde integration, `bincode::config::standard()`: little-endian, varint
//! integers).
//!
//! Invariants:
//! - [`decode`] accepts exactly the bytes [`encode`] produces: an unknown version, a value that
//!   does not decode, or trailing bytes after the value are each a distinct [`CodecError`].
//! - Decoding never panics on any input (disk bytes may be corrupt).
//! - Changing a record's Rust shape incompatibly requires a new format version; bincode is not
//!   self-describing, so adding a field is incompatible. Until the first release a data
//!   directory of an older version is refused with a clear error (start a fresh one); from the
//!   first release on, a decoder for the old version is required too.
//!
//! Versions: 1, the first; 2 (2026-11-26), `WorkflowTaskStarted.seen_event_id`,
//! `CompleteWorkflowTask.steps_observed` and `RunState.last_wake_event_id`; 3 (2026-11-26), a
//! history record holds the events one command appended (`Vec<HistoryEvent>`), not one event;
//! 4 (2026-12-02), start and signal request ids kept per workflow, the shard clock floor,
//! recorded activity attempt starts, `RunSummary.continued_as_run_id`, and retry policies
//! with an integer backoff coefficient.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte written in front of every record.
pub const FORMAT_VERSION: u8 = 4;

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("record is empty: missing the format version byte")]
    Empty,
    #[error(
        "record has format version {found}, this build reads only version {FORMAT_VERSION} \
         (the data directory was written by another Weft version)"
    )]
    UnknownVersion { found: u8 },
    #[error("record body does not decode as {type_name}: {source}")]
    Malformed { type_name: &'static str, source: bincode::error::DecodeError },
    #[error("record has {trailing_bytes} trailing bytes after a complete {type_name}")]
    TrailingBytes { type_name: &'static str, trailing_bytes: usize },
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Bytes the decoder may claim per byte of record. bincode allocates a `Vec`/`String` for the
/// length it reads *before* reading the elements, so a corrupt length would otherwise allocate
/// without bound (and abort). A real record never needs more than `size_of::<T>()` (at most 16)
/// claimed bytes per encoded byte (varint integers take at least one byte).
const CLAIM_BYTES_PER_RECORD_BYTE: usize = 16;

/// Decodes `body` with an allocation limit proportional to its length (bincode's limit is a
/// const generic, hence the tiers).
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<(T, usize), bincode::error::DecodeError> {
    const TIER_SMALL_BYTES: usize = 1 << 16;
    const TIER_MEDIUM_BYTES: usize = 1 << 24;
    const TIER_LARGE_BYTES: usize = 1 << 32;
    const TIER_HUGE_BYTES: usize = 1 << 40;
    let claim_max_bytes = body.len().saturating_mul(CLAIM_BYTES_PER_RECORD_BYTE);
    if claim_max_bytes <= TIER_SMALL_BYTES {
        bincode::serde::decode_from_slice(body, config().with_limit::<TIER_SMALL_BYTES>())
    } else if claim_max_bytes <= TIER_MEDIUM_BYTES {
        bincode::serde::decode_from_slice(body, config().with_limit::<TIER_MEDIUM_BYTES>())
    } else if claim_max_bytes <= TIER_LARGE_BYTES {
        bincode::serde::decode_from_slice(body, config().with_limit::<TIER_LARGE_BYTES>())
    } else {
        bincode::serde::decode_from_slice(body, config().with_limit::<TIER_HUGE_BYTES>())
    }
}

/// Encodes `value` as a versioned record.
///
/// Panics only if `T`'s `Serialize` impl itself fails (e.g. a map with non-string keys is fine,
/// but a serializer error means a type that cannot be stored at all: a programmer error).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut record = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut record, config())
        .expect("serializing into a Vec cannot fail for the serde types stored by Weft");
    record
}

/// Decodes a record written by [`encode`].
pub fn decode<T: DeserializeOwned>(record: &[u8]) -> Result<T, CodecError> {
    let type_name = std::any::type_name::<T>();
    let Some((&version, body)) = record.split_first() else {
        return Err(CodecError::Empty);
    };
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, read_bytes) = decode_body::<T>(body).map_err(|source| CodecError::Malformed { type_name, source })?;
    let trailing_bytes = body.len().saturating_sub(read_bytes);
    if trailing_bytes != 0 {
        return Err(CodecError::TrailingBytes { type_name, trailing_bytes });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        ids: Vec<u64>,
        payload: Vec<u8>,
        parent: Option<(u32, i64)>,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            any::<String>(),
            proptest::collection::vec(any::<u64>(), 0..8),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<Option<(u32, i64)>>(),
        )
            .prop_map(|(name, ids, payload, parent)| Sample { name, ids, payload, parent })
    }

    proptest! {
        #[test]
        fn round_trip(value in sample()) {
            let decoded: Sample = decode(&encode(&value)).expect("own encoding decodes");
            prop_assert_eq!(decoded, value);
        }

        #[test]
        fn random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode::<Sample>(&raw);
            let _ = decode::<Vec<(Vec<u8>, Vec<u8>)>>(&raw);
            let _ = decode::<String>(&raw);
        }

        #[test]
        fn versioned_random_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..128)) {
            let mut record = vec![FORMAT_VERSION];
            record.extend_from_slice(&raw);
            let _ = decode::<Sample>(&record);
        }
    }

    #[test]
    fn rejects_unknown_version_empty_and_trailing_bytes() {
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut record = encode(&7u64);
        record[0] = FORMAT_VERSION + 1;
        assert!(
            matches!(decode::<u64>(&record), Err(CodecError::UnknownVersion { found }) if found == FORMAT_VERSION + 1)
        );
        let mut record = encode(&7u64);
        record.push(0);
        assert!(matches!(decode::<u64>(&record), Err(CodecError::TrailingBytes { trailing_bytes: 1, .. })));
        assert!(matches!(decode::<String>(&[FORMAT_VERSION, 5, b'a']), Err(CodecError::Malformed { .. })));
        // A corrupt length prefix claiming ~2^63 bytes is an error, not an allocation abort.
        let huge_len = [FORMAT_VERSION, 0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, b'a'];
        assert!(matches!(decode::<Vec<u8>>(&huge_len), Err(CodecError::Malformed { .. })));
        assert!(matches!(decode::<String>(&huge_len), Err(CodecError::Malformed { .. })));
    }
}
