//! The layer every call of a port passes: it counts the call as in flight on its connection
//! until the response body ends (the idle timer of [`crate::incoming`] only closes connections
//! with none), and it enforces the size limit of the called service.
//!
//! The size limit is read from the 5-byte prefix of each gRPC message (a compression flag and
//! a big-endian length) as the request body streams in: a message over the limit fails the
//! body with RESOURCE_EXHAUSTED before its bytes are read, let alone decoded, and the handler
//! answers with that status (tonic passes a `Status` from the body through unchanged). tonic's
//! own check, behind this one, would answer OUT_OF_RANGE, which gRPC reserves for arguments
//! out of their valid range.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::{Status, body::Body, transport::server::TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

use crate::incoming::{CallGuard, ConnInfo};

/// The largest request message of a service that names no limit (tonic's default).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// The size limits of a port's services, by full service name.
#[derive(Clone, Debug, Default)]
pub struct Limits(Arc<HashMap<String, usize>>);

impl Limits {
    /// Returns limits from `(service name, bytes)` pairs.
    pub fn new(limits: HashMap<String, usize>) -> Self {
        Self(Arc::new(limits))
    }

    /// Returns the limit of the service a request `path` (`/package.Service/Method`) calls.
    pub fn for_path(&self, path: &str) -> usize {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        self.0
            .get(service)
            .copied()
            .unwrap_or(DEFAULT_MAX_REQUEST_BYTES)
    }
}

/// Wraps a port's routes in [`Guarded`].
#[derive(Clone, Debug)]
pub struct GuardLayer {
    pub limits: Limits,
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Guarded<S> {
        Guarded {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// A port's routes behind the guard.
#[derive(Clone, Debug)]
pub struct Guarded<S> {
    inner: S,
    limits: Limits,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Guarded<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let call = connection(&request).map(|info| info.state.call());
        let limit = self.limits.for_path(request.uri().path());
        let request = request.map(|body| Body::new(Limited::new(body, limit)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(InFlight { body, _call: call })))
        })
    }
}

/// Returns the connection a request came on, with or without TLS.
fn connection<B>(request: &http::Request<B>) -> Option<&ConnInfo> {
    let extensions = request.extensions();
    extensions.get::<ConnInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<ConnInfo>>()
            .map(TlsConnectInfo::get_ref)
    })
}

/// A response body that keeps its call counted until it ends.
struct InFlight {
    body: Body,
    _call: Option<CallGuard>,
}

impl HttpBody for InFlight {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails once a gRPC message prefix announces more than `limit` bytes.
struct Limited {
    body: Body,
    limit: usize,
    /// The bytes of the current message prefix seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to pass before the next prefix.
    remaining: usize,
    failed: bool,
}

impl Limited {
    fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            limit,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            failed: false,
        }
    }

    /// Follows the message framing through `data`; returns the refusal of an oversize one.
    fn inspect(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data.advance(skip);
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data.advance(take);
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is over the limit of {} bytes",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl HttpBody for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(refused) = self.inspect(data)
        {
            self.failed = true;
            return Poll::Ready(Some(Err(refused)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(limit: usize) -> Limited {
        Limited::new(Body::empty(), limit)
    }

    fn message(len: u32) -> Vec<u8> {
        let mut bytes = vec![0u8];
        bytes.extend(len.to_be_bytes());
        bytes.extend(std::iter::repeat_n(7u8, len as usize));
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_in_any_chunking() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(16));
        for chunk in [1, 2, 3, 5, 7, 64] {
            let mut body = limited(16);
            for part in stream.chunks(chunk) {
                body.inspect(part).expect("within the limit");
            }
            assert_eq!(
                (body.prefix_len, body.remaining),
                (0, 0),
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn an_oversize_message_is_refused_at_its_prefix() {
        let mut stream = message(3);
        stream.extend(&message(17)[..5]);
        for chunk in [1, 4, 64] {
            let mut body = limited(16);
            let refused = stream
                .chunks(chunk)
                .find_map(|part| body.inspect(part).err())
                .expect("refused");
            assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
            assert!(
                refused.message().contains("17 bytes"),
                "{}",
                refused.message()
            );
        }
    }

    #[test]
    fn limits_are_found_by_service() {
        let limits = Limits::new(HashMap::from([("a.v1.Big".to_owned(), 64usize << 20)]));
        assert_eq!(limits.for_path("/a.v1.Big/Apply"), 64 << 20);
        assert_eq!(
            limits.for_path("/a.v1.Small/Get"),
            DEFAULT_MAX_REQUEST_BYTES
        );
    }
}
