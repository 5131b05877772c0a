//! The tweet service end to end over real gRPC: a proxy with two replicas (on MariaDB, and on
//! SQLite files), tweets posted, read, multi-read, deleted and paged by timeline, and bad
//! input refused with the field named.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use proto::tbird::v1::{
    DeleteTweetRequest, GetTweetRequest, GetTweetsRequest, PostTweetRequest, PutTweetRequest,
    Tweet, UserTweetsRequest, tweets_client::TweetsClient,
};
use snowflake::{clock::SystemClock, worker::IdWorker};
use tbird::{ids::IdSource, tweets::TbirdProxy};
use tests::cluster::{Databases, test_settings};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

/// Starts a proxy over `hosts` with the default topology, serves the tweet service on a
/// loopback port and returns a client; the service stops when `shutdown` is cancelled.
async fn serve(
    nameserver_url: &str,
    hosts: Vec<(String, String)>,
    shutdown: &CancellationToken,
) -> (TweetsClient<Channel>, String) {
    let (client, _, addr) = serve_proxy(nameserver_url, hosts, shutdown).await;
    (client, addr)
}

/// [`serve`], also returning the proxy, for tests that write past the service.
pub(crate) async fn serve_proxy(
    nameserver_url: &str,
    hosts: Vec<(String, String)>,
    shutdown: &CancellationToken,
) -> (TweetsClient<Channel>, Arc<TbirdProxy>, String) {
    let proxy = start_proxy(nameserver_url, shutdown).await;
    let changes = tbird::topology::default_changes(&hosts, 4).expect("valid host names");
    proxy
        .topology()
        .apply(&changes)
        .await
        .expect("create the tables");
    let (client, proxy, (addr, _)) = serve_started(proxy, shutdown).await;
    (client, proxy, addr.to_string())
}

async fn start_proxy(nameserver_url: &str, shutdown: &CancellationToken) -> TbirdProxy {
    gizzard::server::Proxy::start(
        test_settings(nameserver_url),
        tbird::store::registry(tbird::hosts::DEFAULT_STATEMENTS_PER_HOST),
        HashMap::new(),
        shutdown.clone(),
    )
    .await
    .expect("start proxy")
}

/// Serves `proxy` as `tbird serve` does; returns a tweets client, the proxy, and the
/// addresses of the tweet service and the ShardManager.
async fn serve_started(
    proxy: TbirdProxy,
    shutdown: &CancellationToken,
) -> (
    TweetsClient<Channel>,
    Arc<TbirdProxy>,
    (SocketAddr, SocketAddr),
) {
    let ids = IdSource::Local(Arc::new(IdWorker::fixed(
        Arc::new(SystemClock::default()),
        5,
        0,
        1,
    )));
    let proxy = Arc::new(proxy);
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let listeners = tbird::server::Listeners::bind(loopback, loopback)
        .await
        .expect("bind");
    let addrs = listeners.local_addrs().expect("addrs");
    let parts = tbird::server::Parts {
        proxy: proxy.clone(),
        ids,
        statements_per_host: tbird::hosts::DEFAULT_STATEMENTS_PER_HOST,
        edge: edge::Settings::default(),
    };
    tokio::spawn(tbird::server::serve(listeners, parts, shutdown.clone()));
    let client = TweetsClient::connect(format!("http://{}", addrs.0))
        .await
        .expect("connect");
    (client, proxy, addrs)
}

fn text(t: &Tweet) -> String {
    t.text.clone()
}

/// `PostTweetRequest` as a client that ignores the schema may send it: text as raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawPostTweetRequest {
    #[prost(fixed64, tag = "1")]
    user_id: u64,
    #[prost(bytes = "vec", tag = "2")]
    text: Vec<u8>,
}

/// Sends a post whose text is `text`, whatever its bytes, and returns the status it must fail
/// with.
async fn post_raw(addr: &str, user_id: u64, text: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<RawPostTweetRequest, Tweet>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/tbird.v1.Tweets/PostTweet");
    let request = tonic::Request::new(RawPostTweetRequest { user_id, text });
    match grpc.unary(request, path, codec).await {
        Ok(tweet) => panic!("posted {:?}", tweet.into_inner()),
        Err(status) => status,
    }
}

async fn post(client: &mut TweetsClient<Channel>, user_id: u64, body: &str) -> Tweet {
    let request = PostTweetRequest {
        user_id,
        text: body.to_owned(),
        in_reply_to: None,
    };
    client.post_tweet(request).await.expect("post").into_inner()
}

