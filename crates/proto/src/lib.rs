//! The gRPC wire contract of Muster: the `.proto` files under `proto/` compiled into Rust.
//!
//! `v1` holds the messages, clients and servers; [`FILE_DESCRIPTOR_SET`] is what the servers
//! expose through gRPC reflection, so `grpcurl` and clients in other languages work without the
//! proto files.

#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("muster.v1");
}

/// The encoded descriptor set of every Muster proto file, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/muster_descriptor.bin"));
