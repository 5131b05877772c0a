//! The gRPC service `tbird.v1.Tweets` on the Gizzard proxy: requests are validated into
//! domain types at the edge, tweets are written to table 1 (by id) and their author's timeline
//! in table 2 (by user id), and reads go through the replicated trees with failover. Every
//! call is counted and timed by method and status code ([`crate::metrics`]).

use std::{collections::HashMap, sync::Arc};

use futures::future::join_all;
use gizzard::{
    server::Proxy,
    shards::{ShardError, WriteError},
};
use proto::tbird::v1::{self as pb, tweets_server};
use tonic::{Request, Response, Status};

use crate::{
    ids::{IdSource, IdsError},
    metrics::{Method, RequestMetrics},
    reads::TweetReads,
    store::{TIMELINES_TABLE, TWEETS_TABLE, TbirdShard, TbirdWrite},
    tweet::{InvalidTweet, Tweet, validate_id},
};

/// The most ids one `GetTweets` call may ask for.
pub const MAX_GET_TWEETS: usize = 1_000;
/// The most tweets one `UserTweets` page may hold.
pub const MAX_PAGE: u32 = 200;

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

/// The proxy T-Bird runs on.
pub type TbirdProxy = Proxy<TbirdShard, TbirdWrite>;

/// Implements `tbird.v1.Tweets`.
#[derive(Clone)]
pub struct TweetService {
    proxy: Arc<TbirdProxy>,
    ids: IdSource,
    metrics: Arc<RequestMetrics>,
    reads: Arc<TweetReads>,
}

impl std::fmt::Debug for TweetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TweetService")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

fn invalid(err: InvalidTweet) -> Status {
    Status::invalid_argument(err.to_string())
}

fn shard_status(err: ShardError) -> Status {
    match err {
        ShardError::Query { .. } => Status::internal(err.to_string()),
        _ => Status::unavailable(err.to_string()),
    }
}

fn write_status(err: WriteError) -> Status {
    Status::unavailable(err.to_string())
}

/// Returns the status of a post whose writes failed after tweet `id` was assigned: some of
/// them may have landed (on one replica, or only the timeline entry), so the status names the
/// id, in the message and in [`TWEET_ID_METADATA`], for the caller to finish with `PutTweet`.
fn partly_posted(id: u64, err: Status) -> Status {
    let message = format!(
        "tweet {id} may be partly stored: {}; retry with PutTweet and id {id} (another \
         PostTweet would store a second tweet)",
        err.message()
    );
    let mut status = Status::new(err.code(), message);
    status
        .metadata_mut()
        .insert(TWEET_ID_METADATA, tonic::metadata::MetadataValue::from(id));
    status
}

