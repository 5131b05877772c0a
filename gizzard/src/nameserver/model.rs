//! The topology model: shards (a table on a host, or a virtual routing node), the links that
//! make shard trees, the forwardings that map hash ranges of each table to a tree's root, and
//! the hosts that leaves live on.
//!
//! A [`Topology`] is a plain in-memory value. [`Change`]s edit it one at a time through
//! [`Topology::apply`], which refuses edits that make no sense on their own (deleting what
//! does not exist, deleting a shard still in use). Whole-topology rules (no cycles, child
//! counts, known types) are checked by [`super::validate()`] once a batch has been applied.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

/// The number of bits of a key hash and of a forwarding's base id.
pub const HASH_BITS: u32 = 60;

/// The largest hash (and base id): hashes lie in `0..=MAX_HASH`, so they fit a signed BIGINT.
pub const MAX_HASH: i64 = (1 << HASH_BITS) - 1;

/// The hostname virtual (routing-only) shards conventionally use.
pub const VIRTUAL_HOST: &str = "localhost";

/// The longest table prefix: MySQL's identifier limit.
const MAX_PREFIX_LEN: usize = 64;

/// The longest hostname (DNS names are at most 253 characters; a port may follow).
const MAX_HOSTNAME_LEN: usize = 255;

/// Why a shard id (`hostname/table_prefix`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardIdError {
    #[error("shard id {0:?} has no '/' between hostname and table prefix")]
    MissingSlash(String),
    #[error("shard id {0:?} has more than one '/'")]
    TooManySlashes(String),
    #[error("shard id has an empty hostname")]
    EmptyHostname,
    #[error("shard id on host {0:?} has an empty table prefix")]
    EmptyTablePrefix(String),
    #[error("hostname {0:?} is not valid: use at most 255 of the characters A-Z a-z 0-9 . _ : -")]
    BadHostname(String),
    #[error(
        "table prefix {0:?} is not a safe SQL identifier: use [A-Za-z_][A-Za-z0-9_]*, \
         at most 64 characters"
    )]
    BadTablePrefix(String),
}

/// Checks a hostname: 1 to 255 of `[A-Za-z0-9._:-]`.
pub fn check_hostname(hostname: &str) -> Result<(), ShardIdError> {
    if hostname.is_empty() {
        return Err(ShardIdError::EmptyHostname);
    }
    let ok = hostname.len() <= MAX_HOSTNAME_LEN
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ShardIdError::BadHostname(hostname.to_owned()))
    }
}

/// Checks a table prefix: `[A-Za-z_][A-Za-z0-9_]{0,63}`, safe to paste into SQL.
pub fn check_table_prefix(prefix: &str) -> Result<(), ShardIdError> {
    let mut bytes = prefix.bytes();
    let ok = match bytes.next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == b'_')
                && prefix.len() <= MAX_PREFIX_LEN
                && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ShardIdError::BadTablePrefix(prefix.to_owned()))
    }
}

/// A shard's identity: the host its table lives on and the table's name prefix, written
/// `hostname/table_prefix`. Virtual nodes use the host [`VIRTUAL_HOST`].
///
/// The fields are public for pattern matching; build ids with [`ShardId::new`] or
/// [`str::parse`], which check them. A hand-built id is checked again by validation before
/// it is ever stored.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShardId {
    pub hostname: String,
    pub table_prefix: String,
}

impl ShardId {
    /// Returns the id of table `table_prefix` on `hostname`, or why either is malformed.
    pub fn new(
        hostname: impl Into<String>,
        table_prefix: impl Into<String>,
    ) -> Result<Self, ShardIdError> {
        let id = Self {
            hostname: hostname.into(),
            table_prefix: table_prefix.into(),
        };
        id.check()?;
        Ok(id)
    }

    /// Checks both parts, for ids built from the public fields.
    pub fn check(&self) -> Result<(), ShardIdError> {
        if self.hostname.is_empty() {
            return Err(ShardIdError::EmptyHostname);
        }
        if self.table_prefix.is_empty() {
            return Err(ShardIdError::EmptyTablePrefix(self.hostname.clone()));
        }
        check_hostname(&self.hostname)?;
        check_table_prefix(&self.table_prefix)
    }

