//! [`Tweets`]: posting, reading, deleting tweets and reading timelines on the Gizzard proxy.
//! A tweet is written to table 1 (by id) and its author's timeline to table 2 (by user id);
//! reads go through the replicated trees with failover, batched per host
//! ([`crate::reads`]). Input is validated here ([`crate::tweet`]), and every failure is a
//! [`TweetError`] naming what was wrong; the gRPC service ([`crate::service`]) only converts.

use std::{collections::HashMap, sync::Arc};

use futures::future::join_all;
use gizzard::{
    server::Proxy,
    shards::{
        Node, ShardError, WriteError,
        health::{MAX_HEDGE, Op},
        router::RouteError,
    },
};

use crate::{
    ids::{IdSource, IdsError},
    reads::{TimelineReads, TweetReads},
    store::{Page, TIMELINES_TABLE, TWEETS_TABLE, TbirdShard, TbirdWrite},
    tweet::{InvalidTweet, Tweet, validate_id, validate_text},
};

/// The most ids one multi-get may ask for.
pub const MAX_GET_TWEETS: usize = 1_000;
/// The most tweets one timeline page may hold.
pub const MAX_PAGE: u32 = 200;

/// The proxy T-Bird runs on.
pub type TbirdProxy = Proxy<TbirdShard, TbirdWrite>;

/// Why a tweet call failed.
#[derive(Debug, thiserror::Error)]
pub enum TweetError {
    #[error(transparent)]
    Invalid(#[from] InvalidTweet),
    #[error("ids has {0} entries, over the {MAX_GET_TWEETS} allowed")]
    TooManyIds(usize),
    #[error("limit {0} is out of range: expected 1 to {MAX_PAGE}")]
    LimitOutOfRange(u32),
    /// Tweet ids are below 2^63 (stored as signed BIGINT): a larger bound would wrap.
    #[error("max_id {0} is out of range: tweet ids are below 2^63")]
    MaxIdOutOfRange(u64),
    #[error("tweet {0} does not exist")]
    NotFound(u64),
    /// A put of an id that holds other content; nothing of the caller's stays written.
    #[error("tweet {0} already exists with other content (user, text or in_reply_to)")]
    Taken(u64),
    #[error(transparent)]
    Ids(#[from] IdsError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(transparent)]
    Read(#[from] ShardError),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A post whose writes failed after tweet `id` was assigned: some may have landed (on one
    /// replica, or only the timeline entry), so the caller finishes it with a put of `id`.
    #[error(
        "tweet {id} may be partly stored: {cause}; retry with PutTweet and id {id} (another \
         PostTweet would store a second tweet)"
    )]
    PartlyPosted { id: u64, cause: WriteError },
}

/// Why a tweet and its timeline entry were not both stored.
#[derive(Debug)]
struct Unstored {
    /// The failed write's error (the tweet's, when both failed).
    cause: WriteError,
    /// Whether both writes were refused before going out, so nothing of the tweet is stored.
    wrote_nothing: bool,
}

impl From<Unstored> for TweetError {
    fn from(failed: Unstored) -> Self {
        Self::Write(failed.cause)
    }
}

/// A tweet's content as a client sends it, not validated yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draft {
    pub user_id: u64,
    pub text: String,
    pub in_reply_to: Option<u64>,
}

/// The answer of a multi-get: the tweets found, in the order asked, and the ids not found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub tweets: Vec<Tweet>,
    pub missing: Vec<u64>,
}

/// A page of a user's timeline, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelinePage {
    pub tweets: Vec<Tweet>,
    /// The `max_id` of the next page; `None` on the last one.
    pub next_max_id: Option<u64>,
}

/// The tweets of one proxy. Cheap to clone.
#[derive(Clone)]
pub struct Tweets {
    proxy: Arc<TbirdProxy>,
    ids: IdSource,
    reads: Arc<TweetReads>,
    timelines: Arc<TimelineReads>,
}

impl std::fmt::Debug for Tweets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tweets")
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

impl Tweets {
    /// Returns the tweets on `proxy`, taking new ids from `ids`, with at most
    /// `reads_per_host` tweet reads, and as many timeline reads, in flight on each host.
    pub fn new(proxy: Arc<TbirdProxy>, ids: IdSource, reads_per_host: usize) -> Self {
        let timeout = proxy.settings().db_timeout;
        Self {
            reads: Arc::new(TweetReads::new(timeout, reads_per_host)),
            timelines: Arc::new(TimelineReads::new(timeout, reads_per_host)),
            proxy,
            ids,
        }
    }