/// Returns the refusal of a `PutTweet` whose id holds other content.
fn taken(id: u64) -> Status {
    Status::already_exists(format!(
        "tweet {id} already exists with other content (user, text or in_reply_to)"
    ))
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

impl TweetService {
    /// Returns the service over `proxy`, taking new ids from `ids`.
    pub fn new(proxy: Arc<TbirdProxy>, ids: IdSource) -> Self {
        let reads = Arc::new(TweetReads::new(
            proxy.settings().db_timeout,
            crate::hosts::DEFAULT_STATEMENTS_PER_HOST,
        ));
        Self {
            reads,
            proxy,
            ids,
            metrics: Arc::default(),
        }
    }

    /// Returns the service with at most `per_host` read queries in flight on each host.
    pub fn with_reads_per_host(mut self, per_host: usize) -> Self {
        self.reads = Arc::new(TweetReads::new(self.proxy.settings().db_timeout, per_host));
        self
    }

    /// Returns the tonic server for this service.
    pub fn into_server(self) -> tweets_server::TweetsServer<Self> {
        tweets_server::TweetsServer::new(self)
    }

    /// Writes the tweet and its timeline entry; both commute, so they go in parallel.
    async fn store(&self, tweet: &Tweet) -> Result<(), Status> {
        let writer = &self.proxy.writer;
        let put = TbirdWrite::PutTweet(tweet.clone());
        let add = TbirdWrite::AddToTimeline {
            user_id: tweet.user_id,
            tweet_id: tweet.id,
        };
        let (a, b) = tokio::join!(
            writer.write(TWEETS_TABLE, tweet.id, &put),
            writer.write(TIMELINES_TABLE, tweet.user_id, &add)
        );
        a.map_err(write_status)?;
        b.map_err(write_status)?;
        Ok(())
    }

    /// Returns the stored tweets of `ids` (tombstones included), reading each shard's ids in
    /// one query (batched with other callers' reads of the same replica) and the shards in
    /// parallel.
    async fn fetch(&self, ids: &[u64]) -> Result<HashMap<u64, Tweet>, Status> {
        let router = &self.proxy.router;
        let mut groups: HashMap<String, (Arc<gizzard::shards::Node<TbirdShard>>, Vec<u64>)> =
            HashMap::new();
        for &id in ids {
            let tree = router
                .tree(TWEETS_TABLE, id)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            groups
                .entry(tree.id().to_string())
                .or_insert_with(|| (tree, Vec::new()))
                .1
                .push(id);
        }
        let reads = groups
            .values()
            .map(|(tree, ids)| tree.read(move |leaf| self.reads.get(leaf, ids)));
        let mut found = HashMap::with_capacity(ids.len());
        for result in join_all(reads).await {
            found.extend(result.map_err(shard_status)?.into_iter().map(|t| (t.id, t)));
        }
        Ok(found)
    }
}

/// The calls themselves; the `Tweets` impl below counts and times each.
impl TweetService {
    async fn do_post_tweet(
        &self,
        request: Request<pb::PostTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let r = request.into_inner();
        // Validate before taking an id, so bad input spends nothing.
        let user_id = validate_id("user_id", r.user_id).map_err(invalid)?;
        let text = crate::tweet::validate_text(r.text).map_err(invalid)?;
        let in_reply_to = r
            .in_reply_to
            .map(|id| validate_id("in_reply_to", id))
            .transpose()
            .map_err(invalid)?;
        let id = self
            .ids
            .next_id()
            .await
            .map_err(|e: IdsError| Status::unavailable(e.to_string()))?;
        let tweet = Tweet {
            id,
            user_id,
            text,
            in_reply_to,
            deleted: false,
        };
        self.store(&tweet)
            .await
            .map_err(|err| partly_posted(tweet.id, err))?;
        Ok(Response::new(to_pb(tweet)))
    }

    async fn do_put_tweet(
        &self,
        request: Request<pb::PutTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let t = request
            .into_inner()
            .tweet
            .ok_or_else(|| Status::invalid_argument("tweet is missing"))?;
        let tweet = Tweet::new(t.id, t.user_id, t.text, t.in_reply_to).map_err(invalid)?;
        // An id that already holds other content is refused before anything is written, so
        // this caller's user never gets a timeline entry for someone else's tweet. The same
        // content again is a retry (of a post that failed part-way, say) and goes through.
        let stored = self.fetch(&[tweet.id]).await?.remove(&tweet.id);
        if let Some(stored) = stored.filter(Tweet::has_content)
            && !stored.same_content(&tweet)
        {
            return Err(taken(tweet.id));
        }
        self.store(&tweet).await?;
        // A concurrent put of other content may have passed the same check. Replicas only
        // ever move to smaller content (Tweet::merge), so a replica showing content smaller
        // than ours proves ours lost everywhere; larger content there means ours has not
        // landed on it yet, and will win. The loser's timeline entry is withdrawn; reads of
        // timelines skip tweets of other users anyway, for a race this read does not see.
        let stored = self.fetch(&[tweet.id]).await?.remove(&tweet.id);
        if let Some(winner) =
            stored.filter(|s| s.has_content() && s.content_key() < tweet.content_key())
        {
            if winner.user_id != tweet.user_id {
                let remove = TbirdWrite::RemoveFromTimeline {
                    user_id: tweet.user_id,
                    tweet_id: tweet.id,
                };
                self.proxy
                    .writer
                    .write(TIMELINES_TABLE, tweet.user_id, &remove)
                    .await
                    .map_err(write_status)?;
            }
            return Err(taken(tweet.id));
        }
        Ok(Response::new(to_pb(tweet)))
    }

    async fn do_get_tweet(
        &self,
        request: Request<pb::GetTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let id = validate_id("id", request.into_inner().id).map_err(invalid)?;
        match self.fetch(&[id]).await?.remove(&id) {
            Some(tweet) if !tweet.deleted => Ok(Response::new(to_pb(tweet))),
            _ => Err(Status::not_found(format!("tweet {id} does not exist"))),
        }
    }

    async fn do_get_tweets(
        &self,
        request: Request<pb::GetTweetsRequest>,
    ) -> Result<Response<pb::GetTweetsResponse>, Status> {
        let ids = request.into_inner().ids;
        if ids.len() > MAX_GET_TWEETS {
            return Err(Status::invalid_argument(format!(
                "ids has {} entries, over the {MAX_GET_TWEETS} allowed",
                ids.len()
            )));
        }
        for &id in &ids {
            validate_id("ids", id).map_err(invalid)?;
        }
        let mut found = self.fetch(&ids).await?;
        let (mut tweets, mut missing) = (Vec::new(), Vec::new());
        for id in ids {
            match found.get(&id) {
                Some(tweet) if !tweet.deleted => tweets.push(to_pb(tweet.clone())),
                _ => missing.push(id),
            }
        }
        found.clear();
        Ok(Response::new(pb::GetTweetsResponse { tweets, missing }))
    }

    async fn do_delete_tweet(
        &self,
        request: Request<pb::DeleteTweetRequest>,
    ) -> Result<Response<pb::DeleteTweetResponse>, Status> {
        let id = validate_id("id", request.into_inner().id).map_err(invalid)?;
        let writer = &self.proxy.writer;
        // The tombstone goes in whether or not the tweet has arrived yet.
        writer
            .write(TWEETS_TABLE, id, &TbirdWrite::DeleteTweet { id })
            .await
            .map_err(write_status)?;
        if let Some(tweet) = self
            .fetch(&[id])
            .await?
            .remove(&id)
            .filter(|t| t.user_id != 0)
        {
            let remove = TbirdWrite::RemoveFromTimeline {
                user_id: tweet.user_id,
                tweet_id: id,
            };
            writer
                .write(TIMELINES_TABLE, tweet.user_id, &remove)
                .await
                .map_err(write_status)?;
        }
        Ok(Response::new(pb::DeleteTweetResponse {}))
    }

    async fn do_user_tweets(
        &self,
        request: Request<pb::UserTweetsRequest>,
    ) -> Result<Response<pb::UserTweetsResponse>, Status> {
        let r = request.into_inner();
        let user_id = validate_id("user_id", r.user_id).map_err(invalid)?;
        if !(1..=MAX_PAGE).contains(&r.limit) {
            return Err(Status::invalid_argument(format!(
                "limit {} is out of range: expected 1 to {MAX_PAGE}",
                r.limit
            )));
        }
        // Tweet ids are below 2^63 (stored as signed BIGINT): a larger bound would wrap.
        if let Some(max_id) = r.max_id.filter(|&id| id >> 63 != 0) {
            return Err(Status::invalid_argument(format!(
                "max_id {max_id} is out of range: tweet ids are below 2^63"
            )));
        }
        let limit = r.limit as usize;
        let tree = self
            .proxy
            .router
            .tree(TIMELINES_TABLE, user_id)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let ids = tree
            .read(|leaf| leaf.shard.timeline(user_id, r.max_id, limit))
            .await
            .map_err(shard_status)?;
        let found = self.fetch(&ids).await?;
        let tweets = ids
            .iter()
            .filter_map(|id| found.get(id))
            // A tweet of another user is an entry a losing PutTweet of its id left behind.
            .filter(|t| !t.deleted && t.user_id == user_id)
            .cloned()
            .map(to_pb)
            .collect();
        let next_max_id = (ids.len() == limit).then(|| ids[limit - 1] - 1);
        Ok(Response::new(pb::UserTweetsResponse {
            tweets,
            next_max_id,
        }))
    }
}

#[tonic::async_trait]
impl tweets_server::Tweets for TweetService {
    async fn post_tweet(
        &self,
        request: Request<pb::PostTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::PostTweet);
        call.finish(self.do_post_tweet(request).await)
    }

    async fn put_tweet(
        &self,
        request: Request<pb::PutTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::PutTweet);
        call.finish(self.do_put_tweet(request).await)
    }

    async fn get_tweet(
        &self,
        request: Request<pb::GetTweetRequest>,
    ) -> Result<Response<pb::Tweet>, Status> {
        let call = self.metrics.start(Method::GetTweet);
        call.finish(self.do_get_tweet(request).await)
    }

    async fn get_tweets(
        &self,
        request: Request<pb::GetTweetsRequest>,
    ) -> Result<Response<pb::GetTweetsResponse>, Status> {
        let call = self.metrics.start(Method::GetTweets);
        call.finish(self.do_get_tweets(request).await)
    }

    async fn delete_tweet(
        &self,
        request: Request<pb::DeleteTweetRequest>,
    ) -> Result<Response<pb::DeleteTweetResponse>, Status> {
        let call = self.metrics.start(Method::DeleteTweet);
        call.finish(self.do_delete_tweet(request).await)
    }

    async fn user_tweets(
        &self,
        request: Request<pb::UserTweetsRequest>,
    ) -> Result<Response<pb::UserTweetsResponse>, Status> {
        let call = self.metrics.start(Method::UserTweets);
        call.finish(self.do_user_tweets(request).await)
    }
}
