//! The nameserver's tables in the nameserver database (MySQL, or SQLite embedded).
//!
//! Tables: `gizzard_shards`, `gizzard_links`, `gizzard_forwardings`, `gizzard_hosts`, and
//! `gizzard_version`, whose one row holds the change counter that servers poll.
//!
//! A batch of changes is one transaction: lock the version row (`SELECT ... FOR UPDATE` on
//! MySQL, `BEGIN IMMEDIATE` on SQLite), load the topology inside the transaction, apply the
//! changes in memory, validate the result, write only the rows the batch touched (in
//! multi-row statements), bump the counter and commit. A batch that fails anywhere writes
//! nothing. Every operation runs under the database's deadline.
//!
//! What differs between the databases (the schema, the snapshot a load reads in, how a batch
//! locks the version row, the upsert's clause) is behind [`NameServerBackend`], in [`mysql`]
//! and [`sqlite`], chosen once when the nameserver opens.

mod mysql;
mod sqlite;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use futures::future::BoxFuture;

use super::{
    model::{Change, Host, ShardId, ShardInfo, ShardTypes, Topology, TopologyError, VIRTUAL_HOST},
    retired,
    validate::validate,
};
use crate::db::{Database, DbError, Param};

const SELECT_VERSION: &str = "SELECT version FROM gizzard_version WHERE id = 1";
const SELECT_SHARDS: &str = "SELECT hostname, table_prefix, class_name, busy FROM gizzard_shards";
const SELECT_LINKS: &str = "SELECT up_hostname, up_table_prefix, down_hostname, \
                            down_table_prefix, weight FROM gizzard_links";
const SELECT_FORWARDINGS: &str =
    "SELECT table_id, base_id, hostname, table_prefix FROM gizzard_forwardings";
const SELECT_HOSTS: &str = "SELECT name, url, read_weight, write_weight FROM gizzard_hosts";

/// Rows per multi-row INSERT or DELETE: well under both databases' placeholder limits.
const ROWS_PER_STATEMENT: usize = 500;

/// Why a nameserver operation failed. The text becomes a gRPC status or a log line, which
/// print one message, so each variant names its cause in its message and has no `source`.
#[derive(Debug, thiserror::Error)]
pub enum NameServerError {
    /// A change of the batch made no sense on the topology (nothing was written).
    #[error("change {index} of the batch was refused: {reason}")]
    Rejected { index: usize, reason: TopologyError },
    /// The topology after the batch broke a rule (nothing was written).
    #[error("the batch would leave an invalid topology: {0}")]
    Invalid(TopologyError),
    /// The database did not confirm the batch in time: it may or may not have been applied.
    #[error(
        "the batch may have been applied: the database did not answer within {0:?}; \
         load the topology to check before retrying"
    )]
    MaybeApplied(Duration),
    /// The topology changed every time it was loaded, too fast to confirm any version.
    #[error("the topology changed {0} times while this server confirmed it; try again")]
    Unsettled(usize),
    #[error("nameserver table {table} holds a bad row: {reason}")]
    Corrupt { table: &'static str, reason: String },
    #[error("nameserver database: {0}")]
    Db(DbError),
}

impl From<DbError> for NameServerError {
    fn from(err: DbError) -> Self {
        Self::Db(err)
    }
}

impl NameServerError {
    /// Returns the topology rule the batch broke, if that is why it was refused.
    pub fn topology_error(&self) -> Option<&TopologyError> {
        match self {
            Self::Rejected { reason, .. } | Self::Invalid(reason) => Some(reason),
            _ => None,
        }
    }
}

impl From<mysql_async::Error> for NameServerError {
    fn from(e: mysql_async::Error) -> Self {
        Self::Db(DbError::Mysql(e))
    }
}

/// The nameserver tables in one database.
#[derive(Clone, Debug)]
pub struct NameServer {
    db: Database,
    backend: &'static dyn NameServerBackend,
}

/// Plans a batch from the tables as read inside its transaction: the new version and the
/// statements that take the tables there, or why the batch is refused.
type Planner = Box<dyn FnOnce(Rows) -> Result<(u64, Vec<Statement>), NameServerError> + Send>;

