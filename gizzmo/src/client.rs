//! The connection to one proxy's `gizzard.v1.ShardManager`: a deadline on connecting and on
//! every call, TLS by the rule of `edge::client`, the bearer token on every request, and
//! errors that keep the server's message and status code.

use std::time::Duration;

use anyhow::{Context, anyhow};
use proto::gizzard::v1::shard_manager_client::ShardManagerClient;
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// The largest response accepted: a dump of a big topology runs to tens of megabytes.
const MAX_RESPONSE_BYTES: usize = 512 << 20;

/// A client of one proxy's admin service.
pub type ManagerClient = ShardManagerClient<InterceptedService<Channel, BearerToken>>;

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone, Debug)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// Returns the interceptor for `token`, or why it cannot travel in a header.
    pub fn new(token: Option<&str>) -> anyhow::Result<Self> {
        let value = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| anyhow!("--token must be printable ASCII"))
            })
            .transpose()?;
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to `addr` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`) within
/// `timeout`, which also bounds every call made through the client.
pub async fn connect(
    addr: &str,
    tls: &edge::client::ClientTls,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<ManagerClient> {
    let token = BearerToken::new(token)?;
    let endpoint = edge::client::endpoint(addr, tls)?
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true);
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(channel) => channel.with_context(|| format!("connect to {addr}"))?,
        Err(_) => anyhow::bail!("connect to {addr}: no answer within {timeout:?}"),
    };
    Ok(ShardManagerClient::with_interceptor(channel, token)
        .max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// Returns the error of a failed call: what was being done, the server's message as it is,
/// and the status code.
pub fn call_error(action: &str, status: Status) -> anyhow::Error {
    let message = status.message();
    let message = if message.is_empty() {
        "(no message)"
    } else {
        message
    };
    anyhow!("{action}: {message} (code: {})", code_name(status.code()))
}

/// Returns the gRPC name of a status code, as `grpcurl` and the specs spell it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_errors_keep_the_message_and_name_the_code() {
        let err = call_error(
            "apply changes",
            Status::permission_denied("the bearer token is wrong"),
        );
        assert_eq!(
            err.to_string(),
            "apply changes: the bearer token is wrong (code: PERMISSION_DENIED)"
        );
    }

    #[test]
    fn the_token_travels_as_a_bearer_header() {
        let mut with = BearerToken::new(Some("s3cret")).expect("ascii token");
        let request = with.call(Request::new(())).expect("intercepted");
        assert_eq!(
            request.metadata().get("authorization").expect("set"),
            "Bearer s3cret"
        );
        let mut without = BearerToken::new(None).expect("no token");
        let request = without.call(Request::new(())).expect("intercepted");
        assert!(request.metadata().get("authorization").is_none());
        assert!(BearerToken::new(Some("tök\n")).is_err());
    }
}