    /// Returns whether this is a virtual node's id (on [`VIRTUAL_HOST`]).
    pub fn is_virtual(&self) -> bool {
        self.hostname == VIRTUAL_HOST
    }

    /// The smallest id in the derived order, a range bound for scans of `(ShardId, _)` keys.
    pub(crate) const MIN: ShardId = ShardId {
        hostname: String::new(),
        table_prefix: String::new(),
    };
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.hostname, self.table_prefix)
    }
}

impl FromStr for ShardId {
    type Err = ShardIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split('/');
        let (Some(hostname), Some(prefix)) = (parts.next(), parts.next()) else {
            return Err(ShardIdError::MissingSlash(s.to_owned()));
        };
        if parts.next().is_some() {
            return Err(ShardIdError::TooManySlashes(s.to_owned()));
        }
        Self::new(hostname, prefix)
    }
}

impl TryFrom<String> for ShardId {
    type Error = ShardIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ShardId> for String {
    fn from(id: ShardId) -> Self {
        id.to_string()
    }
}

/// A shard: its id, its class (a built-in routing node or a registered leaf type) and
/// whether a migration holds it busy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: ShardId,
    pub class_name: String,
    pub busy: bool,
}

/// An edge of a shard tree: `down` is a child of `up`. Replicating nodes read children in
/// proportion to `weight`; weight 0 means the child is never read (but still written).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub up: ShardId,
    pub down: ShardId,
    pub weight: u32,
}

/// Keys of `table_id` whose hash is at least `base_id` (and below the next forwarding's base
/// id) live in the tree rooted at `shard_id`. Base ids are hashes, in `0..=MAX_HASH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarding {
    pub table_id: i32,
    pub base_id: i64,
    pub shard_id: ShardId,
}

/// A database host that leaves live on: `url` is `mysql://...` or `sqlite://...`; the
/// weights let rebalancing put more shards on bigger hosts. Its `Debug` form hides the url's
/// password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub url: String,
    pub read_weight: u32,
    pub write_weight: u32,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("url", &db::text::redact(&self.url))
            .field("read_weight", &self.read_weight)
            .field("write_weight", &self.write_weight)
            .finish()
    }
}

/// The whole sharding topology at one version of the nameserver.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// The nameserver's change counter this topology was read at.
    pub version: u64,
    pub shards: BTreeMap<ShardId, ShardInfo>,
    /// Links keyed by `(up, down)`, holding their weight.
    pub links: BTreeMap<(ShardId, ShardId), u32>,
    /// Forwardings keyed by `(table_id, base_id)`, holding the root of their tree.
    pub forwardings: BTreeMap<(i32, i64), ShardId>,
    pub hosts: BTreeMap<String, Host>,
}

/// One edit of the topology. Changes travel in admin RPCs and are applied in batches, each
/// batch in one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Creates a shard; refused when the id exists.
    CreateShard(ShardInfo),
    /// Deletes a shard that has no links and no forwardings.
    DeleteShard(ShardId),
    /// Adds a link, or sets its weight when it exists.
    AddLink(Link),
    /// Removes an existing link.
    RemoveLink { up: ShardId, down: ShardId },
    /// Sets the root of the range starting at `base_id`, replacing any earlier one.
    SetForwarding(Forwarding),
    /// Removes an existing forwarding.
    RemoveForwarding { table_id: i32, base_id: i64 },
    /// Adds a host, or replaces the one of the same name; the url of a host that holds shards
    /// is not changed (the nameserver refuses the batch): see [`Change::RepointHost`].
    SetHost(Host),
    /// Replaces a host whose shards' tables are now at a new url (`add-host --force`).
    RepointHost(Host),
    /// Removes an existing host.
    RemoveHost(String),
    /// Marks an existing shard busy (or not).
    SetBusy { id: ShardId, busy: bool },
}

