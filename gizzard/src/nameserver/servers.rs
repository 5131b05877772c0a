//! The server registry (`gizzard_servers`): every server that routes writes confirms, about
//! once a poll interval, the topology version it routes with. A confirmation is valid for the
//! server's routing lease, judged by the nameserver database's clock, and is what lets a
//! migration move on without sleeping and hoping.
//!
//! A confirmation of version `V` says: `V` is the nameserver's current version, this server
//! routes new writes with it, and no write routed with an older version is still in flight
//! here. It is one statement that takes a shared lock on the version row, so it is ordered
//! against every topology change (which locks that row for update): a server that loaded an
//! older topology cannot confirm it after a change landed, it must reload first.
//!
//! A step that needs every server on version `V` waits until each registered server has
//! confirmed `V` or later, or has let its lease lapse by more than [`LEASE_MARGIN`] on the
//! database's clock. A server stops acknowledging writes when its own lease lapses, counted
//! from before it sent the confirmation, so its lease always ends first.

use std::time::Duration;

use super::store::{NameServer, NameServerError};
use crate::db::{Database, DbError, Param};

/// How long past a server's lease a step still waits for it: covers the difference in clock
/// rates between the server and the database over one lease, with room to spare.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// How long a registration outlives its lease before it is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

pub(super) const MYSQL_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_servers (
    id VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    address VARCHAR(255) NOT NULL,
    version BIGINT NOT NULL,
    confirmed_ms BIGINT NOT NULL,
    lease_ms BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

pub(super) const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS gizzard_servers (
    id TEXT NOT NULL PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    version INTEGER NOT NULL,
    confirmed_ms INTEGER NOT NULL,
    lease_ms INTEGER NOT NULL
);";

const SELECT_SERVERS: &str = "SELECT id, name, address, version, confirmed_ms, lease_ms FROM \
                              gizzard_servers ORDER BY name, id";

/// Who a server is, as the registry lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerIdentity {
    /// Unique per process, so two servers given one name never share a registration.
    pub id: String,
    /// The operator's name for it.
    pub name: String,
    /// Where its ShardManager answers (`gizzmo ping` calls it there).
    pub address: String,
}

impl ServerIdentity {
    /// Returns an identity for a new process named `name` serving the ShardManager at
    /// `address`, with a random id.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            id: format!("{name}-{:08x}", rand::random::<u32>()),
            name,
            address: address.into(),
        }
    }
}

/// A registered server, with the database's clock when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    /// The latest version it confirmed.
    pub version: u64,
    /// When it confirmed it, on the database's clock.
    pub confirmed_ms: i64,
    pub lease_ms: i64,
    /// The database's clock at the read.
    pub now_ms: i64,
}

impl ServerRecord {
    /// How long ago it last confirmed its routing.
    pub fn confirmed_age(&self) -> Duration {
        Duration::from_millis(self.now_ms.saturating_sub(self.confirmed_ms).max(0) as u64)
    }

    /// Whether its lease is over, margin included: it acknowledges no write now, whatever
    /// version it holds.
    pub fn is_stale(&self) -> bool {
        self.now_ms > self.confirmed_ms + self.lease_ms + LEASE_MARGIN.as_millis() as i64
    }

    /// How long until [`ServerRecord::is_stale`] holds.
    pub fn stale_in(&self) -> Duration {
        let end = self.confirmed_ms + self.lease_ms + LEASE_MARGIN.as_millis() as i64;
        Duration::from_millis(end.saturating_sub(self.now_ms).max(0) as u64)
    }
}

/// Returns the servers a step that needs every server on `version` still waits for: those
/// with an older confirmed version whose lease is not provably over.
pub fn waiting_for(servers: &[ServerRecord], version: u64) -> Vec<&ServerRecord> {
    servers
        .iter()
        .filter(|s| s.version < version && !s.is_stale())
        .collect()
}

/// What a confirmation found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// The version is current and the server's registration says so.
    Confirmed,
    /// The nameserver holds this newer version; nothing was recorded.
    Moved(u64),
}