/// What the nameserver does its own way on one database.
trait NameServerBackend: fmt::Debug + Send + Sync {
    /// Returns the statements creating the tables when missing: the topology's, the server
    /// registry's, the retired leaves'.
    fn schema(&self) -> [&'static str; 3];

    /// Reads every table in one consistent snapshot.
    fn load<'a>(&'a self, db: &'a Database) -> BoxFuture<'a, Result<Rows, DbError>>;

    /// Runs one batch as one transaction that first locks the version row, so batches run one
    /// at a time: reads the tables, runs the statements `plan` returns and commits, or writes
    /// nothing when it refuses.
    fn apply<'a>(
        &'a self,
        db: &'a Database,
        plan: Planner,
    ) -> BoxFuture<'a, Result<Result<u64, NameServerError>, DbError>>;

    /// Returns the clause of an `INSERT` into `table` that replaces the non-key columns of a
    /// row whose key exists.
    fn upsert_clause(&self, table: &Table) -> String;
}

/// Returns the backend of `db`.
fn backend_of(db: &Database) -> &'static dyn NameServerBackend {
    match db {
        Database::Mysql { .. } => &mysql::Mysql,
        Database::Sqlite { .. } => &sqlite::Sqlite,
    }
}

impl NameServer {
    /// Opens the nameserver in `db`, creating its tables when missing.
    pub async fn open(db: Database) -> Result<Self, NameServerError> {
        let backend = backend_of(&db);
        for sql in backend.schema() {
            db.execute_batch(sql.to_owned()).await?;
        }
        Ok(Self { db, backend })
    }

    /// Returns the database this nameserver lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Returns the change counter: one query on one row, cheap enough to poll every second.
    pub async fn version(&self) -> Result<u64, NameServerError> {
        let rows = self.db.query_ints(SELECT_VERSION.into(), vec![]).await?;
        to_version(rows.first().and_then(|row| row.first().copied().flatten()))
    }

    /// Returns the whole topology, read in one consistent snapshot of the database.
    pub async fn load(&self) -> Result<Topology, NameServerError> {
        self.backend.load(&self.db).await?.into_topology()
    }

    /// Applies `changes` in one transaction and returns the new version. The batch is refused
    /// as a whole, with nothing written, when a change makes no sense or the resulting
    /// topology fails validation against `types`. An empty batch changes nothing and returns
    /// the current version.
    pub async fn apply(
        &self,
        changes: &[Change],
        types: &ShardTypes,
    ) -> Result<u64, NameServerError> {
        if changes.is_empty() {
            return self.version().await;
        }
        let (changes, types, backend) = (changes.to_vec(), types.clone(), self.backend);
        let plan: Planner = Box::new(move |rows| {
            let (version, writes) = plan(rows, &changes, &types)?;
            Ok((version, writes.statements(backend)))
        });
        match self.backend.apply(&self.db, plan).await {
            Ok(outcome) => outcome,
            Err(DbError::Timeout(timeout)) => Err(NameServerError::MaybeApplied(timeout)),
            Err(e) => Err(e.into()),
        }
    }
}

fn to_version(version: Option<i64>) -> Result<u64, NameServerError> {
    let corrupt = |reason: String| NameServerError::Corrupt {
        table: "gizzard_version",
        reason,
    };
    let version = version.ok_or_else(|| corrupt("the row with id 1 is missing".into()))?;
    u64::try_from(version).map_err(|_| corrupt(format!("version {version} is negative")))
}

type ShardRow = (String, String, String, i64);
type LinkRow = (String, String, String, String, i64);
type ForwardingRow = (i32, i64, String, String);
type HostRow = (String, String, i64, i64);

/// The nameserver tables as read, before their values are checked.
struct Rows {
    version: Option<i64>,
    shards: Vec<ShardRow>,
    links: Vec<LinkRow>,
    forwardings: Vec<ForwardingRow>,
    hosts: Vec<HostRow>,
    /// Retired leaves whose tables are not fenced yet; filled only inside a batch.
    unfenced: Vec<(String, String)>,
}