/// Why a change or a topology was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("shard {0} already exists")]
    ShardExists(ShardId),
    /// A leaf of this id was deleted and its table is not fenced yet (see `gizzmo retired`).
    #[error(
        "shard {0} was removed and its old table waits to be fenced until every server stops \
         writing to it (within a routing lease); try again shortly"
    )]
    StillRetiring(ShardId),
    #[error("shard {0} does not exist")]
    ShardNotFound(ShardId),
    /// `link` is the `(up, down)` pair of one link still touching `id`.
    #[error("shard {id} is still linked ({} -> {}); remove the link first", .link.0, .link.1)]
    ShardStillLinked {
        id: ShardId,
        link: Box<(ShardId, ShardId)>,
    },
    #[error(
        "shard {id} is still the root of table {table_id} from base id {base_id}; \
         remove the forwarding first"
    )]
    ShardStillForwarded {
        id: ShardId,
        table_id: i32,
        base_id: i64,
    },
    #[error("link {up} -> {down} does not exist")]
    LinkNotFound { up: ShardId, down: ShardId },
    #[error("table {table_id} has no forwarding at base id {base_id}")]
    ForwardingNotFound { table_id: i32, base_id: i64 },
    #[error("host {0:?} does not exist")]
    HostNotFound(String),
    #[error("invalid shard id {id:?}: {reason}")]
    InvalidShardId { id: String, reason: ShardIdError },
    #[error("host {name:?} is invalid: {reason}")]
    InvalidHost { name: String, reason: String },
    #[error("shard {id} has unknown type {class_name:?}")]
    UnknownShardType { id: ShardId, class_name: String },
    /// `link` is the `(up, down)` pair of the link.
    #[error("link {} -> {} refers to shard {missing}, which does not exist", .link.0, .link.1)]
    DanglingLink {
        link: Box<(ShardId, ShardId)>,
        missing: ShardId,
    },
    #[error("shard tree has a cycle: {}", cycle_text(.0))]
    Cycle(Vec<ShardId>),
    #[error("shard {id} ({class_name}) must have {expected} child(ren), has {found}")]
    WrongChildCount {
        id: ShardId,
        class_name: String,
        expected: &'static str,
        found: usize,
    },
    #[error("leaf shard {id} is on host {hostname:?}, which is not a known host")]
    UnknownHost { id: ShardId, hostname: String },
    #[error("forwarding of table {table_id} at base id {base_id} points at missing shard {shard}")]
    DanglingForwarding {
        table_id: i32,
        base_id: i64,
        shard: ShardId,
    },
    #[error("forwarding of table {table_id} has base id {base_id}, outside 0..=2^60-1")]
    BaseIdOutOfRange { table_id: i32, base_id: i64 },
    #[error(
        "table {table_id} does not start at base id 0 (its first forwarding starts at \
         {first_base_id}); every table needs a forwarding at 0"
    )]
    TableNotStartingAtZero { table_id: i32, first_base_id: i64 },
    /// A table's trees hold leaves of two classes: `first` of `expected`, `id` of `class_name`.
    #[error(
        "table {table_id} would hold leaves of two classes: {first} is a {expected} and {id} a \
         {class_name}; every leaf under one table has the same class"
    )]
    MixedClasses {
        table_id: i32,
        // Boxed: every topology result carries this error type, so its largest variant sets
        // their size.
        first: Box<ShardId>,
        expected: String,
        id: Box<ShardId>,
        class_name: String,
    },
    /// `SetHost` would move a host that holds shards to another url.
    #[error(
        "host {name:?} holds {shards} shard(s) and its url would change: pass --force (force \
         in the change) if their tables are at the new url already"
    )]
    HostHoldsShards { name: String, shards: usize },
}

fn cycle_text(cycle: &[ShardId]) -> String {
    let mut text = String::new();
    for id in cycle {
        text.push_str(&id.to_string());
        text.push_str(" -> ");
    }
    match cycle.first() {
        Some(first) => text.push_str(&first.to_string()),
        None => text.push_str("(empty)"),
    }
    text
}

