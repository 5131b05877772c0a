//! The process-wide Prometheus recorder and the HTTP endpoint that serves it.
//!
//! [`install`] installs the recorder and serves `GET /metrics` (and `HEAD`) on the given
//! address; every other path answers 404 and other methods on `/metrics` 405, so a
//! misconfigured scraper or health check sees that it asks the wrong thing. Each connection
//! has a deadline: a client that sends nothing cannot hold one open.
//!
//! Every series should carry `# HELP`: each crate describes the metrics it emits
//! (`describe_counter!` and friends) right after [`install`].

use std::{convert::Infallible, io, net::SocketAddr, str::FromStr, time::Duration};

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
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// The path metrics are served at.
pub const PATH: &str = "/metrics";
/// How long one connection may take, from accept to the last byte of the answer.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// How often histograms are drained into their summaries when nothing scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why metrics could not be served. It ends the daemon, whose exit message prints the cause.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("listen for metrics on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("install the metrics recorder")]
    Recorder(#[source] metrics_exporter_prometheus::BuildError),
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
    let listen_err = |source| MetricsError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen_err)?;
    let bound = listener.local_addr().map_err(listen_err)?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), buckets)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(MetricsError::Recorder)?;
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

/// How long one [`request`] may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `method path` to `addr` as a plain HTTP/1.1 request and returns the status line and
/// headers, and the body: the client side of this endpoint, for benchmarks and tests.
pub async fn request(addr: &str, method: &str, path: &str) -> io::Result<(String, String)> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = tokio::time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{method} {addr}{path} timed out"),
            )
        })??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {response:?}")))?;
    Ok((head.to_owned(), body.to_owned()))
}

/// Returns the text of `/metrics` at `addr`, failing unless it answers 200.
pub async fn scrape_text(addr: &str) -> io::Result<String> {
    let (head, body) = request(addr, "GET", PATH).await?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "scrape of {addr} answered {head:?}"
        )));
    }
    Ok(body)
}

/// Returns the value of the unlabelled series `name` in a scrape's text.
pub fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
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
            let mut text = handle.render();
            crate::process::render(&mut text);
            let mut response = reply(StatusCode::OK, text);
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
    use super::*;

    async fn ask(addr: SocketAddr, method: &str, path: &str) -> String {
        let (head, _) = request(&addr.to_string(), method, path)
            .await
            .expect("request");
        head
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

        let text = scrape_text(&addr.to_string()).await.expect("scrape");
        assert_eq!(value(&text, "scrapes_total"), Some(2.0), "{text}");
        let cpu = value(&text, "process_cpu_seconds_total");
        assert!(cpu.is_some_and(|cpu| cpu >= 0.0), "{text}");
        for path in ["/", "/metrics/x", "/health", "/metricsx"] {
            let response = ask(addr, "GET", path).await;
            assert!(response.starts_with("HTTP/1.1 404"), "{path}: {response}");
        }
        let post = ask(addr, "POST", "/metrics").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        shutdown.cancel();
    }
}