impl Rows {
    fn into_topology(self) -> Result<Topology, NameServerError> {
        fn id(
            table: &'static str,
            host: String,
            prefix: String,
        ) -> Result<ShardId, NameServerError> {
            ShardId::new(host, prefix).map_err(|e| NameServerError::Corrupt {
                table,
                reason: e.to_string(),
            })
        }
        fn weight(table: &'static str, value: i64) -> Result<u32, NameServerError> {
            u32::try_from(value).map_err(|_| NameServerError::Corrupt {
                table,
                reason: format!("weight {value} is not in 0..=4294967295"),
            })
        }
        let mut topology = Topology {
            version: to_version(self.version)?,
            ..Topology::default()
        };
        for (host, prefix, class_name, busy) in self.shards {
            let id = id("gizzard_shards", host, prefix)?;
            topology.shards.insert(
                id.clone(),
                ShardInfo {
                    id,
                    class_name,
                    busy: busy != 0,
                },
            );
        }
        for (up_host, up_prefix, down_host, down_prefix, w) in self.links {
            let up = id("gizzard_links", up_host, up_prefix)?;
            let down = id("gizzard_links", down_host, down_prefix)?;
            topology
                .links
                .insert((up, down), weight("gizzard_links", w)?);
        }
        for (table_id, base_id, host, prefix) in self.forwardings {
            let root = id("gizzard_forwardings", host, prefix)?;
            topology.forwardings.insert((table_id, base_id), root);
        }
        for (name, url, read, write) in self.hosts {
            let host = Host {
                name: name.clone(),
                url,
                read_weight: weight("gizzard_hosts", read)?,
                write_weight: weight("gizzard_hosts", write)?,
            };
            topology.hosts.insert(name, host);
        }
        Ok(topology)
    }
}

/// Applies `changes` to the loaded topology and validates the result. Returns the new version
/// and the writes that take the tables there.
fn plan(
    rows: Rows,
    changes: &[Change],
    types: &ShardTypes,
) -> Result<(u64, Writes), NameServerError> {
    let unfenced: BTreeSet<(String, String)> = rows.unfenced.iter().cloned().collect();
    let mut topology = rows.into_topology()?;
    let mut before = Before::default();
    for (index, change) in changes.iter().enumerate() {
        before.record(&topology, change);
        if let Change::CreateShard(info) = change
            && unfenced.contains(&(info.id.hostname.clone(), info.id.table_prefix.clone()))
        {
            let reason = retired::still_retiring(&info.id);
            return Err(NameServerError::Rejected { index, reason });
        }
        if let Change::SetHost(host) = change {
            repoints(&topology, host)
                .map_err(|reason| NameServerError::Rejected { index, reason })?;
        }
        topology
            .apply(change)
            .map_err(|reason| NameServerError::Rejected { index, reason })?;
    }
    validate(&topology, types).map_err(NameServerError::Invalid)?;
    let version = topology.version + 1;
    let version_param = i64::try_from(version).map_err(|_| NameServerError::Corrupt {
        table: "gizzard_version",
        reason: format!("version {version} overflows"),
    })?;
    let retiring = before.retired_leaves(&topology, types, version_param);
    let mut writes = before.writes(&topology);
    writes.version = version_param;
    writes.retired = retiring;
    Ok((version, writes))
}

/// Refuses a `SetHost` that moves a host holding shards to another url: their reads and writes
/// would go to tables that may not be there (`RepointHost` is the deliberate form).
fn repoints(topology: &Topology, host: &Host) -> Result<(), TopologyError> {
    let Some(old) = topology.hosts.get(&host.name) else {
        return Ok(());
    };
    if old.url == host.url {
        return Ok(());
    }
    let shards = topology
        .shards
        .keys()
        .filter(|id| id.hostname == host.name)
        .count();
    if shards == 0 {
        return Ok(());
    }
    Err(TopologyError::HostHoldsShards {
        name: host.name.clone(),
        shards,
    })
}

/// The value each key a batch touched had before the batch (`None`: absent).
#[derive(Default)]
struct Before {
    shards: BTreeMap<ShardId, Option<ShardInfo>>,
    links: BTreeMap<(ShardId, ShardId), Option<u32>>,
    forwardings: BTreeMap<(i32, i64), Option<ShardId>>,
    hosts: BTreeMap<String, Option<Host>>,
}