impl Topology {
    /// Applies one change in memory, or says why it makes no sense here. The result may still
    /// break whole-topology rules: run [`super::validate()`] after a batch.
    pub fn apply(&mut self, change: &Change) -> Result<(), TopologyError> {
        match change {
            Change::CreateShard(info) => {
                if self.shards.contains_key(&info.id) {
                    return Err(TopologyError::ShardExists(info.id.clone()));
                }
                self.shards.insert(info.id.clone(), info.clone());
            }
            Change::DeleteShard(id) => {
                if !self.shards.contains_key(id) {
                    return Err(TopologyError::ShardNotFound(id.clone()));
                }
                if let Some((up, down)) =
                    self.links.keys().find(|(up, down)| up == id || down == id)
                {
                    let link = Box::new((up.clone(), down.clone()));
                    return Err(TopologyError::ShardStillLinked {
                        id: id.clone(),
                        link,
                    });
                }
                if let Some((&(table_id, base_id), _)) =
                    self.forwardings.iter().find(|(_, root)| *root == id)
                {
                    return Err(TopologyError::ShardStillForwarded {
                        id: id.clone(),
                        table_id,
                        base_id,
                    });
                }
                self.shards.remove(id);
            }
            Change::AddLink(link) => {
                self.links
                    .insert((link.up.clone(), link.down.clone()), link.weight);
            }
            Change::RemoveLink { up, down } => {
                if self.links.remove(&(up.clone(), down.clone())).is_none() {
                    return Err(TopologyError::LinkNotFound {
                        up: up.clone(),
                        down: down.clone(),
                    });
                }
            }
            Change::SetForwarding(f) => {
                self.forwardings
                    .insert((f.table_id, f.base_id), f.shard_id.clone());
            }
            &Change::RemoveForwarding { table_id, base_id } => {
                if self.forwardings.remove(&(table_id, base_id)).is_none() {
                    return Err(TopologyError::ForwardingNotFound { table_id, base_id });
                }
            }
            Change::SetHost(host) | Change::RepointHost(host) => {
                self.hosts.insert(host.name.clone(), host.clone());
            }
            Change::RemoveHost(name) => {
                if self.hosts.remove(name).is_none() {
                    return Err(TopologyError::HostNotFound(name.clone()));
                }
            }
            Change::SetBusy { id, busy } => match self.shards.get_mut(id) {
                Some(info) => info.busy = *busy,
                None => return Err(TopologyError::ShardNotFound(id.clone())),
            },
        }
        Ok(())
    }

    /// Returns the children of `up` with their weights, in id order.
    pub fn children<'a>(
        &'a self,
        up: &ShardId,
    ) -> impl Iterator<Item = (&'a ShardId, u32)> + use<'a> {
        let up = up.clone();
        self.links
            .range((up.clone(), ShardId::MIN)..)
            .take_while(move |((u, _), _)| *u == up)
            .map(|((_, down), weight)| (down, *weight))
    }

    /// Returns the parents of `down` with the links' weights (a scan of all links).
    pub fn parents<'a>(
        &'a self,
        down: &ShardId,
    ) -> impl Iterator<Item = (&'a ShardId, u32)> + use<'a> {
        let down = down.clone();
        self.links
            .iter()
            .filter(move |((_, d), _)| *d == down)
            .map(|((up, _), w)| (up, *w))
    }

    /// Returns the links as [`Link`] values, in `(up, down)` order.
    pub fn link_list(&self) -> impl Iterator<Item = Link> + '_ {
        self.links.iter().map(|((up, down), &weight)| Link {
            up: up.clone(),
            down: down.clone(),
            weight,
        })
    }

    /// Returns the forwardings of `table_id` in base id order.
    pub fn table_forwardings(&self, table_id: i32) -> impl Iterator<Item = Forwarding> + '_ {
        self.forwardings
            .range((table_id, i64::MIN)..=(table_id, i64::MAX))
            .map(|(&(table_id, base_id), root)| Forwarding {
                table_id,
                base_id,
                shard_id: root.clone(),
            })
    }
}

