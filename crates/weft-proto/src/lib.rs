//! Weft's wire contract: the `weft.v1` messages and services generated from
//! `proto/weft/v1`, and the stable error types every crate shares ([`errors`]). Only this
//! crate knows protobuf; the server and the SDK convert at their edges.
//!
//! Features: `grpc` (default) compiles the protobuf messages and services; without it only
//! [`errors`] is built, with no dependency (that is how the pure core uses this crate).

#![allow(clippy::all, missing_docs)]

pub mod errors;

/// The `weft.v1` package.
#[cfg(feature = "grpc")]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