impl Before {
    /// Returns the `gizzard_retired` rows of the physical leaves the batch deleted.
    fn retired_leaves(
        &self,
        after: &Topology,
        types: &ShardTypes,
        version: i64,
    ) -> Vec<Vec<Param>> {
        self.shards
            .iter()
            .filter_map(|(id, old)| old.as_ref().map(|info| (id, info)))
            .filter(|(id, info)| {
                id.hostname != VIRTUAL_HOST
                    && types.is_leaf(&info.class_name)
                    && !after.shards.contains_key(id)
            })
            .map(|(id, info)| {
                vec![
                    Param::from(&id.hostname),
                    Param::from(&id.table_prefix),
                    Param::Int(version),
                    Param::from(&info.class_name),
                ]
            })
            .collect()
    }

    /// Remembers the current value of the key `change` touches, unless an earlier change of
    /// the batch touched it first.
    fn record(&mut self, t: &Topology, change: &Change) {
        match change {
            Change::CreateShard(ShardInfo { id, .. })
            | Change::DeleteShard(id)
            | Change::SetBusy { id, .. } => {
                self.shards
                    .entry(id.clone())
                    .or_insert_with(|| t.shards.get(id).cloned());
            }
            Change::AddLink(super::model::Link { up, down, .. })
            | Change::RemoveLink { up, down } => {
                let key = (up.clone(), down.clone());
                let old = t.links.get(&key).copied();
                self.links.entry(key).or_insert(old);
            }
            Change::SetForwarding(super::model::Forwarding {
                table_id, base_id, ..
            })
            | Change::RemoveForwarding { table_id, base_id } => {
                let key = (*table_id, *base_id);
                self.forwardings
                    .entry(key)
                    .or_insert_with(|| t.forwardings.get(&key).cloned());
            }
            Change::SetHost(Host { name, .. })
            | Change::RepointHost(Host { name, .. })
            | Change::RemoveHost(name) => {
                self.hosts
                    .entry(name.clone())
                    .or_insert_with(|| t.hosts.get(name).cloned());
            }
        }
    }

    /// Returns the rows to upsert and delete to go from the old values to `after`'s.
    fn writes(self, after: &Topology) -> Writes {
        fn diff<K: Ord, V: PartialEq>(
            before: BTreeMap<K, Option<V>>,
            after: impl Fn(&K) -> Option<V>,
            upsert: impl Fn(&K, V) -> Vec<Param>,
            key: impl Fn(&K) -> Vec<Param>,
        ) -> TableWrites {
            let mut writes = TableWrites::default();
            for (k, old) in before {
                match (old, after(&k)) {
                    (old, Some(new)) if old.as_ref() != Some(&new) => {
                        writes.upserts.push(upsert(&k, new))
                    }
                    (Some(_), None) => writes.deletes.push(key(&k)),
                    _ => {}
                }
            }
            writes
        }
        let id = |id: &ShardId| [Param::from(&id.hostname), Param::from(&id.table_prefix)];
        let shards = diff(
            self.shards,
            |k| after.shards.get(k).cloned(),
            |k, info| {
                let mut row = id(k).to_vec();
                row.extend([
                    Param::from(&info.class_name),
                    Param::Int(i64::from(info.busy)),
                ]);
                row
            },
            |k| id(k).to_vec(),
        );
        let link_key = |(up, down): &(ShardId, ShardId)| {
            id(up).into_iter().chain(id(down)).collect::<Vec<_>>()
        };
        let links = diff(
            self.links,
            |k| after.links.get(k).copied(),
            |k, weight| {
                let mut row = link_key(k);
                row.push(Param::Int(i64::from(weight)));
                row
            },
            link_key,
        );
        let forwardings = diff(
            self.forwardings,
            |k| after.forwardings.get(k).cloned(),
            |&(table_id, base_id), root| {
                let mut row = vec![Param::Int(i64::from(table_id)), Param::Int(base_id)];
                row.extend(id(&root));
                row
            },
            |&(table_id, base_id)| vec![Param::Int(i64::from(table_id)), Param::Int(base_id)],
        );
        let hosts = diff(
            self.hosts,
            |k| after.hosts.get(k).cloned(),
            |_, host| {
                vec![
                    Param::from(&host.name),
                    Param::from(&host.url),
                    Param::Int(i64::from(host.read_weight)),
                    Param::Int(i64::from(host.write_weight)),
                ]
            },
            |name| vec![Param::from(name)],
        );
        Writes {
            shards,
            links,
            forwardings,
            hosts,
            retired: Vec::new(),
            version: 0,
        }
    }
}