/// What a shard does when it routes, derived from its class name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// Reads from one child (weighted, failing over), writes to all.
    Replicating,
    /// Reads pass through; writes are refused (and retried later).
    ReadOnly,
    /// Reads are skipped; writes pass through.
    WriteOnly,
    /// Reads and writes are refused (writes retried later).
    Blocked,
    /// Reads find nothing; writes are dropped.
    BlackHole,
    /// A physical table of the named registered type.
    Leaf(String),
}

impl NodeKind {
    /// The built-in routing node classes, by name.
    pub const BUILT_INS: [(&'static str, NodeKind); 5] = [
        ("ReplicatingShard", NodeKind::Replicating),
        ("ReadOnlyShard", NodeKind::ReadOnly),
        ("WriteOnlyShard", NodeKind::WriteOnly),
        ("BlockedShard", NodeKind::Blocked),
        ("BlackHoleShard", NodeKind::BlackHole),
    ];

    /// Returns the kind of `class_name` without checking leaf names against registered
    /// types: built-in names are routing nodes, anything else a leaf.
    pub fn from_class_name(class_name: &str) -> Self {
        Self::built_in(class_name).unwrap_or_else(|| NodeKind::Leaf(class_name.to_owned()))
    }

    /// Returns the built-in routing node named `class_name`, if it is one.
    pub fn built_in(class_name: &str) -> Option<Self> {
        Self::BUILT_INS
            .iter()
            .find(|(name, _)| *name == class_name)
            .map(|(_, kind)| kind.clone())
    }

    /// Returns the class name of this kind.
    pub fn class_name(&self) -> &str {
        match self {
            NodeKind::Leaf(name) => name,
            kind => Self::BUILT_INS
                .iter()
                .find(|(_, k)| k == kind)
                .map_or("", |(name, _)| name),
        }
    }
}

/// The leaf shard classes an application registers (for example `"TweetShard"`); with the
/// built-ins these are the only class names a topology may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardTypes {
    leaves: BTreeSet<String>,
}

impl ShardTypes {
    /// Returns the set of the given leaf class names. A built-in name given here stays the
    /// built-in routing node.
    pub fn new<I, S>(leaves: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let leaves = leaves
            .into_iter()
            .map(Into::into)
            .filter(|name| NodeKind::built_in(name).is_none())
            .collect();
        Self { leaves }
    }

    /// Returns whether `class_name` is a registered leaf class.
    pub fn is_leaf(&self, class_name: &str) -> bool {
        self.leaves.contains(class_name)
    }

    /// Returns the kind of shard `id` of class `class_name`, refusing unknown classes.
    pub fn kind(&self, id: &ShardId, class_name: &str) -> Result<NodeKind, TopologyError> {
        if let Some(kind) = NodeKind::built_in(class_name) {
            Ok(kind)
        } else if self.is_leaf(class_name) {
            Ok(NodeKind::Leaf(class_name.to_owned()))
        } else {
            Err(TopologyError::UnknownShardType {
                id: id.clone(),
                class_name: class_name.to_owned(),
            })
        }
    }
}

/// Returns the base ids of `shards` forwardings spread evenly over the hash space:
/// `i * 2^60 / shards`, the first being 0.
pub fn base_ids(shards: u32) -> Vec<i64> {
    let space = 1u128 << HASH_BITS;
    (0..u128::from(shards))
        .map(|i| {
            // Below 2^60, so the conversion cannot fail.
            i64::try_from(i * space / u128::from(shards)).unwrap_or(i64::MAX)
        })
        .collect()
}

