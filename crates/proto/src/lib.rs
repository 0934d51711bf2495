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

/// The standard gRPC health service and reflection over every Muster service, for `grpcurl` and
/// load balancers: what every Muster gRPC server serves besides its own services.
pub fn health_and_reflection() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("Muster's own descriptor set is valid");
    (reporter, health, reflection)
}

/// The connections a Muster gRPC server accepts on `listener`, with Nagle's algorithm off.
///
/// Serving from a listener of one's own (`serve_with_incoming*`, needed to bind before serving
/// and to report the bound port) skips tonic's own `tcp_nodelay`, which only applies to
/// addresses it binds itself. With Nagle on, a response written in more than one piece (headers,
/// then data and trailers) waits for the client's delayed acknowledgement: tens of milliseconds
/// at the tail of every query's and every acknowledgement's latency.
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        use tokio_stream::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound");
        let mut incoming = super::incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("readable option"));
    }
}
