//! Event search: a tantivy index per node under `data_dir/index`, its schema and version, the
//! changes applied to it (each commit records the outbox position it reflects), and the queries
//! it answers (`search::query`). `search::indexer` keeps it following the outbox.

pub mod indexer;
pub mod query;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Context;
use convene_actors::model::{Event, EventView};
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::store::Position;

/// Bumped whenever the fields or their analysis change: an index of another version is rebuilt.
pub const SCHEMA_VERSION: u32 = 1;
/// The file beside the index that records its schema version.
const VERSION_FILE: &str = "convene-index.json";
/// The writer's memory budget (tantivy needs at least 15 MB per thread; one thread indexes).
const WRITER_HEAP: usize = 48 << 20;

/// The index's fields.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// The event's id: the key updates and deletions go by.
    pub id: Field,
    /// The title, English-stemmed; stored for highlights.
    pub title: Field,
    /// The description, English-stemmed; stored for highlights.
    pub description: Field,
    /// The tags as text, English-stemmed, for free-text queries.
    pub tags_text: Field,
    /// Title, description and tags lowercased but not stemmed: where typos are forgiven.
    pub words: Field,
    /// The category, as a keyword.
    pub category: Field,
    /// The tags, as keywords.
    pub tags: Field,
    /// The event's date.
    pub date: Field,
    /// The price in cents, 0 when free.
    pub price: Field,
    /// The venue's coordinates, when known.
    pub lat: Field,
    /// See `lat`.
    pub lon: Field,
    /// The event as the API shows it, as JSON.
    pub doc: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let stemmed = |stored: bool| {
        let options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        if stored {
            options.set_stored()
        } else {
            options
        }
    };
    let fields = Fields {
        id: b.add_i64_field("id", INDEXED | FAST | STORED),
        title: b.add_text_field("title", stemmed(true)),
        description: b.add_text_field("description", stemmed(true)),
        tags_text: b.add_text_field("tags_text", stemmed(false)),
        words: b.add_text_field(
            "words",
            TextOptions::default().set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("default")
                    .set_index_option(IndexRecordOption::Basic),
            ),
        ),
        category: b.add_text_field("category", STRING | FAST),
        tags: b.add_text_field("tags", STRING | FAST),
        date: b.add_date_field("date", FAST),
        price: b.add_i64_field("price", FAST),
        lat: b.add_f64_field("lat", FAST),
        lon: b.add_f64_field("lon", FAST),
        doc: b.add_text_field("doc", STORED),
    };
    (b.build(), fields)
}

/// What the file beside the index says.
#[derive(Debug, Serialize, Deserialize)]
struct VersionFile {
    schema_version: u32,
}

/// One change to the index.
#[derive(Debug, Clone)]
pub enum Change {
    /// The event as it now is (it replaces any earlier version).
    Upsert(Box<Event>),
    /// The event is gone.
    Remove(i64),
}