/// Returns the changes that create table `table_id` over `shards` hash ranges spread evenly:
/// per range `i`, a `ReplicatingShard` `localhost/<prefix>_<i:04>` over one `class_name` leaf
/// `<host>/<prefix>_<i:04>` per host (links of weight 1), and the forwarding to it.
pub fn replicated_table(
    table_id: i32,
    class_name: &str,
    prefix: &str,
    hosts: &[String],
    shards: u32,
) -> Result<Vec<Change>, ShardIdError> {
    let create = |id: &ShardId, class_name: &str| {
        Change::CreateShard(ShardInfo {
            id: id.clone(),
            class_name: class_name.to_owned(),
            busy: false,
        })
    };
    let mut changes = Vec::new();
    for (i, base_id) in base_ids(shards).into_iter().enumerate() {
        let prefix = format!("{prefix}_{i:04}");
        let root = ShardId::new(VIRTUAL_HOST, prefix.as_str())?;
        changes.push(create(&root, "ReplicatingShard"));
        for host in hosts {
            let leaf = ShardId::new(host.as_str(), prefix.as_str())?;
            changes.push(create(&leaf, class_name));
            changes.push(Change::AddLink(Link {
                up: root.clone(),
                down: leaf,
                weight: 1,
            }));
        }
        changes.push(Change::SetForwarding(Forwarding {
            table_id,
            base_id,
            shard_id: root,
        }));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    #[test]
    fn shard_ids_round_trip_through_text() {
        let parsed = id("db-01.example.com:3306/tweets_0007");
        assert_eq!(parsed.hostname, "db-01.example.com:3306");
        assert_eq!(parsed.table_prefix, "tweets_0007");
        assert_eq!(parsed.to_string(), "db-01.example.com:3306/tweets_0007");
        assert_eq!(
            ShardId::new("localhost", "_r").expect("valid"),
            id("localhost/_r")
        );
        let json = serde_json::to_string(&parsed).expect("serialize");
        assert_eq!(json, "\"db-01.example.com:3306/tweets_0007\"");
        assert_eq!(
            serde_json::from_str::<ShardId>(&json).expect("deserialize"),
            parsed
        );
    }

    #[test]
    fn malformed_shard_ids_are_refused_with_the_reason() {
        use ShardIdError::*;
        let cases: &[(&str, ShardIdError)] = &[
            ("host", MissingSlash("host".into())),
            ("", MissingSlash("".into())),
            ("a/b/c", TooManySlashes("a/b/c".into())),
            ("/t", EmptyHostname),
            ("h/", EmptyTablePrefix("h".into())),
            ("h h/t", BadHostname("h h".into())),
            ("h;drop/t", BadHostname("h;drop".into())),
            ("h/1t", BadTablePrefix("1t".into())),
            ("h/t-1", BadTablePrefix("t-1".into())),
            ("h/t`x", BadTablePrefix("t`x".into())),
            ("h/tëx", BadTablePrefix("tëx".into())),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<ShardId>().as_ref(), Err(want), "{text:?}");
        }
        let long = "a".repeat(65);
        assert_eq!(ShardId::new("h", long.clone()), Err(BadTablePrefix(long)));
        assert!(ShardId::new("h", "a".repeat(64)).is_ok());
        assert!(ShardId::new("h".repeat(256), "t").is_err());
        let err = "h/t-1".parse::<ShardId>().expect_err("bad prefix");
        assert!(
            err.to_string()
                .contains("\"t-1\" is not a safe SQL identifier"),
            "{err}"
        );
        assert!(serde_json::from_str::<ShardId>("\"h/t;x\"").is_err());
    }

    #[test]
    fn apply_refuses_edits_of_missing_or_used_shards() {
        let (leaf, rep) = (id("h1/t0"), id("localhost/r0"));
        let mut t = Topology::default();
        for c in [
            Change::CreateShard(ShardInfo {
                id: leaf.clone(),
                class_name: "T".into(),
                busy: false,
            }),
            Change::CreateShard(ShardInfo {
                id: rep.clone(),
                class_name: "ReplicatingShard".into(),
                busy: false,
            }),
            Change::AddLink(Link {
                up: rep.clone(),
                down: leaf.clone(),
                weight: 1,
            }),
            Change::AddLink(Link {
                up: rep.clone(),
                down: leaf.clone(),
                weight: 3,
            }),
            Change::SetForwarding(Forwarding {
                table_id: 1,
                base_id: 0,
                shard_id: rep.clone(),
            }),
        ] {
            t.apply(&c).expect("valid change");
        }
        assert_eq!(
            t.links.get(&(rep.clone(), leaf.clone())),
            Some(&3),
            "weight updated"
        );
        assert_eq!(t.children(&rep).collect::<Vec<_>>(), vec![(&leaf, 3)]);
        assert_eq!(t.parents(&leaf).collect::<Vec<_>>(), vec![(&rep, 3)]);

        let err = t
            .apply(&Change::DeleteShard(leaf.clone()))
            .expect_err("linked");
        assert!(
            matches!(err, TopologyError::ShardStillLinked { .. }),
            "{err}"
        );
        let err = t
            .apply(&Change::DeleteShard(id("h1/missing")))
            .expect_err("missing");
        assert_eq!(err, TopologyError::ShardNotFound(id("h1/missing")));
        let err = t
            .apply(&Change::CreateShard(ShardInfo {
                id: leaf.clone(),
                class_name: "T".into(),
                busy: false,
            }))
            .expect_err("exists");
        assert_eq!(err, TopologyError::ShardExists(leaf.clone()));

        t.apply(&Change::RemoveLink {
            up: rep.clone(),
            down: leaf.clone(),
        })
        .expect("remove");
        let err = t
            .apply(&Change::RemoveLink {
                up: rep.clone(),
                down: leaf.clone(),
            })
            .expect_err("removed already");
        assert!(matches!(err, TopologyError::LinkNotFound { .. }), "{err}");
        let err = t
            .apply(&Change::DeleteShard(rep.clone()))
            .expect_err("forwarded");
        assert!(
            err.to_string().contains("root of table 1 from base id 0"),
            "{err}"
        );
        t.apply(&Change::DeleteShard(leaf.clone()))
            .expect("unlinked leaf");
        assert!(!t.shards.contains_key(&leaf));

        let err = t
            .apply(&Change::RemoveForwarding {
                table_id: 1,
                base_id: 9,
            })
            .expect_err("");
        assert_eq!(
            err,
            TopologyError::ForwardingNotFound {
                table_id: 1,
                base_id: 9
            }
        );
        let err = t
            .apply(&Change::RemoveHost("nope".into()))
            .expect_err("no host");
        assert_eq!(err, TopologyError::HostNotFound("nope".into()));
        t.apply(&Change::SetBusy {
            id: rep.clone(),
            busy: true,
        })
        .expect("busy");
        assert!(t.shards[&rep].busy);
    }

    #[test]
    fn changes_travel_as_json() {
        let change = Change::RemoveLink {
            up: id("localhost/r"),
            down: id("h/t"),
        };
        let json = serde_json::to_string(&change).expect("serialize");
        assert_eq!(
            serde_json::from_str::<Change>(&json).expect("deserialize"),
            change
        );
        let bad = r#"{"DeleteShard":"h/t;drop"}"#;
        assert!(serde_json::from_str::<Change>(bad).is_err());
    }

    #[test]
    fn class_names_map_to_kinds() {
        let types = ShardTypes::new(["TweetShard", "ReplicatingShard"]);
        let x = id("h/t");
        assert_eq!(
            types.kind(&x, "ReplicatingShard"),
            Ok(NodeKind::Replicating)
        );
        assert_eq!(types.kind(&x, "BlackHoleShard"), Ok(NodeKind::BlackHole));
        assert_eq!(
            types.kind(&x, "TweetShard"),
            Ok(NodeKind::Leaf("TweetShard".into()))
        );
        let err = types.kind(&x, "Tweetshard").expect_err("unknown");
        assert_eq!(err.to_string(), "shard h/t has unknown type \"Tweetshard\"");
        assert_eq!(NodeKind::WriteOnly.class_name(), "WriteOnlyShard");
        assert_eq!(NodeKind::from_class_name("X"), NodeKind::Leaf("X".into()));
    }
}