#[derive(Default)]
struct TableWrites {
    /// Full rows, in the table's column order.
    upserts: Vec<Vec<Param>>,
    /// Key columns only.
    deletes: Vec<Vec<Param>>,
}

/// Everything a batch writes.
struct Writes {
    shards: TableWrites,
    links: TableWrites,
    forwardings: TableWrites,
    hosts: TableWrites,
    /// Rows of `gizzard_retired`, one per deleted leaf.
    retired: Vec<Vec<Param>>,
    version: i64,
}

/// A table's name and columns; the first `keys` columns are its primary key.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    keys: usize,
}

const SHARDS: Table = Table {
    name: "gizzard_shards",
    columns: &["hostname", "table_prefix", "class_name", "busy"],
    keys: 2,
};
const LINKS: Table = Table {
    name: "gizzard_links",
    columns: &[
        "up_hostname",
        "up_table_prefix",
        "down_hostname",
        "down_table_prefix",
        "weight",
    ],
    keys: 4,
};
const FORWARDINGS: Table = Table {
    name: "gizzard_forwardings",
    columns: &["table_id", "base_id", "hostname", "table_prefix"],
    keys: 2,
};
const HOSTS: Table = Table {
    name: "gizzard_hosts",
    columns: &["name", "url", "read_weight", "write_weight"],
    keys: 1,
};

/// One statement of a batch, with `?` placeholders for `params`.
struct Statement {
    sql: String,
    params: Vec<Param>,
}

impl Writes {
    /// Returns the statements of the batch: multi-row deletes and upserts, then the counter.
    fn statements(self, backend: &dyn NameServerBackend) -> Vec<Statement> {
        let mut statements = Vec::new();
        for (table, writes) in [
            (&SHARDS, self.shards),
            (&LINKS, self.links),
            (&FORWARDINGS, self.forwardings),
            (&HOSTS, self.hosts),
        ] {
            for chunk in writes.deletes.chunks(ROWS_PER_STATEMENT) {
                statements.push(delete(table, chunk));
            }
            for chunk in writes.upserts.chunks(ROWS_PER_STATEMENT) {
                statements.push(upsert(table, chunk, backend));
            }
        }
        statements.extend(self.retired.into_iter().map(|params| Statement {
            sql: retired::INSERT.into(),
            params,
        }));
        statements.push(Statement {
            sql: "UPDATE gizzard_version SET version = ? WHERE id = 1".into(),
            params: vec![Param::Int(self.version)],
        });
        statements
    }
}

/// `DELETE FROM t WHERE (k1 = ? AND k2 = ?) OR ...`: both databases use the primary key for
/// each term.
fn delete(table: &Table, keys: &[Vec<Param>]) -> Statement {
    let term = table.columns[..table.keys]
        .iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let terms = vec![format!("({term})"); keys.len()].join(" OR ");
    Statement {
        sql: format!("DELETE FROM {} WHERE {terms}", table.name),
        params: keys.iter().flatten().cloned().collect(),
    }
}

