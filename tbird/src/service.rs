//! The gRPC service `tbird.v1.Tweets`: each call unpacks its request, calls [`Tweets`] and
//! packs the answer; a [`TweetError`] becomes a status with one code per condition (see
//! "Errors and status codes" in `docs/ARCHITECTURE.md`). Every call is counted and timed by
//! method and status code ([`crate::metrics`]).

use std::sync::Arc;

use gizzard::manager::GrpcCode;
use proto::tbird::v1::{self as pb, tweets_server};
use tonic::{Code, Request, Response, Status};

use crate::{
    metrics::{Method, RequestMetrics},
    tweet::Tweet,
    tweets::{Draft, TweetError, Tweets},
};

/// The metadata entry (sent as a trailer) of a failed `PostTweet` that may have stored part of
/// its tweet: the id the server assigned, in decimal ASCII. Retrying with `PutTweet` and this
/// id completes the tweet; retrying `PostTweet` would make a second one.
pub const TWEET_ID_METADATA: &str = "tweet-id";

/// Returns the id of the tweet a failed `PostTweet` may have partly stored, from its status
/// ([`TWEET_ID_METADATA`]); `None` when the post stored nothing.
pub fn partly_posted_id(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(TWEET_ID_METADATA)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl GrpcCode for TweetError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_)
            | Self::TooManyIds(_)
            | Self::LimitOutOfRange(_)
            | Self::MaxIdOutOfRange(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Taken(_) => Code::AlreadyExists,
            Self::Ids(_) => Code::Unavailable,
            Self::Route(err) => err.code(),
            Self::Read(err) => err.code(),
            Self::Write(err) | Self::PartlyPosted { cause: err, .. } => err.code(),
        }
    }
}

/// A partly posted tweet's status carries its id in [`TWEET_ID_METADATA`] as well as in the
/// message, for clients to finish it with `PutTweet`.
impl From<TweetError> for Status {
    fn from(err: TweetError) -> Self {
        let mut status = Status::new(err.code(), err.to_string());
        if let TweetError::PartlyPosted { id, .. } = err {
            status
                .metadata_mut()
                .insert(TWEET_ID_METADATA, tonic::metadata::MetadataValue::from(id));
        }
        status
    }
}

/// Implements `tbird.v1.Tweets` over [`Tweets`].
#[derive(Clone, Debug)]
pub struct TweetService {
    tweets: Tweets,
    metrics: Arc<RequestMetrics>,
}

impl TweetService {
    /// Returns the service of `tweets`.
    pub fn new(tweets: Tweets) -> Self {
        Self {
            tweets,
            metrics: Arc::default(),
        }
    }

    /// Returns the tonic server for this service.
    pub fn into_server(self) -> tweets_server::TweetsServer<Self> {
        tweets_server::TweetsServer::new(self)
    }
}

fn to_pb(tweet: Tweet) -> pb::Tweet {
    pb::Tweet {
        id: tweet.id,
        user_id: tweet.user_id,
        created_at_ms: tweet.created_at_ms() as i64,
        text: tweet.text,
        in_reply_to: tweet.in_reply_to,
        deleted: tweet.deleted,
    }
}

fn tweet_response(result: Result<Tweet, TweetError>) -> Result<Response<pb::Tweet>, Status> {
    result
        .map(|tweet| Response::new(to_pb(tweet)))
        .map_err(Status::from)
}

