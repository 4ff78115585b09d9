//! Weft's wire contract: the `weft.v1` messages and services generated from
//! `proto/weft/v1`. Only this crate knows protobuf; the server and the SDK
//! convert at their edges.

#![allow(clippy::all, missing_docs)]

/// The `weft.v1` package.
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
