//! What every gRPC port answers besides its service: health (the tweet service NOT_SERVING
//! while the routing lease has lapsed, SERVING again after), reflection v1 and v1alpha listing
//! exactly the port's services, and protocol-level status codes for raw bytes: an oversize
//! message is RESOURCE_EXHAUSTED, bytes that are no protobuf are INVALID_ARGUMENT.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use gizzard::server::ProxySettings;
use snowflake::{clock::SystemClock, config::Config};
use tests::{
    relay::Relay,
    tweets::{TweetCluster, settings},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn channel(addr: &str) -> Channel {
    edge::client::endpoint(addr, &edge::client::ClientTls::default())
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connect")
}

async fn health(addr: &str, service: &str) -> ServingStatus {
    let status = HealthClient::new(channel(addr).await)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("known status")
}

async fn wait_health(addr: &str, service: &str, want: ServingStatus, limit: Duration) {
    let started = Instant::now();
    loop {
        let got = health(addr, service).await;
        if got == want {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "{service:?} on {addr} still {got:?} after {limit:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Returns the services reflection v1 and v1alpha list on `addr` (asserting they agree).
async fn reflected(addr: &str) -> BTreeSet<String> {
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = channel(addr).await;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1::server_reflection_client::ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1")
        .into_inner();
    let response = stream.message().await.expect("v1 answer").expect("one");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("v1 did not list services: {response:?}");
    };
    let v1_names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = v1alpha::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection v1alpha")
        .into_inner();
    let response = stream
        .message()
        .await
        .expect("v1alpha answer")
        .expect("one");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        response.message_response
    else {
        panic!("v1alpha did not list services: {response:?}");
    };
    let alpha_names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(
        v1_names, alpha_names,
        "v1 and v1alpha list the same services"
    );
    v1_names
}

fn port_services(service: &str) -> BTreeSet<String> {
    [
        service,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Sends and receives message bytes as they are, for requests no protobuf encoder would make.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// Calls `path` on `addr` with `body` as the request message's bytes.
async fn raw_call(addr: &str, path: &'static str, body: Bytes) -> Result<Bytes, Status> {
    let mut grpc = tonic::client::Grpc::new(channel(addr).await);
    grpc.ready().await.expect("ready");
    grpc.unary(
        tonic::Request::new(body),
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// Field 2 announced as 16 bytes long, with one byte there.
const TRUNCATED: &[u8] = &[0x12, 0x10, 0x01];

/// Asserts the protocol-level codes of `path` on `addr`, whose limit is `limit` bytes.
async fn assert_protocol_codes(addr: &str, path: &'static str, limit: usize) {
    let oversize = Bytes::from(vec![0u8; limit + 1]);
    let status = raw_call(addr, path, oversize)
        .await
        .expect_err("an oversize message is refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
    assert!(
        status.message().contains(&limit.to_string()),
        "{path}: the refusal names the limit: {status:?}"
    );
    let status = raw_call(addr, path, Bytes::from_static(TRUNCATED))
        .await
        .expect_err("a truncated message is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    assert!(
        status.message().contains("decode"),
        "{path}: the refusal names the problem: {status:?}"
    );
}

/// One tbird server whose nameserver connection goes through a relay: its tweet service is
/// SERVING, NOT_SERVING once the cut has outlived the routing lease, SERVING after the heal;
/// the ShardManager stays SERVING. Both ports list exactly their services, and answer raw
/// bytes with protocol-level codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tbird_ports_report_health_reflect_their_services_and_answer_protocol_errors() {
    let (cluster, _direct) = TweetCluster::start(1, 1, 2).await;
    let target = cluster.nameserver.addr();
    let relay = Relay::start(target).await;
    let url = relay.mysql_url(&cluster.nameserver_url, target);
    let server = cluster
        .serve(ProxySettings {
            routing_lease: Duration::from_millis(1_500),
            db_timeout: Duration::from_millis(500),
            server_name: "behind-relay".into(),
            ..settings(&url)
        })
        .await;

    assert_eq!(
        reflected(&server.tweets).await,
        port_services("tbird.v1.Tweets")
    );
    assert_eq!(
        reflected(&server.admin).await,
        port_services("gizzard.v1.ShardManager")
    );
    assert_protocol_codes(&server.tweets, "/tbird.v1.Tweets/PostTweet", 4 << 20).await;
    let status = raw_call(
        &server.admin,
        "/gizzard.v1.ShardManager/Lookup",
        Bytes::from_static(TRUNCATED),
    )
    .await
    .expect_err("a truncated admin request is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let serving = ServingStatus::Serving;
    for service in ["tbird.v1.Tweets", ""] {
        assert_eq!(health(&server.tweets, service).await, serving);
    }
    assert_eq!(
        health(&server.admin, "gizzard.v1.ShardManager").await,
        serving
    );

    relay.cut();
    let cut = Instant::now();
    wait_health(
        &server.tweets,
        "tbird.v1.Tweets",
        ServingStatus::NotServing,
        Duration::from_secs(15),
    )
    .await;
    assert!(
        cut.elapsed() >= Duration::from_millis(1_000),
        "NOT_SERVING only once the lease could have lapsed ({:?})",
        cut.elapsed()
    );
    assert!(
        !server.proxy.routing.lease_holds(),
        "health follows the lease"
    );
    assert_eq!(health(&server.tweets, "").await, ServingStatus::NotServing);
    assert_eq!(
        health(&server.admin, "gizzard.v1.ShardManager").await,
        serving,
        "the ShardManager serves without the lease"
    );

    relay.heal();
    wait_health(
        &server.tweets,
        "tbird.v1.Tweets",
        serving,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(health(&server.tweets, "").await, serving);
}

/// The Snowflake daemon lists only its own service (and health and reflection) in both
/// reflection versions, and answers raw bytes with protocol-level codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_reflects_only_its_service_and_answers_protocol_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let config = Config {
        worker_id: Some(2),
        metrics_listen: None,
        ..Config::default()
    };
    let task = tokio::spawn(snowflake::server::run(
        listener,
        config,
        Arc::new(SystemClock::default()),
        shutdown.clone(),
    ));
    assert_eq!(
        reflected(&addr).await,
        port_services("snowflake.v1.Snowflake")
    );
    assert_eq!(
        health(&addr, "snowflake.v1.Snowflake").await,
        ServingStatus::Serving
    );
    assert_protocol_codes(&addr, "/snowflake.v1.Snowflake/GetIds", 4 << 20).await;
    shutdown.cancel();
    task.await.expect("join").expect("daemon ran");
}
