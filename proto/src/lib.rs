//! Protocol buffers of T-Bird's services and the gRPC code generated from them.
//!
//! Each package is a module named after its proto package (`snowflake::v1`, ...). The
//! generated types stay at the edge: services convert them into validated domain types.
//! [`FILE_DESCRIPTOR_SET`] holds every package, for the reflection service. [`codec`] is the
//! codec of every service and client: a malformed message is INVALID_ARGUMENT.

pub mod codec;

/// The encoded file descriptor set of every package, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptor.bin"));

/// Snowflake, the id service.
pub mod snowflake {
    /// Version 1 of the id service.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("snowflake.v1");
    }
}

/// Gizzard, the sharding framework's admin service.
pub mod gizzard {
    /// Version 1 of the admin service.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("gizzard.v1");
    }
}

/// T-Bird, the tweet service.
pub mod tbird {
    /// Version 1 of the tweet service.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        tonic::include_proto!("tbird.v1");
    }
}
