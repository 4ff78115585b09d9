//! Opaque user payloads (inputs, results, signal and heartbeat details).
//!
//! Stored as bytes (SDKs put UTF-8 JSON in them). In human-readable formats a
//! payload that holds JSON is shown as that JSON value, anything else as a lossy
//! string; binary formats store bytes. (The `details_json` of wire history events
//! shows payloads by size only: the server renders them, see `weft-server`'s `convert`.)

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Vec<u8>);

impl Payload {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload(bytes)
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(text) if text.len() <= 64 => write!(f, "Payload({text:?})"),
            _ => write!(f, "Payload({} bytes)", self.0.len()),
        }
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            if self.0.is_empty() {
                return serializer.serialize_none();
            }
            match serde_json::from_slice::<serde_json::Value>(&self.0) {
                Ok(value) => value.serialize(serializer),
                Err(_) => serializer.serialize_str(&String::from_utf8_lossy(&self.0)),
            }
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let value = Option::<serde_json::Value>::deserialize(deserializer)?;
            Ok(match value {
                None => Payload::default(),
                Some(value) => Payload(serde_json::to_vec(&value).map_err(serde::de::Error::custom)?),
            })
        } else {
            let bytes: Vec<u8> = serde::de::Deserialize::deserialize(deserializer)?;
            Ok(Payload(bytes))
        }
    }
}