impl NameServer {
    /// Records that `server` routes with `version` under a lease of `lease`, if `version` is
    /// still the nameserver's; otherwise returns the version to reload.
    ///
    /// One statement, committed on its own: it reads the version row with a shared lock, so
    /// it is ordered against every batch of changes (which locks that row for update), and a
    /// server cut off mid-call cannot leave a transaction holding that lock behind.
    pub async fn confirm(
        &self,
        server: &ServerIdentity,
        version: u64,
        lease: Duration,
    ) -> Result<Confirmation, NameServerError> {
        let db = self.database();
        let (lock, upsert) = match db {
            Database::Mysql { .. } => (
                "LOCK IN SHARE MODE",
                "ON DUPLICATE KEY UPDATE name = VALUES(name), address = VALUES(address), \
                 version = VALUES(version), confirmed_ms = VALUES(confirmed_ms), \
                 lease_ms = VALUES(lease_ms)",
            ),
            // SQLite has one writer at a time: the statement is ordered against batches.
            Database::Sqlite { .. } => (
                "",
                "ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
                 address = excluded.address, version = excluded.version, \
                 confirmed_ms = excluded.confirmed_ms, lease_ms = excluded.lease_ms",
            ),
        };
        let sql = format!(
            "INSERT INTO gizzard_servers (id, name, address, version, confirmed_ms, lease_ms) \
             SELECT ?, ?, ?, version, {}, ? FROM gizzard_version WHERE id = 1 AND version = ? \
             {lock} {upsert}",
            db.now_ms_sql()
        );
        let params = vec![
            Param::from(&server.id),
            Param::from(&server.name),
            Param::from(&server.address),
            Param::Int(lease.as_millis() as i64),
            Param::Int(version as i64),
        ];
        if db.execute(sql, params).await? > 0 {
            return Ok(Confirmation::Confirmed);
        }
        Ok(Confirmation::Moved(self.version().await?))
    }

    /// Returns every registered server, with the database's clock.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>, NameServerError> {
        type Row = (String, String, String, i64, i64, i64);
        let db = self.database();
        let now_ms = db.now_ms().await?;
        let rows: Vec<Row> = db.query(SELECT_SERVERS, Vec::new()).await?;
        rows.into_iter()
            .map(|(id, name, address, version, confirmed_ms, lease_ms)| {
                let version = u64::try_from(version).map_err(|_| NameServerError::Corrupt {
                    table: "gizzard_servers",
                    reason: format!("server {id} has negative version {version}"),
                })?;
                Ok(ServerRecord {
                    id,
                    name,
                    address,
                    version,
                    confirmed_ms,
                    lease_ms,
                    now_ms,
                })
            })
            .collect()
    }

    /// Forgets the servers whose lease ended over an hour ago (crashed ones; a clean stop
    /// leaves at once). Called when a server registers, so the registry stays small.
    pub async fn forget_lapsed_servers(&self) -> Result<(), NameServerError> {
        let db = self.database();
        let sql = format!(
            "DELETE FROM gizzard_servers WHERE confirmed_ms + lease_ms + ? < {}",
            db.now_ms_sql()
        );
        db.execute(sql, vec![Param::Int(FORGET_AFTER.as_millis() as i64)])
            .await?;
        Ok(())
    }

    /// Removes `id`'s registration: a server that stopped cleanly, whose writes are done, so
    /// that no step waits out its lease.
    pub async fn deregister(&self, id: &str) -> Result<(), NameServerError> {
        self.database()
            .execute(
                "DELETE FROM gizzard_servers WHERE id = ?".into(),
                vec![id.into()],
            )
            .await
            .map_err(|e: DbError| NameServerError::Db(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u64, confirmed_ms: i64, now_ms: i64) -> ServerRecord {
        ServerRecord {
            id: format!("s{version}"),
            name: "s".into(),
            address: "a".into(),
            version,
            confirmed_ms,
            lease_ms: 2_000,
            now_ms,
        }
    }

    #[test]
    fn a_step_waits_for_servers_behind_until_their_lease_and_margin_end() {
        let behind = record(4, 10_000, 12_500);
        let current = record(5, 10_000, 12_500);
        let servers = [behind.clone(), current];
        assert_eq!(waiting_for(&servers, 5), vec![&behind]);
        assert_eq!(behind.stale_in(), Duration::from_millis(500));
        // Lease (2 s) plus margin (1 s) after its confirmation: no longer waited for.
        let lapsed = record(4, 10_000, 13_001);
        assert!(lapsed.is_stale());
        assert!(waiting_for(&[lapsed], 5).is_empty());
        assert!(!record(4, 10_000, 13_000).is_stale());
    }
}
