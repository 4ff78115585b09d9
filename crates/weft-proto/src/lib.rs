//! Weft's wire contract: the `weft.v1` messages and services generated from
//! `proto/weft/v1`, and the stable error types every crate shares ([`errors`]). Only this
//! crate knows protobuf; the server and the SDK convert at their edges.
//!
//! Features: `grpc` (default) compiles the protobuf messages and services; without it only
//! [`errors`] is built, with no dependency (that is how the pure core uses this crate).

#![allow(clippy::all, missing_docs)]

pub mod errors;

/// The protobuf message trait, for callers that bound a message by its encoded size
/// (`encoded_len`) without depending on the protobuf library themselves.
#[cfg(feature = "grpc")]
pub use prost::Message;

/// Bytes `message` takes as one element of a repeated message field with a one-byte tag
/// (field numbers 1 to 15): the tag, the length prefix and the message.
#[cfg(feature = "grpc")]
pub fn repeated_field_bytes<M: prost::Message>(message: &M) -> usize {
    let len = message.encoded_len();
    1 + prost::length_delimiter_len(len) + len
}

/// The `weft.v1` package.
#[cfg(feature = "grpc")]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