/// The search index of this node. Cheap to share behind an `Arc`; writes come from one
/// indexer at a time.
pub struct SearchIndex {
    index: Index,
    reader: IndexReader,
    /// `None` once closed.
    writer: Mutex<Option<IndexWriter>>,
    fields: Fields,
    dir: PathBuf,
    /// False while the index is being rebuilt: searches are refused meanwhile.
    ready: AtomicBool,
    /// Events indexed so far by the running rebuild.
    rebuilt: AtomicU64,
    /// The outbox position searches see (the reader's last reload).
    searched: Mutex<Option<Position>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("dir", &self.dir)
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, or creates an empty one there when it is missing or of another
    /// schema version; an index created here is not ready until [`SearchIndex::rebuild`] ran.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let (schema, fields) = schema();
        let version_path = dir.join(VERSION_FILE);
        let current = std::fs::read(&version_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<VersionFile>(&b).ok())
            .is_some_and(|v| v.schema_version == SCHEMA_VERSION);
        let index = match current.then(|| Index::open_in_dir(dir)) {
            Some(Ok(index)) => Some(index),
            Some(Err(e)) => {
                tracing::warn!(error = %e, dir = %dir.display(), "the search index is unreadable; rebuilding it");
                None
            }
            None => None,
        };
        let (index, ready) = match index {
            Some(index) => (index, true),
            None => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let index = Index::create_in_dir(dir, schema)?;
                (index, false)
            }
        };
        let writer = index
            .writer_with_num_threads(1, WRITER_HEAP)
            .with_context(|| {
                format!(
                    "opening the search index writer in {} (is another process using it?)",
                    dir.display()
                )
            })?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        Ok(Self {
            index,
            reader,
            writer: Mutex::new(Some(writer)),
            fields,
            dir: dir.to_owned(),
            ready: AtomicBool::new(ready),
            rebuilt: AtomicU64::new(0),
            searched: Mutex::new(None),
        })
        .inspect(|i| {
            if ready {
                i.set_searched(i.position().ok().flatten());
            }
        })
    }

    fn set_searched(&self, at: Option<Position>) {
        *self.searched.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    /// The outbox position searches answered now reflect at least; `None` while unknown.
    pub fn searched(&self) -> Option<Position> {
        *self.searched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether searches can be answered (false while rebuilding).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Events indexed so far by a rebuild that is running.
    pub fn rebuilt(&self) -> u64 {
        self.rebuilt.load(Ordering::Relaxed)
    }

    /// The outbox position the last commit reflects; `None` for an index never committed.
    pub fn position(&self) -> anyhow::Result<Option<Position>> {
        let payload = self.index.load_metas()?.payload;
        Ok(payload.and_then(|p| {
            serde_json::from_str::<StoredPosition>(&p)
                .ok()
                .map(Into::into)
        }))
    }

    /// How many events the index holds.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index holds no event.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `changes` and commits them as reflecting the outbox up to `at`; searches see
    /// them when this returns. Blocking: call it off the async threads.
    pub fn apply(&self, changes: &[Change], at: Position) -> anyhow::Result<()> {
        let mut guard = self.writer()?;
        let writer = guard.as_mut().ok_or_else(closed)?;
        for change in changes {
            match change {
                Change::Upsert(event) => {
                    writer.delete_term(Term::from_field_i64(self.fields.id, event.id));
                    if event.deleted_at.is_none() {
                        writer.add_document(self.document(event))?;
                    }
                }
                Change::Remove(id) => {
                    writer.delete_term(Term::from_field_i64(self.fields.id, *id));
                }
            }
        }
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&serde_json::to_string(&StoredPosition::from(at))?);
        commit.commit()?;
        drop(guard);
        self.reader.reload()?;
        self.set_searched(Some(at));
        Ok(())
    }

    fn writer(&self) -> anyhow::Result<std::sync::MutexGuard<'_, Option<IndexWriter>>> {
        self.writer
            .lock()
            .map_err(|_| anyhow::anyhow!("the search index writer panicked"))
    }

    /// Lets merges finish and gives the writer's lock up, so another process can write the
    /// index; later changes are refused. Blocking.
    pub fn close(&self) -> anyhow::Result<()> {
        if let Some(writer) = self.writer()?.take() {
            writer.wait_merging_threads()?;
        }
        Ok(())
    }

    /// Empties the index and fills it with `events` pages from `pages`, then records `at` and
    /// the schema version: the index then reflects the outbox up to `at`. `pages` yields
    /// batches until it returns an empty one. Blocking.
    pub fn rebuild(
        &self,
        at: Position,
        mut pages: impl FnMut() -> anyhow::Result<Vec<Event>>,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        self.ready.store(false, Ordering::Release);
        self.rebuilt.store(0, Ordering::Relaxed);
        let _ = std::fs::remove_file(self.dir.join(VERSION_FILE));
        let mut guard = self.writer()?;
        let writer = guard.as_mut().ok_or_else(closed)?;
        writer.delete_all_documents()?;
        let mut n = 0u64;
        loop {
            let page = pages()?;
            if page.is_empty() {
                break;
            }
            for event in page.iter().filter(|e| e.deleted_at.is_none()) {
                writer.add_document(self.document(event))?;
                n += 1;
            }
            self.rebuilt.store(n, Ordering::Relaxed);
            progress(n);
        }
        let mut commit = writer.prepare_commit()?;
        commit.set_payload(&serde_json::to_string(&StoredPosition::from(at))?);
        commit.commit()?;
        drop(guard);
        self.reader.reload()?;
        self.set_searched(Some(at));
        std::fs::write(
            self.dir.join(VERSION_FILE),
            serde_json::to_vec(&VersionFile {
                schema_version: SCHEMA_VERSION,
            })?,
        )?;
        self.ready.store(true, Ordering::Release);
        Ok(n)
    }

    fn document(&self, event: &Event) -> TantivyDocument {
        let f = &self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_i64(f.id, event.id);
        doc.add_text(f.title, &event.title);
        doc.add_text(f.description, &event.description);
        doc.add_text(f.words, &event.title);
        doc.add_text(f.words, &event.description);
        for tag in &event.tags {
            doc.add_text(f.tags_text, tag);
            doc.add_text(f.words, tag);
            doc.add_text(f.tags, tag);
        }
        doc.add_text(f.category, event.category.as_str());
        doc.add_date(
            f.date,
            tantivy::DateTime::from_timestamp_micros(event.date.timestamp_micros()),
        );
        doc.add_i64(f.price, event.price_cents.unwrap_or(0));
        if let (Some(lat), Some(lon)) = (event.latitude, event.longitude) {
            doc.add_f64(f.lat, lat);
            doc.add_f64(f.lon, lon);
        }
        let view = EventView::from(event.clone());
        doc.add_text(f.doc, serde_json::to_string(&view).unwrap_or_default());
        doc
    }
}

fn closed() -> anyhow::Error {
    anyhow::anyhow!("the search index is closed")
}

/// A position as the commit payload holds it.
#[derive(Serialize, Deserialize)]
struct StoredPosition {
    xid: i64,
    id: i64,
}

impl From<Position> for StoredPosition {
    fn from(p: Position) -> Self {
        Self {
            xid: p.xid,
            id: p.id,
        }
    }
}

impl From<StoredPosition> for Position {
    fn from(p: StoredPosition) -> Self {
        Self {
            xid: p.xid,
            id: p.id,
        }
    }
}