/// `INSERT INTO t (...) VALUES (...), (...)` replacing the non-key columns of existing rows.
fn upsert(table: &Table, rows: &[Vec<Param>], backend: &dyn NameServerBackend) -> Statement {
    let columns = table.columns.join(", ");
    let row = format!("({})", vec!["?"; table.columns.len()].join(", "));
    let values = vec![row; rows.len()].join(", ");
    let conflict = backend.upsert_clause(table);
    Statement {
        sql: format!(
            "INSERT INTO {} ({columns}) VALUES {values} {conflict}",
            table.name
        ),
        params: rows.iter().flatten().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nameserver::model::{Forwarding, Link};

    fn id(s: &str) -> ShardId {
        s.parse().expect("valid shard id")
    }

    async fn open(dir: &tempfile::TempDir) -> NameServer {
        let url = format!("sqlite://{}", dir.path().join("ns.db").display());
        let db = Database::open(&url, Duration::from_secs(30))
            .await
            .expect("open sqlite");
        NameServer::open(db).await.expect("create tables")
    }

    async fn count(ns: &NameServer, table: &'static str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        ns.db
            .sqlite(move |c| c.query_row(&sql, [], |r| r.get(0)))
            .await
            .expect("count")
    }

    #[test]
    fn statements_are_multi_row() {
        let rows = vec![
            vec![
                Param::Int(1),
                Param::Int(2),
                Param::from("h"),
                Param::from("t")
            ];
            3
        ];
        let s = upsert(&FORWARDINGS, &rows, &sqlite::Sqlite);
        assert_eq!(
            s.sql,
            "INSERT INTO gizzard_forwardings (table_id, base_id, hostname, table_prefix) VALUES \
             (?, ?, ?, ?), (?, ?, ?, ?), (?, ?, ?, ?) ON CONFLICT (table_id, base_id) DO UPDATE \
             SET hostname = excluded.hostname, table_prefix = excluded.table_prefix"
        );
        assert_eq!(s.params.len(), 12);
        let m = upsert(&HOSTS, &[vec![Param::from("h"); 4]], &mysql::Mysql);
        assert!(m.sql.ends_with(
            "ON DUPLICATE KEY UPDATE url = VALUES(url), \
            read_weight = VALUES(read_weight), write_weight = VALUES(write_weight)"
        ));
        let d = delete(
            &SHARDS,
            &[vec![Param::from("a"); 2], vec![Param::from("b"); 2]],
        );
        assert_eq!(
            d.sql,
            "DELETE FROM gizzard_shards WHERE (hostname = ? AND table_prefix = ?) \
             OR (hostname = ? AND table_prefix = ?)"
        );
    }

    /// 100,000 forwardings go in as one batch, and a later small batch stays small: it writes
    /// only its own rows, whatever the table's size.
    #[tokio::test]
    async fn large_tables_take_small_batches_quickly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = open(&dir).await;
        let types = ShardTypes::new(["TweetShard"]);
        let root = id("localhost/r");
        let mut changes = vec![
            Change::SetHost(Host {
                name: "h1".into(),
                url: "sqlite:///tmp/x".into(),
                read_weight: 1,
                write_weight: 1,
            }),
            Change::CreateShard(ShardInfo {
                id: root.clone(),
                class_name: "ReplicatingShard".into(),
                busy: false,
            }),
            Change::CreateShard(ShardInfo {
                id: id("h1/t"),
                class_name: "TweetShard".into(),
                busy: false,
            }),
            Change::AddLink(Link {
                up: root.clone(),
                down: id("h1/t"),
                weight: 1,
            }),
        ];
        changes.extend((0..100_000i64).map(|i| {
            Change::SetForwarding(Forwarding {
                table_id: 1,
                base_id: i << 40,
                shard_id: root.clone(),
            })
        }));
        let started = std::time::Instant::now();
        assert_eq!(ns.apply(&changes, &types).await.expect("big batch"), 1);
        let big = started.elapsed();
        assert_eq!(count(&ns, "gizzard_forwardings").await, 100_000);

        let started = std::time::Instant::now();
        let small = [
            Change::RemoveForwarding {
                table_id: 1,
                base_id: 5 << 40,
            },
            Change::SetBusy {
                id: id("h1/t"),
                busy: true,
            },
        ];
        assert_eq!(ns.apply(&small, &types).await.expect("small batch"), 2);
        let small_took = started.elapsed();
        let loaded = ns.load().await.expect("load");
        assert_eq!(loaded.forwardings.len(), 99_999);
        assert!(loaded.shards[&id("h1/t")].busy);
        eprintln!("100,000 forwardings: batch {big:?}, later 2-change batch {small_took:?}");
        // Loading and validating 100,000 rows is the floor; rewriting them would be far slower.
        assert!(
            small_took < Duration::from_secs(3),
            "small batch took {small_took:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_that_undoes_itself_writes_no_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = open(&dir).await;
        let host = Host {
            name: "h".into(),
            url: "sqlite:///x".into(),
            read_weight: 1,
            write_weight: 1,
        };
        let changes = [Change::SetHost(host), Change::RemoveHost("h".into())];
        let types = ShardTypes::default();
        assert_eq!(ns.apply(&changes, &types).await.expect("batch"), 1);
        assert_eq!(count(&ns, "gizzard_hosts").await, 0);
        assert_eq!(ns.version().await.expect("version"), 1);
        assert_eq!(ns.apply(&[], &types).await.expect("empty batch"), 1);
    }
}