    /// Stores a new tweet of `draft` under a new id and returns it.
    pub async fn post(&self, draft: Draft) -> Result<Tweet, TweetError> {
        // Validate before taking an id, so bad input spends nothing.
        let user_id = validate_id("user_id", draft.user_id)?;
        let text = validate_text(draft.text)?;
        let in_reply_to = draft
            .in_reply_to
            .map(|id| validate_id("in_reply_to", id))
            .transpose()?;
        let tweet = Tweet {
            id: self.ids.next_id().await?,
            user_id,
            text,
            in_reply_to,
            deleted: false,
        };
        match self.store(&tweet).await {
            Ok(()) => Ok(tweet),
            // Refused before either write went out: nothing of it is stored, and posting
            // again is safe.
            Err(failed) if failed.wrote_nothing => Err(TweetError::Write(failed.cause)),
            Err(failed) => Err(TweetError::PartlyPosted {
                id: tweet.id,
                cause: failed.cause,
            }),
        }
    }

    /// Stores tweet `id` with the content of `draft`: the caller's id, as a retry of a failed
    /// post. The same content again succeeds; other content is [`TweetError::Taken`].
    pub async fn put(&self, id: u64, draft: Draft) -> Result<Tweet, TweetError> {
        let tweet = Tweet::new(id, draft.user_id, draft.text, draft.in_reply_to)?;
        // An id that already holds other content is refused before anything is written, so
        // this caller's user never gets a timeline entry for someone else's tweet. The same
        // content again is a retry (of a post that failed part-way, say) and goes through.
        let stored = self.fetch(&[tweet.id]).await?.remove(&tweet.id);
        if let Some(stored) = stored.filter(Tweet::has_content)
            && !stored.same_content(&tweet)
        {
            return Err(TweetError::Taken(tweet.id));
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
                    .await?;
            }
            return Err(TweetError::Taken(tweet.id));
        }
        Ok(tweet)
    }

    /// Returns tweet `id`, unless it does not exist or was deleted.
    pub async fn get(&self, id: u64) -> Result<Tweet, TweetError> {
        let id = validate_id("id", id)?;
        match self.fetch(&[id]).await?.remove(&id) {
            Some(tweet) if !tweet.deleted => Ok(tweet),
            _ => Err(TweetError::NotFound(id)),
        }
    }

    /// Returns the tweets of `ids` that exist, and the ids of those that do not.
    pub async fn get_many(&self, ids: &[u64]) -> Result<Found, TweetError> {
        if ids.len() > MAX_GET_TWEETS {
            return Err(TweetError::TooManyIds(ids.len()));
        }
        for &id in ids {
            validate_id("ids", id)?;
        }
        let stored = self.fetch(ids).await?;
        let mut found = Found::default();
        for &id in ids {
            match stored.get(&id) {
                Some(tweet) if !tweet.deleted => found.tweets.push(tweet.clone()),
                _ => found.missing.push(id),
            }
        }
        Ok(found)
    }

    /// Deletes tweet `id` and its timeline entry. The tombstone goes in whether or not the
    /// tweet has arrived yet, and wins whenever it does.
    pub async fn delete(&self, id: u64) -> Result<(), TweetError> {
        let id = validate_id("id", id)?;
        let writer = &self.proxy.writer;
        writer
            .write(TWEETS_TABLE, id, &TbirdWrite::DeleteTweet { id })
            .await?;
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
                .await?;
        }
        Ok(())
    }

    /// Returns the newest `limit` tweets of `user_id` with ids up to `max_id`.
    pub async fn timeline(
        &self,
        user_id: u64,
        max_id: Option<u64>,
        limit: u32,
    ) -> Result<TimelinePage, TweetError> {
        let user_id = validate_id("user_id", user_id)?;
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(TweetError::LimitOutOfRange(limit));
        }
        if let Some(max_id) = max_id.filter(|&id| id >> 63 != 0) {
            return Err(TweetError::MaxIdOutOfRange(max_id));
        }
        let limit = limit as usize;
        let page = Page::new(user_id, max_id, limit);
        let tree = self.proxy.router.tree(TIMELINES_TABLE, user_id).await?;
        let ids = tree.read(|leaf| self.timelines.get(leaf, page)).await?;
        let found = self.fetch(&ids).await?;
        let tweets = ids
            .iter()
            .filter_map(|id| found.get(id))
            // A tweet of another user is an entry a losing put of its id left behind.
            .filter(|t| !t.deleted && t.user_id == user_id)
            .cloned()
            .collect();
        let next_max_id = (ids.len() == limit).then(|| ids[limit - 1] - 1);
        Ok(TimelinePage {
            tweets,
            next_max_id,
        })
    }

    /// Writes the tweet and its timeline entry; both commute, so they go in parallel.
    async fn store(&self, tweet: &Tweet) -> Result<(), Unstored> {
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
        match (a, b) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(a), Err(b)) => Err(Unstored {
                wrote_nothing: a.wrote_nothing() && b.wrote_nothing(),
                cause: a,
            }),
            (Err(cause), Ok(_)) | (Ok(_), Err(cause)) => Err(Unstored {
                wrote_nothing: false,
                cause,
            }),
        }
    }

    /// Returns the stored tweets of `ids` (tombstones included), reading each shard's ids in
    /// one query (batched with other callers' reads of the same replica) and the shards in
    /// parallel.
    async fn fetch(&self, ids: &[u64]) -> Result<HashMap<u64, Tweet>, TweetError> {
        let router = &self.proxy.router;
        // Grouped by tree: the router hands out one node per tree, so its address names it.
        let mut groups: Vec<(Arc<Node<TbirdShard>>, Vec<u64>)> = Vec::new();
        for &id in ids {
            let tree = router.tree(TWEETS_TABLE, id).await?;
            match groups.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &tree)) {
                Some((_, ids)) => ids.push(id),
                None => groups.push((tree, vec![id])),
            }
        }
        let reads = groups
            .iter()
            .map(|(tree, ids)| tree.read(move |leaf| self.reads.get(leaf, ids)));
        let mut found = HashMap::with_capacity(ids.len());
        for result in join_all(reads).await {
            found.extend(result?.into_iter().map(|t| (t.id, t)));
        }
        let misses: Vec<(&Node<TbirdShard>, Vec<u64>)> = groups
            .iter()
            .map(|(tree, ids)| {
                let missed = ids.iter().filter(|id| !found.contains_key(id)).copied();
                (&**tree, missed.collect::<Vec<u64>>())
            })
            .filter(|(_, missed)| !missed.is_empty())
            .collect();
        let confirms = misses
            .iter()
            .map(|(tree, ids)| self.on_every_replica(tree, ids));
        for tweet in join_all(confirms).await.into_iter().flatten() {
            found
                .entry(tweet.id)
                .and_modify(|t| *t = t.merge(&tweet))
                .or_insert(tweet);
        }
        Ok(found)
    }

    /// Returns what the replicas of `tree` store of `ids`, which the replica read first did
    /// not have. A replica can lack an acknowledged tweet for a while (its write waits in the
    /// retry queue, or a fault lost it until anti-entropy repairs it), so a miss is asked of
    /// every readable replica before it counts as not found; the one read first is asked
    /// again, since the tree's read does not say which answered, and misses are rare. Suspect
    /// replicas are skipped, and each other one gets its hedge to answer: a miss never waits
    /// for a frozen replica's deadline. A replica that fails or is late adds nothing.
    async fn on_every_replica(&self, tree: &Node<TbirdShard>, ids: &[u64]) -> Vec<Tweet> {
        // The readable leaves only: not a migration's half-copied destination, nor a blocked
        // one. The first read succeeded, so there is at least one.
        let leaves = tree.read_order(&mut rand::rng()).unwrap_or_default();
        if leaves.len() < 2 {
            return Vec::new();
        }
        let reads = leaves
            .into_iter()
            .filter(|leaf| !leaf.health.is_suspect())
            .map(|leaf| {
                let patience = leaf.health.hedge(Op::Read, MAX_HEDGE);
                tokio::time::timeout(patience, self.reads.get(leaf, ids))
            });
        join_all(reads)
            .await
            .into_iter()
            .filter_map(|read| read.ok()?.ok())
            .flatten()
            .collect()
    }
}
