//! Storage: the dams and the login sessions in one SQLite file.
//!
//! The schema lives in `migrations/` and is applied on open (rusqlite_migration keeps the
//! version in `PRAGMA user_version`), so a new file gets it on first run. The file is opened in
//! WAL mode with a busy timeout: several app processes may share it.
//!
//! rusqlite is synchronous; every call runs on tokio's blocking pool, one at a time per process.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};

use super::dam::{Dam, NewDam};

/// The schema, in order. Never edit a shipped migration: add the next one.
const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_initial.sql")];

/// A few real dams (public facts, rounded) so a fresh inventory is not empty.
const DEMO_DAMS: &[(&str, &str, &str, &str, f64, f64)] = &[
    (
        "Hoover Dam",
        "Bureau of Reclamation",
        "Colorado River",
        "1936-03-01",
        36.016,
        -114.738,
    ),
    (
        "Grand Coulee Dam",
        "Bureau of Reclamation",
        "Columbia River",
        "1942-06-01",
        47.956,
        -118.982,
    ),
    (
        "Glen Canyon Dam",
        "Bureau of Reclamation",
        "Colorado River",
        "1966-09-13",
        36.937,
        -111.485,
    ),
    (
        "Bonneville Dam",
        "U.S. Army Corps of Engineers",
        "Columbia River",
        "1938-06-06",
        45.644,
        -121.941,
    ),
    (
        "Fort Peck Dam",
        "U.S. Army Corps of Engineers",
        "Missouri River",
        "1940-07-01",
        48.000,
        -106.417,
    ),
    (
        "Norris Dam",
        "Tennessee Valley Authority",
        "Clinch River",
        "1936-07-28",
        36.224,
        -84.092,
    ),
    (
        "Shasta Dam",
        "Bureau of Reclamation",
        "Sacramento River",
        "1945-06-01",
        40.719,
        -122.419,
    ),
    (
        "Oroville Dam",
        "State agency",
        "Feather River",
        "1968-05-04",
        39.539,
        -121.485,
    ),
];

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `f` again while SQLite answers "busy" or "locked", for up to [`BUSY_TIMEOUT`].
fn retry_while_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Stores `dam`, added by `added_by` now; its id.
fn insert_dam(c: &Connection, dam: &NewDam, added_by: &str) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO dams (name, owner, river, built_on, latitude, longitude, added_by, added_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            dam.name,
            dam.owner,
            dam.river,
            dam.built,
            dam.latitude,
            dam.longitude,
            added_by,
            now()
        ],
    )?;
    Ok(c.last_insert_rowid())
}

/// Puts the demo dams into a new database (inside the transaction that creates the schema).
fn insert_demo_dams(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    for &(name, owner, river, built, latitude, longitude) in DEMO_DAMS {
        let dam = NewDam {
            name: name.into(),
            owner: owner.into(),
            river: river.into(),
            built: built.into(),
            latitude,
            longitude,
        };
        insert_dam(tx, &dam, "demo data")?;
    }
    Ok(())
}

/// What can go wrong with the database.
#[derive(Debug)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database error: {}", self.0)
    }
}

impl std::error::Error for DbError {}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

/// The result of adding a dam.
#[derive(Debug, PartialEq)]
pub enum Added {
    /// Stored, with this id.
    Stored(i64),
    /// The inventory holds `max` dams already; nothing was stored.
    Full,
    /// A dam with this name (in any case) exists; nothing was stored.
    NameTaken,
}

/// A login session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The cookie value.
    pub id: String,
    /// Who logged in.
    pub username: String,
    /// The token forms must carry (against cross-site request forgery).
    pub csrf_token: String,
}

