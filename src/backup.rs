//! Backups of the embedded SQLite store. `convene backup` makes an online copy (`VACUUM INTO`:
//! one consistent snapshot, taken in a read transaction, so nodes keep serving and writing
//! meanwhile); `convene restore` checks a copy and puts it in place of a stopped node's
//! database, keeping the database it replaces beside it. A serving node holds a lock on its
//! data directory, so a restore under it is refused. (PostgreSQL is backed up with `pg_dump`.)

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::Context;
use fs4::fs_std::FileExt;
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

/// The lock file a serving node holds in its data directory.
pub const LOCK: &str = "convene.lock";

/// A data directory held by this process: no other `convene serve` or `convene restore` can
/// take it until this is dropped (or the process ends, however it ends).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock of `dir`, creating the directory if needed.
    pub fn acquire(dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock_exclusive() {
            Ok(true) => Ok(Self { _file: file }),
            Ok(false) => anyhow::bail!(
                "a node is serving from {} (its lock {} is held); stop it first",
                dir.display(),
                path.display()
            ),
            Err(e) => Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
}

async fn open(db: &Path, read_only: bool) -> anyhow::Result<SqliteConnection> {
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(db)
        .read_only(read_only);
    SqliteConnection::connect_with(&options)
        .await
        .with_context(|| format!("opening {}", db.display()))
}

/// Copies the database `db` to `out` (which must not exist) while it may be in use; the size
/// of the copy in bytes.
pub async fn backup(db: &Path, out: &Path) -> anyhow::Result<u64> {
    anyhow::ensure!(db.exists(), "there is no database at {}", db.display());
    anyhow::ensure!(
        !out.exists(),
        "{} exists already; name a new file",
        out.display()
    );
    let target = out
        .to_str()
        .with_context(|| format!("{} is not a UTF-8 path", out.display()))?;
    let mut conn = open(db, true).await?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await
        .with_context(|| format!("copying {} to {}", db.display(), out.display()))?;
    conn.close().await?;
    Ok(fs::metadata(out)?.len())
}

/// Checks that `copy` is a whole Convene database: SQLite's integrity check passes and it
/// holds this program's migrations, none it does not know.
async fn check(copy: &Path) -> anyhow::Result<()> {
    let mut conn = open(copy, true).await?;
    let (verdict,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .with_context(|| format!("{} is not an SQLite database", copy.display()))?;
    anyhow::ensure!(
        verdict == "ok",
        "{} fails SQLite's integrity check: {verdict}",
        copy.display()
    );
    let applied: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut conn)
        .await
        .with_context(|| format!("{} is not a Convene database", copy.display()))?;
    let known: Vec<i64> = sqlx::migrate!("./schema/sqlite")
        .iter()
        .map(|m| m.version)
        .collect();
    if let Some((newer,)) = applied.iter().find(|(v,)| !known.contains(v)) {
        anyhow::bail!(
            "{} was written by a newer Convene (migration {newer}); restore it with that version",
            copy.display()
        );
    }
    conn.close().await?;
    Ok(())
}

/// Puts the copy `from` in place of the database `db` of the node whose data directory is
/// `dir`, which must not be serving. The database it replaces (with its journal files) is kept
/// beside it as `<name>.replaced-<unix seconds>`; the search index is removed, to be built
/// again from the restored tables when the node starts. The path of the kept database, if
/// there was one.
pub async fn restore(from: &Path, db: &Path, dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let _lock = DataDirLock::acquire(dir)?;
    check(from).await?;
    let incoming = PathBuf::from(format!("{}.restoring", db.display()));
    fs::copy(from, &incoming)
        .with_context(|| format!("copying {} into {}", from.display(), dir.display()))?;
    File::open(&incoming)?.sync_all()?;
    let mut kept = None;
    if db.exists() {
        let aside = PathBuf::from(format!(
            "{}.replaced-{}",
            db.display(),
            chrono::Utc::now().timestamp()
        ));
        fs::rename(db, &aside)?;
        for journal in ["-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{journal}", db.display()));
            if from.exists() {
                let to = PathBuf::from(format!("{}{journal}", aside.display()));
                fs::rename(&from, &to)?;
            }
        }
        kept = Some(aside);
    }
    fs::rename(&incoming, db)?;
    if let Some(parent) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)?.sync_all()?;
    }
    let index = dir.join("index");
    if index.exists() {
        fs::remove_dir_all(&index).with_context(|| format!("removing {}", index.display()))?;
    }
    Ok(kept)
}
