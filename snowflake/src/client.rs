//! A client for the id service: connects with a deadline and sets one on every call, over TLS
//! by the rule of `edge::client` (an `https://` address, or TLS files given).

use std::time::Duration;

use edge::client::ClientTls;
use proto::snowflake::v1::{GetIdRequest, GetIdsRequest, snowflake_client::SnowflakeClient};
use tonic::transport::Channel;

/// The deadline of each call unless the caller picks another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Setup(#[from] edge::client::ClientError),
    #[error("connect to {addr}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    /// The daemon's answer, by its message alone: a status's own text repeats the message
    /// among its code, details and metadata, so it is not the source.
    #[error("snowflake refused: {}", .0.message())]
    Status(tonic::Status),
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// A connection to one daemon; cheap to clone, and clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: SnowflakeClient<Channel>,
    user_agent: String,
}

impl Client {
    /// Connects to `addr` (`HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT`) within
    /// `timeout`, which also bounds each call.
    pub async fn connect(
        addr: &str,
        user_agent: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_with(addr, &ClientTls::default(), user_agent, timeout).await
    }

    /// Connects as [`Client::connect`] does, with the TLS files of `tls`.
    pub async fn connect_with(
        addr: &str,
        tls: &ClientTls,
        user_agent: &str,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let endpoint = edge::client::endpoint(addr, tls)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let inner = SnowflakeClient::new(channel).max_decoding_message_size(64 << 20);
        Ok(Self {
            inner,
            user_agent: user_agent.to_owned(),
        })
    }

    /// Returns the generated client, for the calls this type does not wrap.
    pub fn raw(&self) -> SnowflakeClient<Channel> {
        self.inner.clone()
    }

    /// Returns one id.
    pub async fn get_id(&self) -> Result<u64, ClientError> {
        let request = GetIdRequest {
            user_agent: self.user_agent.clone(),
        };
        Ok(self.inner.clone().get_id(request).await?.into_inner().id)
    }

    /// Returns `count` strictly increasing ids.
    pub async fn get_ids(&self, count: u32) -> Result<Vec<u64>, ClientError> {
        let request = GetIdsRequest {
            user_agent: self.user_agent.clone(),
            count,
        };
        Ok(self.inner.clone().get_ids(request).await?.into_inner().ids)
    }
}
