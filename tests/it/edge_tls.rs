//! TLS on every gRPC port, with certificates each test makes itself (rcgen, no network): the
//! tweet service and the ShardManager of a server on MariaDB, and the Snowflake daemon, in
//! process and through its CLI; a port that requires client certificates refuses a client
//! without one, and a TLS port refuses plaintext.

use std::{path::PathBuf, sync::Arc, time::Duration};

use edge::client::ClientTls;
use proto::{
    gizzard::v1::GetVersionRequest,
    tbird::v1::{GetTweetRequest, PostTweetRequest, tweets_client::TweetsClient},
};
use snowflake::{
    client::Client,
    clock::SystemClock,
    config::Config,
    server::{self, ServerError},
};
use tests::{
    stack,
    tweets::{TweetCluster, settings},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A private CA, a server certificate for `127.0.0.1` and `localhost`, and a client
/// certificate, as PEM files in a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "t-bird test ca");
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("sign");
            std::fs::write(dir.path().join(format!("{file}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.path().join(format!("{file}.key")), key.serialize_pem())
                .expect("write");
        };
        leaf(vec!["127.0.0.1".into(), "localhost".into()], "server");
        leaf(vec!["client.test".into()], "client");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).expect("write ca");
        Self { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Returns a server's TLS files; with `require_client`, clients need a certificate of
    /// the CA.
    pub fn server(&self, require_client: bool) -> edge::ServerTls {
        edge::ServerTls {
            cert: self.path("server.pem"),
            key: self.path("server.key"),
            client_ca: require_client.then(|| self.path("ca.pem")),
        }
    }

    /// Returns a client's TLS files: the CA, and with `identity` the client certificate.
    pub fn client(&self, identity: bool) -> ClientTls {
        ClientTls {
            ca: Some(self.path("ca.pem")),
            cert: identity.then(|| self.path("client.pem")),
            key: identity.then(|| self.path("client.key")),
        }
    }
}

async fn tweets_client(
    addr: &str,
    tls: &ClientTls,
) -> Result<TweetsClient<tonic::transport::Channel>, String> {
    let channel = edge::client::endpoint(addr, tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(TweetsClient::new(channel))
}

/// Posts a tweet through `addr` and reads it back; returns the first failure.
async fn round_trip(addr: &str, tls: &ClientTls) -> Result<(), String> {
    let mut client = tweets_client(addr, tls).await?;
    let posted = client
        .post_tweet(PostTweetRequest {
            user_id: 11,
            text: "over tls".into(),
            in_reply_to: None,
        })
        .await
        .map_err(|s| format!("{s:?}"))?
        .into_inner();
    let got = client
        .get_tweet(GetTweetRequest { id: posted.id })
        .await
        .map_err(|s| format!("{s:?}"))?
        .into_inner();
    assert_eq!(got.text, "over tls");
    Ok(())
}

/// The tweet service and the ShardManager of one server, both TLS with client certificates
/// required: a client with the CA and a certificate posts, reads and asks the ShardManager;
/// one without a certificate, and a plaintext one, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tweets_and_admin_round_trip_over_tls_and_refuse_clients_without_a_certificate() {
    let certs = Certs::generate();
    let (cluster, _plain) = TweetCluster::start(1, 1, 2).await;
    let server = cluster
        .serve_with(
            settings(&cluster.nameserver_url),
            edge::Settings {
                tls: Some(certs.server(true)),
                ..edge::Settings::default()
            },
        )
        .await;

    round_trip(&server.tweets, &certs.client(true))
        .await
        .expect("a client with a certificate posts and reads");
    round_trip(&format!("https://{}", server.tweets), &certs.client(true))
        .await
        .expect("https:// with the same files");

    let err = round_trip(&server.tweets, &certs.client(false))
        .await
        .expect_err("no client certificate");
    assert!(!err.is_empty());
    let err = round_trip(&server.tweets, &ClientTls::default())
        .await
        .expect_err("plaintext to a TLS port");
    assert!(!err.is_empty());

    let mut admin = gizzmo::client::connect(
        &server.admin,
        &certs.client(true),
        None,
        Duration::from_secs(10),
    )
    .await
    .expect("connect the ShardManager over TLS");
    let version = admin
        .get_version(GetVersionRequest {})
        .await
        .expect("the ShardManager answers over TLS");
    assert!(version.into_inner().stored_version > 0);
    let refused = match gizzmo::client::connect(
        &server.admin,
        &certs.client(false),
        None,
        Duration::from_secs(10),
    )
    .await
    {
        Err(err) => err.to_string(),
        Ok(mut admin) => match admin.get_version(GetVersionRequest {}).await {
            Err(status) => status.to_string(),
            Ok(_) => panic!("the ShardManager answered a client without a certificate"),
        },
    };
    assert!(!refused.is_empty());
}

/// A Snowflake daemon in this process, serving on a loopback port.
struct Daemon {
    addr: String,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServerError>>,
}

async fn snowflake_daemon(config: Config) -> Daemon {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let clock = Arc::new(SystemClock::default());
    let task = tokio::spawn(server::run(listener, config, clock, shutdown.clone()));
    Daemon {
        addr,
        shutdown,
        task,
    }
}

fn tls_config(certs: &Certs, require_client: bool) -> Config {
    let tls = certs.server(require_client);
    Config {
        worker_id: Some(4),
        metrics_listen: None,
        tls_cert: Some(tls.cert),
        tls_key: Some(tls.key),
        tls_client_ca: tls.client_ca,
        ..Config::default()
    }
}

/// The Snowflake daemon over TLS: the library client and `snowflake get` with `--tls-ca`
/// get ids; plaintext gets none; with client certificates required, only a client with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snowflake_serves_tls_to_its_client_and_its_cli() {
    let certs = Certs::generate();
    let daemon = snowflake_daemon(tls_config(&certs, false)).await;
    let timeout = Duration::from_secs(5);
    let client = Client::connect_with(&daemon.addr, &certs.client(false), "it", timeout)
        .await
        .expect("connect over TLS");
    assert!(client.get_id().await.expect("an id over TLS") > 0);
    let plain = match Client::connect(&daemon.addr, "it", timeout).await {
        Ok(client) => client.get_id().await.map(|_| ()).map_err(|e| e.to_string()),
        Err(err) => Err(err.to_string()),
    };
    assert!(plain.is_err(), "plaintext got an id from a TLS port");

    let ca = certs.path("ca.pem");
    let ca = ca.to_str().expect("utf-8 path");
    let out = stack::ok(stack::run(
        "snowflake",
        "snowflake",
        &[
            "get",
            "--addr",
            &daemon.addr,
            "--tls-ca",
            ca,
            "--count",
            "2",
        ],
    ));
    assert_eq!(out.lines().count(), 2, "{out}");
    let https = format!("https://{}", daemon.addr);
    let out = stack::run("snowflake", "snowflake", &["get", "--addr", &https]);
    assert!(
        !out.status.success(),
        "https:// without --tls-ca trusts only the system's roots"
    );
    daemon.shutdown.cancel();
    daemon.task.await.expect("join").expect("daemon ran");

    let daemon = snowflake_daemon(tls_config(&certs, true)).await;
    let with_cert = Client::connect_with(&daemon.addr, &certs.client(true), "it", timeout)
        .await
        .expect("connect with a client certificate");
    assert!(with_cert.get_id().await.expect("an id") > 0);
    let without =
        match Client::connect_with(&daemon.addr, &certs.client(false), "it", timeout).await {
            Ok(client) => client.get_id().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
    assert!(without.is_err(), "a client without a certificate got an id");
    daemon.shutdown.cancel();
    daemon.task.await.expect("join").expect("daemon ran");
}