/// The database handle. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date. A new
    /// database gets the demo dams if `demo_dams`.
    ///
    /// Several processes may open one new file at the same moment (replicas starting together):
    /// exactly one of them creates the schema and the demo dams, in one transaction; the others
    /// wait for it and find the schema made.
    pub fn open(path: &Path, demo_dams: bool) -> Result<Db, DbError> {
        let mut conn = Connection::open(path)
            .map_err(|e| DbError(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // SQLite answers "locked" at once, without the busy handler, while another connection
        // switches a new file to WAL.
        retry_while_busy(|| conn.pragma_update(None, "journal_mode", "WAL"))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Migrations take the write lock when they begin, so two processes run them one after
        // the other, not interleaved.
        conn.set_transaction_behavior(TransactionBehavior::Immediate);
        // The demo dams go in with the schema: whoever creates the schema adds them, once.
        let first = if demo_dams {
            M::up_with_hook(MIGRATIONS[0], |tx: &rusqlite::Transaction<'_>| {
                insert_demo_dams(tx)?;
                Ok(())
            })
        } else {
            M::up(MIGRATIONS[0])
        };
        let migrations = Migrations::new(
            std::iter::once(first)
                .chain(MIGRATIONS[1..].iter().map(|sql| M::up(sql)))
                .collect(),
        );
        // rusqlite_migration reads the schema version before its transaction begins: a process
        // that read it while another was migrating runs a migration already applied, which fails
        // and is rolled back. It then finds the newer version and has nothing (or less) to do.
        let pending = |conn: &Connection| migrations.pending_migrations(conn).ok();
        let mut attempts = 0;
        loop {
            let before = pending(&conn);
            match migrations.to_latest(&mut conn) {
                Ok(()) => break,
                Err(e) => {
                    attempts += 1;
                    let moved = matches!((before, pending(&conn)), (Some(b), Some(a)) if a < b);
                    if attempts >= 3 || !moved {
                        return Err(DbError(format!("migrating {}: {e}", path.display())));
                    }
                }
            }
        }
        conn.set_transaction_behavior(TransactionBehavior::Deferred);
        Ok(Db {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection, on the blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| DbError(format!("database task failed: {e}")))?
    }

    /// Every dam, by name.
    pub async fn dams(&self) -> Result<Vec<Dam>, DbError> {
        self.call(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, owner, river, built_on, latitude, longitude, added_by
                 FROM dams ORDER BY name COLLATE NOCASE",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Dam {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    owner: r.get(2)?,
                    river: r.get(3)?,
                    built: r.get(4)?,
                    latitude: r.get(5)?,
                    longitude: r.get(6)?,
                    added_by: r.get(7)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Adds a dam unless the inventory holds `max` dams or the name is taken. The check and the
    /// insert are one write transaction, so concurrent adds (in this process or another) cannot
    /// both squeeze past the limit.
    pub async fn add_dam(
        &self,
        dam: NewDam,
        added_by: String,
        max: usize,
    ) -> Result<Added, DbError> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n: i64 = tx.query_row("SELECT count(*) FROM dams", [], |r| r.get(0))?;
            if usize::try_from(n).unwrap_or(usize::MAX) >= max {
                return Ok(Added::Full);
            }
            let taken: Option<i64> = tx
                .query_row(
                    "SELECT id FROM dams WHERE name = ?1 COLLATE NOCASE",
                    [&dam.name],
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_some() {
                return Ok(Added::NameTaken);
            }
            let id = insert_dam(&tx, &dam, &added_by)?;
            tx.commit()?;
            Ok(Added::Stored(id))
        })
        .await
    }

    /// Starts a session for `username`, valid for `ttl`. Expired sessions are swept on the way.
    pub async fn create_session(
        &self,
        username: String,
        ttl: Duration,
    ) -> Result<Session, DbError> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
        self.call(move |c| {
            let session = Session {
                id: random_hex(),
                username,
                csrf_token: random_hex(),
            };
            c.execute("DELETE FROM sessions WHERE expires_at <= ?1", [now()])?;
            c.execute(
                "INSERT INTO sessions (id, username, csrf_token, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![session.id, session.username, session.csrf_token, now().saturating_add(ttl)],
            )?;
            Ok(session)
        })
        .await
    }

    /// The live session with this id.
    pub async fn session(&self, id: String) -> Result<Option<Session>, DbError> {
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT id, username, csrf_token FROM sessions WHERE id = ?1 AND expires_at > ?2",
                params![id, now()],
                |r| {
                    Ok(Session {
                        id: r.get(0)?,
                        username: r.get(1)?,
                        csrf_token: r.get(2)?,
                    })
                },
            )
            .optional()?)
        })
        .await
    }

    /// Ends a session.
    pub async fn delete_session(&self, id: String) -> Result<(), DbError> {
        self.call(move |c| {
            c.execute("DELETE FROM sessions WHERE id = ?1", [id])?;
            Ok(())
        })
        .await
    }
}