async fn tweets_end_to_end((mut client, addr): (TweetsClient<Channel>, String)) {
    // Post and read back.
    let first = post(&mut client, 7, "hello 🐦").await;
    assert!(first.id > 0 && first.created_at_ms > 0);
    let got = client
        .get_tweet(GetTweetRequest { id: first.id })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((got.user_id, text(&got)), (7, "hello 🐦".to_owned()));

    // Multi-get keeps the request's order and names the missing ids.
    let second = post(&mut client, 8, "second").await;
    let third = post(&mut client, 7, "third").await;
    let request = GetTweetsRequest {
        ids: vec![third.id, 424_242, first.id, second.id],
    };
    let got = client
        .get_tweets(request)
        .await
        .expect("multi-get")
        .into_inner();
    let order: Vec<u64> = got.tweets.iter().map(|t| t.id).collect();
    assert_eq!(order, [third.id, first.id, second.id]);
    assert_eq!(got.missing, [424_242]);

    // Timeline: newest first, paged.
    let page = UserTweetsRequest {
        user_id: 7,
        max_id: None,
        limit: 1,
    };
    let got = client
        .user_tweets(page)
        .await
        .expect("timeline")
        .into_inner();
    assert_eq!(
        got.tweets.iter().map(|t| t.id).collect::<Vec<_>>(),
        [third.id]
    );
    let next = UserTweetsRequest {
        user_id: 7,
        max_id: got.next_max_id,
        limit: 10,
    };
    let got = client.user_tweets(next).await.expect("page 2").into_inner();
    assert_eq!(
        got.tweets.iter().map(|t| t.id).collect::<Vec<_>>(),
        [first.id]
    );
    assert_eq!(got.next_max_id, None);

    // Delete: gone from reads and from the timeline.
    client
        .delete_tweet(DeleteTweetRequest { id: third.id })
        .await
        .expect("delete");
    let status = client
        .get_tweet(GetTweetRequest { id: third.id })
        .await
        .expect_err("deleted");
    assert_eq!(status.code(), Code::NotFound);
    let page = UserTweetsRequest {
        user_id: 7,
        max_id: None,
        limit: 10,
    };
    let got = client
        .user_tweets(page)
        .await
        .expect("timeline")
        .into_inner();
    assert_eq!(
        got.tweets.iter().map(|t| t.id).collect::<Vec<_>>(),
        [first.id]
    );

    // A delete that arrives before its tweet stays deleted; repeating the put changes nothing.
    let early = first.id + 1_000;
    client
        .delete_tweet(DeleteTweetRequest { id: early })
        .await
        .expect("early delete");
    let late = Tweet {
        id: early,
        user_id: 9,
        text: "late".into(),
        ..Tweet::default()
    };
    for _ in 0..2 {
        client
            .put_tweet(PutTweetRequest {
                tweet: Some(late.clone()),
            })
            .await
            .expect("put");
    }
    let status = client
        .get_tweet(GetTweetRequest { id: early })
        .await
        .expect_err("stays deleted");
    assert_eq!(status.code(), Code::NotFound);

    // Bad input is refused with the field named.
    let bad_posts = [
        (7, String::new(), "text is empty"),
        (7, "a".repeat(281), "text has 281 characters"),
        (0, "hi".to_owned(), "user_id must not be 0"),
    ];
    for (user_id, body, message) in bad_posts {
        let request = PostTweetRequest {
            user_id,
            text: body,
            in_reply_to: None,
        };
        let status = client.post_tweet(request).await.expect_err("bad post");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(message), "{}", status.message());
    }
    // Text is a string: bytes that are not UTF-8 do not decode, and the status says why.
    let status = post_raw(&addr, 7, vec![b'h', 0xc3, 0x28]).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    let status = post_raw(&addr, 0, "hé".as_bytes().to_vec()).await;
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "valid bytes reach validation"
    );
    assert!(status.message().contains("user_id"), "{status:?}");
    let status = client
        .get_tweet(GetTweetRequest { id: 0 })
        .await
        .expect_err("id 0");
    assert!(
        status.code() == Code::InvalidArgument && status.message().contains("id must not be 0")
    );
    for limit in [0, 201] {
        let request = UserTweetsRequest {
            user_id: 7,
            max_id: None,
            limit,
        };
        let status = client.user_tweets(request).await.expect_err("bad limit");
        assert!(
            status.message().contains(&format!("limit {limit}")),
            "{}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tweets_on_two_mariadb_replicas() {
    let dbs = Databases::start(2, "tbird", &[]).await;
    let (nameserver, hosts) = (&dbs.nameserver_url, dbs.host_urls("tbird"));
    let shutdown = CancellationToken::new();
    tweets_end_to_end(serve(nameserver, hosts, &shutdown).await).await;
    shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tweets_on_two_sqlite_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let hosts = vec![("a".to_owned(), url("a.db")), ("b".to_owned(), url("b.db"))];
    let shutdown = CancellationToken::new();
    tweets_end_to_end(serve(&url("ns.db"), hosts, &shutdown).await).await;
    shutdown.cancel();
}

/// A table without forwardings does not exist: the tweet service and the ShardManager both
/// answer NOT_FOUND (asking again will not help), where a shard that is down is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_forwardings_is_not_found_on_both_services() {
    use proto::gizzard::v1::{LookupRequest, shard_manager_client::ShardManagerClient};
    let dir = tempfile::tempdir().expect("tempdir");
    let nameserver = format!("sqlite://{}", dir.path().join("ns.db").display());
    let shutdown = CancellationToken::new();
    let proxy = start_proxy(&nameserver, &shutdown).await;
    let (mut client, _, (_, admin)) = serve_started(proxy, &shutdown).await;

    let status = client
        .get_tweet(GetTweetRequest { id: 42 })
        .await
        .expect_err("no tweets table");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("table 1 has no forwarding"),
        "{status:?}"
    );
    let request = PostTweetRequest {
        user_id: 7,
        text: "nowhere to go".into(),
        in_reply_to: None,
    };
    let status = client.post_tweet(request).await.expect_err("no tables");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let mut manager = ShardManagerClient::connect(format!("http://{admin}"))
        .await
        .expect("connect admin");
    let status = manager
        .lookup(LookupRequest {
            table_id: 1,
            key: 42,
        })
        .await
        .expect_err("no forwarding");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status.message().contains("table 1 has no forwarding"),
        "{status:?}"
    );
    shutdown.cancel();
}
