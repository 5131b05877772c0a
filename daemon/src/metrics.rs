//! The process-wide Prometheus recorder and the HTTP endpoint that serves it.
//!
//! [`install`] installs the recorder and serves `GET /metrics` (and `HEAD`) on the given
//! address; every other path answers 404 and other methods on `/metrics` 405, so a
//! misconfigured scraper or health check sees that it asks the wrong thing. Each connection
//! has a deadline: a client that sends nothing cannot hold one open.
//!
//! Every series should carry `# HELP`: each crate describes the metrics it emits
//! (`describe_counter!` and friends) right after [`install`].

use std::{convert::Infallible, net::SocketAddr, str::FromStr, time::Duration};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::{ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Deserializer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path metrics are served at.
pub const PATH: &str = "/metrics";
/// How long one connection may take, from accept to the last byte of the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How often histograms are drained into their summaries when nothing scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why metrics could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serve metrics on {addr}: {reason}")]
    Install { addr: SocketAddr, reason: String },
}

/// A metrics address, or `off`: the value of `metrics-listen` in every config file, flag and
/// variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" | "none" | "" => Ok(Self(None)),
            addr => addr
                .parse()
                .map(|addr| Self(Some(addr)))
                .map_err(|_| format!("{s:?} is neither HOST:PORT nor \"off\"")),
        }
    }
}

/// Deserializes an optional metrics address: `"HOST:PORT"`, or `"off"` for none.
pub fn deserialize_listen<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<Listen>()
        .map(|listen| listen.0)
        .map_err(serde::de::Error::custom)
}

/// Installs the process-wide recorder, histograms whose names end in `duration_seconds` with
/// `buckets`, and serves it on `addr` until `shutdown`. Returns the bound address (`addr`
/// may have port 0). Call it before anything caches metric handles.
pub async fn install(
    addr: SocketAddr,
    buckets: &[f64],
    shutdown: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let err = |reason: String| MetricsError::Install { addr, reason };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| err(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| err(e.to_string()))?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), buckets)
        .map_err(|e| err(e.to_string()))?
        .install_recorder()
        .map_err(|e| err(e.to_string()))?;
    let upkeep = handle.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(UPKEEP_INTERVAL) => upkeep.run_upkeep(),
            }
        }
    });
    tokio::spawn(serve(listener, handle, shutdown));
    Ok(bound)
}

/// Answers scrapes on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accept a metrics connection");
                    // Out of file descriptors, most likely: let some close.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(&request, &handle)) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, connection).await;
        });
    }
}

/// Returns the answer to one request.
fn answer(request: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != PATH {
        return reply(
            StatusCode::NOT_FOUND,
            format!("not found: metrics are at {PATH}\n"),
        );
    }
    match *request.method() {
        Method::GET | Method::HEAD => {
            let mut response = reply(StatusCode::OK, handle.render());
            response.headers_mut().insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        _ => {
            let mut response = reply(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{PATH} answers GET\n"),
            );
            response
                .headers_mut()
                .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn ask(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read");
        response
    }

    #[test]
    fn listen_is_an_address_or_off() {
        assert_eq!("off".parse::<Listen>(), Ok(Listen(None)));
        assert_eq!(
            "127.0.0.1:9990".parse::<Listen>(),
            Ok(Listen(Some(SocketAddr::from(([127, 0, 0, 1], 9990)))))
        );
        let err = "9990".parse::<Listen>().expect_err("no host");
        assert!(err.contains("HOST:PORT"), "{err}");
    }

    #[tokio::test]
    async fn only_get_metrics_is_answered_with_metrics() {
        use metrics::Recorder;
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let key = metrics::Key::from_name("scrapes_total");
        let metadata = metrics::Metadata::new("t", metrics::Level::INFO, None);
        recorder.register_counter(&key, &metadata).increment(2);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, handle, shutdown.clone()));

        let ok = ask(addr, "GET", "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("scrapes_total 2"), "{ok}");
        for path in ["/", "/metrics/x", "/health", "/metricsx"] {
            let response = ask(addr, "GET", path).await;
            assert!(response.starts_with("HTTP/1.1 404"), "{path}: {response}");
        }
        let post = ask(addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        shutdown.cancel();
    }
}