#[tonic::async_trait]
impl tweets_server::Tweets for TweetService {
    async fn post_tweet(
        &self,
        request: Request<pb::PostTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::PostTweet);
        let r = request.into_inner();
        let draft = Draft {
            user_id: r.user_id,
            text: r.text,
            in_reply_to: r.in_reply_to,
        };
        call.finish(tweet_response(self.tweets.post(draft).await))
    }

    async fn put_tweet(
        &self,
        request: Request<pb::PutTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::PutTweet);
        let Some(t) = request.into_inner().tweet else {
            return call.finish(Err(Status::invalid_argument("tweet is missing")));
        };
        let draft = Draft {
            user_id: t.user_id,
            text: t.text,
            in_reply_to: t.in_reply_to,
        };
        call.finish(tweet_response(self.tweets.put(t.id, draft).await))
    }

    async fn get_tweet(
        &self,
        request: Request<pb::GetTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::GetTweet);
        let id = request.into_inner().id;
        call.finish(tweet_response(self.tweets.get(id).await))
    }

    async fn get_tweets(
        &self,
        request: Request<pb::GetTweetsRequest>,
    ) -> Result<Response<pb::GetTweetsResponse>, Status> {
        let call = self.metrics.start(Method::GetTweets);
        let ids = request.into_inner().ids;
        let result = self.tweets.get_many(&ids).await.map(|found| {
            Response::new(pb::GetTweetsResponse {
                tweets: found.tweets.into_iter().map(to_pb).collect(),
                missing: found.missing,
            })
        });
        call.finish(result.map_err(Status::from))
    }

    async fn delete_tweet(
        &self,
        request: Request<pb::DeleteTweetRequest>,
    ) -> Result<Response<pb::DeleteTweetResponse>, Status> {
        let call = self.metrics.start(Method::DeleteTweet);
        let id = request.into_inner().id;
        let result = self.tweets.delete(id).await;
        call.finish(
            result
                .map(|()| Response::new(pb::DeleteTweetResponse {}))
                .map_err(Status::from),
        )
    }

    async fn user_tweets(
        &self,
        request: Request<pb::UserTweetsRequest>,
    ) -> Result<Response<pb::UserTweetsResponse>, Status> {
        let call = self.metrics.start(Method::UserTweets);
        let r = request.into_inner();
        let result = self.tweets.timeline(r.user_id, r.max_id, r.limit).await;
        call.finish(
            result
                .map(|page| {
                    Response::new(pb::UserTweetsResponse {
                        tweets: page.tweets.into_iter().map(to_pb).collect(),
                        next_max_id: page.next_max_id,
                    })
                })
                .map_err(Status::from),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gizzard::shards::{ShardError, WriteError, router::RouteError};

    use super::*;
    use crate::{ids::IdsError, tweet::InvalidTweet};

    fn not_durable() -> WriteError {
        WriteError::NotDurable {
            reason: "queue down".into(),
        }
    }

    #[test]
    fn every_tweet_error_has_its_code() {
        let no_forwarding = || RouteError::NoForwarding {
            table_id: 1,
            hash: 7,
        };
        let cases = [
            (
                TweetError::Invalid(InvalidTweet::EmptyText),
                Code::InvalidArgument,
            ),
            (TweetError::TooManyIds(1_001), Code::InvalidArgument),
            (TweetError::LimitOutOfRange(0), Code::InvalidArgument),
            (TweetError::MaxIdOutOfRange(1 << 63), Code::InvalidArgument),
            (TweetError::NotFound(5), Code::NotFound),
            (TweetError::Taken(5), Code::AlreadyExists),
            (
                TweetError::Ids(IdsError::Timeout(Duration::from_secs(2))),
                Code::Unavailable,
            ),
            (TweetError::Route(no_forwarding()), Code::NotFound),
            (
                TweetError::Read(ShardError::Timeout {
                    shard: "h1/t1_0000".into(),
                    after: Duration::from_secs(1),
                }),
                Code::Unavailable,
            ),
            (
                TweetError::Read(ShardError::Query {
                    shard: "h1/t1_0000".into(),
                    message: "no such table".into(),
                }),
                Code::Internal,
            ),
            (TweetError::Write(not_durable()), Code::Unavailable),
            (
                TweetError::Write(WriteError::Route(no_forwarding())),
                Code::NotFound,
            ),
            (
                TweetError::PartlyPosted {
                    id: 9,
                    cause: not_durable(),
                },
                Code::Unavailable,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn only_a_partly_posted_tweet_names_its_id_in_metadata() {
        let status = Status::from(TweetError::PartlyPosted {
            id: 42,
            cause: not_durable(),
        });
        assert_eq!(partly_posted_id(&status), Some(42));
        assert!(
            status
                .message()
                .starts_with("tweet 42 may be partly stored: write not stored")
                && status.message().contains("retry with PutTweet and id 42"),
            "{}",
            status.message()
        );
        let status = Status::from(TweetError::Write(not_durable()));
        assert_eq!(partly_posted_id(&status), None);
    }
}
