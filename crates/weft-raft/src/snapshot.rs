//! A shard's Raft snapshot as a *view* of its state, never a copy kept around: what it is on
//! the wire and on disk, how it is checked, installed and checksummed.
//!
//! The applied state is durable in RocksDB with its applied log id (see
//! [`crate::state_machine`]), so "building" a snapshot only names the applied log id; the data
//! exists only while a follower needs it:
//! - **Sending**: [`ShardSnapshotData::view`] pins a RocksDB snapshot of the shard's key range
//!   (no copy). Only when openraft first reads or seeks the data is the view written, record by
//!   record, to an unlinked spill file under [`snapshot_dir`], which openraft then sends in chunks
//!   of `snapshot_max_chunk_size`. The file vanishes when the data is dropped (and with the
//!   process). A view that is never read (openraft asks for the current snapshot at start, for its
//!   metadata only) costs a parked thread until it is dropped.
//! - **Receiving**: chunks are written to a file `incoming-<shard>-<n>` under [`snapshot_dir`];
//!   dropping an unfinished one deletes it, and a start deletes any a crash left.
//! - **Installing** ([`install_file`]): the received file is read twice. The first pass checks
//!   it whole ([`check_records`]); nothing is written if it fails. The file is then fsynced and
//!   renamed `shard-<shard>.snap`, the state range is replaced in batches of at most
//!   [`INSTALL_BATCH_BYTES`] with the applied log id and membership in the *last* batch, the WAL
//!   is synced, and the `.snap` file is removed. A crash in between leaves a state without an
//!   applied log id beside a complete `.snap` file, and [`crate::state_machine::ShardStateMachine`]
//!   installs it again at start.
//!
//! Memory is bounded by one record plus the buffers, whatever the shard's size; disk by one
//! shard's state per snapshot in flight. Snapshot ids are a function of the shard and applied log
//! id, and the bytes of a snapshot are a function of the state, so two snapshots with one id are
//! byte for byte equal (a retried send may resume a receive).
//!
//! File format (all integers little endian): magic `WEFTSNP1`, shard `u32`; then per record
//! key length `u32` (never 0), value length `u32`, key, value, in strictly ascending key order;
//! then `u32` 0, the record count `u64`, and a CRC-32 (`crc32fast`) of every byte before it.

use std::fs::File;
use std::future::Future;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;
use weft_storage::keys::{self, KeyReader};
use weft_storage::{Db, PinnedStateView, codec};

use crate::state_machine::{applied_log_id_key, membership_key};
use crate::{LogId, ShardApplier, SnapshotMeta, StoredMembership};

const MAGIC: &[u8; 8] = b"WEFTSNP1";
/// Largest key a snapshot record may have (state keys are a few dozen bytes).
pub const RECORD_KEY_BYTES_MAX: u32 = 64 * 1024;
/// State bytes an install writes per batch at most (unless one record alone is larger).
pub const INSTALL_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Buffer of the spill writer and of the readers.
const IO_BUFFER_BYTES: usize = 256 * 1024;

/// One record of a snapshot: a state key and its value.
pub type Record = (Vec<u8>, Vec<u8>);

/// Numbers the incoming files of this process.
static INCOMING_SEQ: AtomicU64 = AtomicU64::new(1);

/// Where a node keeps snapshot files in flight: inside the RocksDB directory (RocksDB ignores
/// names it did not write), so they go wherever the data dir goes.
pub fn snapshot_dir(db: &Db) -> PathBuf {
    db.path().join("snapshots")
}

/// The id of the snapshot of `shard` at `applied`: equal ids mean equal bytes.
pub fn snapshot_id(shard: u32, applied: Option<LogId>) -> String {
    match applied {
        Some(id) => format!("{shard}-{}-{}", id.leader_id, id.index),
        None => format!("{shard}-none"),
    }
}

fn pending_path(dir: &Path, shard: u32) -> PathBuf {
    dir.join(format!("shard-{shard}.snap"))
}

/// Writes `records` (key order) as a snapshot file of `shard`; returns the record count.
pub fn write_records<E: std::fmt::Display>(
    shard: u32,
    records: impl Iterator<Item = Result<(impl AsRef<[u8]>, impl AsRef<[u8]>), E>>,
    out: impl Write,
) -> io::Result<u64> {
    let mut out = CrcWriter { inner: BufWriter::with_capacity(IO_BUFFER_BYTES, out), crc: crc32fast::Hasher::new() };
    out.write_all(MAGIC)?;
    out.write_all(&shard.to_le_bytes())?;
    let mut count = 0u64;
    for record in records {
        let (key, value) = record.map_err(|e| io::Error::other(format!("read shard {shard} state: {e}")))?;
        let (key, value) = (key.as_ref(), value.as_ref());
        let too_large = || io::Error::other(format!("a record of shard {shard} is too large for a snapshot"));
        let key_len = u32::try_from(key.len()).ok().filter(|n| (1..=RECORD_KEY_BYTES_MAX).contains(n));
        let value_len = u32::try_from(value.len()).map_err(|_| too_large())?;
        out.write_all(&key_len.ok_or_else(too_large)?.to_le_bytes())?;
        out.write_all(&value_len.to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(value)?;
        count += 1;
    }
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    let crc = out.crc.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    out.inner.flush()?;
    Ok(count)
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a snapshot file record by record. Every length is checked against the bytes left, so
/// a corrupt file costs an error, never a huge allocation; the trailer (count and CRC) is
/// checked when the last record has been read, as an error item if it does not match.
pub struct SnapshotReader<R: Read> {
    inner: BufReader<R>,
    crc: crc32fast::Hasher,
    remaining: u64,
    count: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads the header of a snapshot of `total_bytes` bytes; checks that it is of `shard`.
    pub fn new(inner: R, total_bytes: u64, shard: u32) -> Result<SnapshotReader<R>, String> {
        let mut reader = SnapshotReader {
            inner: BufReader::with_capacity(IO_BUFFER_BYTES, inner),
            crc: crc32fast::Hasher::new(),
            remaining: total_bytes,
            count: 0,
            done: false,
        };
        let magic = reader.bytes(MAGIC.len() as u64)?;
        if magic != MAGIC {
            return Err("it is not a weft snapshot (bad magic bytes)".into());
        }
        let of = reader.u32()?;
        if of != shard {
            return Err(format!("it is a snapshot of shard {of}, not shard {shard}"));
        }
        Ok(reader)
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.remaining {
            return Err(format!("truncated: {n} more bytes announced, {} left", self.remaining));
        }
        let mut buf = vec![0; n as usize];
        self.inner.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
        self.crc.update(&buf);
        self.remaining -= n;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let raw = self.bytes(4)?;
        Ok(u32::from_le_bytes(raw.try_into().expect("4 bytes")))
    }

    fn next_record(&mut self) -> Result<Option<Record>, String> {
        let key_len = self.u32()?;
        if key_len == 0 {
            let count = u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes"));
            let expected = self.crc.clone().finalize();
            self.crc = crc32fast::Hasher::new();
            let stored = self.u32()?;
            if stored != expected {
                return Err(format!("checksum mismatch (stored {stored:#010x}, computed {expected:#010x})"));
            }
            if count != self.count {
                return Err(format!("it announces {count} records and holds {}", self.count));
            }
            if self.remaining != 0 {
                return Err(format!("{} bytes after its end", self.remaining));
            }
            return Ok(None);
        }
        if key_len > RECORD_KEY_BYTES_MAX {
            return Err(format!("record {} has a key of {key_len} bytes", self.count));
        }
        let value_len = self.u32()?;
        let key = self.bytes(u64::from(key_len))?;
        let value = self.bytes(u64::from(value_len))?;
        self.count += 1;
        Ok(Some((key, value)))
    }
}

impl<R: Read> Iterator for SnapshotReader<R> {
    type Item = Result<Record, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_record().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// What [`check_records`] found in a sound snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedSnapshot {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub records: u64,
}

/// Checks the records of a snapshot of `shard`: keys of this shard only, strictly ascending,
/// the reserved kind only for the applied log id and membership (which must decode), and every
/// other record accepted by the domain ([`ShardApplier::check_record`]).
pub fn check_records(
    shard: u32,
    records: impl Iterator<Item = Result<Record, String>>,
    applier: &dyn ShardApplier,
) -> Result<CheckedSnapshot, String> {
    let (start, end) = keys::shard_range(shard);
    let (applied_key, membership_key) = (applied_log_id_key(shard), membership_key(shard));
    let mut checked = CheckedSnapshot { applied: None, membership: StoredMembership::default(), records: 0 };
    let mut previous: Option<Vec<u8>> = None;
    for (index, record) in records.enumerate() {
        let (key, value) = record?;
        if !(start.as_slice() <= key.as_slice() && key.as_slice() < end.as_slice()) {
            return Err(format!("record {index} has a key outside shard {shard}"));
        }
        if previous.as_ref().is_some_and(|previous| previous.as_slice() >= key.as_slice()) {
            return Err(format!("record {index} is out of key order or repeated"));
        }
        let kind = KeyReader::new(&key).map_err(|e| format!("record {index}: {e}"))?.kind();
        if key == applied_key {
            checked.applied = codec::decode(&value).map_err(|e| format!("decode its applied log id: {e}"))?;
        } else if key == membership_key {
            checked.membership = codec::decode(&value).map_err(|e| format!("decode its membership: {e}"))?;
        } else if kind < keys::KIND_DOMAIN_MIN {
            return Err(format!("record {index} has kind {kind:#04x}, reserved and not written by this version"));
        } else {
            applier
                .check_record(shard, &key, &value)
                .map_err(|e| format!("record {index} (kind {kind:#04x}): {e:#}"))?;
        }
        checked.records += 1;
        previous = Some(key);
    }
    Ok(checked)
}

/// Checks that `checked` is what `meta` announces.
pub fn check_meta(checked: &CheckedSnapshot, meta: &SnapshotMeta) -> Result<(), String> {
    if checked.applied != meta.last_log_id {
        return Err(format!(
            "its data is applied up to {:?}, its metadata says {:?}",
            checked.applied, meta.last_log_id
        ));
    }
    if checked.membership != meta.last_membership {
        return Err(format!(
            "its data holds membership {:?}, its metadata {:?}",
            checked.membership, meta.last_membership
        ));
    }
    Ok(())
}

/// Opens a snapshot file for reading from its start.
fn read_file(file: &mut File, shard: u32) -> Result<SnapshotReader<&mut File>, String> {
    let total = file.seek(SeekFrom::End(0)).map_err(|e| format!("seek: {e}"))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| format!("seek: {e}"))?;
    SnapshotReader::new(file, total, shard)
}

/// Checks the snapshot file `file` whole (format, records, and against `meta` when given).
pub fn check_file(
    file: &mut File,
    shard: u32,
    meta: Option<&SnapshotMeta>,
    applier: &dyn ShardApplier,
) -> Result<CheckedSnapshot, String> {
    let checked = check_records(shard, read_file(file, shard)?, applier)?;
    if let Some(meta) = meta {
        check_meta(&checked, meta)?;
    }
    Ok(checked)
}

/// Installs a received snapshot file that [`check_file`] accepted: see the module doc for the
/// order of writes and what a crash in between leaves. `incoming` is the file's path; it is
/// renamed to the shard's pending install file first.
pub fn install_file(db: &Db, shard: u32, mut file: File, incoming: &Path) -> Result<(), String> {
    let dir = snapshot_dir(db);
    file.sync_all().map_err(|e| format!("sync the received snapshot: {e}"))?;
    let pending = pending_path(&dir, shard);
    std::fs::rename(incoming, &pending).map_err(|e| format!("rename {}: {e}", incoming.display()))?;
    sync_dir(&dir)?;
    fail::fail_point!("raft::snapshot_after_store");
    install_records(db, shard, read_file(&mut file, shard)?)?;
    fail::fail_point!("raft::snapshot_after_state");
    if let Err(e) = std::fs::remove_file(&pending) {
        // Harmless: the next start sees the state already at the file's log id and removes it.
        tracing::warn!(shard, path = %pending.display(), error = %e, "cannot remove the installed snapshot file");
    }
    Ok(())
}

/// Replaces the shard's state with `records` (checked already), in bounded batches, the applied
/// log id and membership last; syncs the WAL.
pub fn install_records(
    db: &Db,
    shard: u32,
    records: impl Iterator<Item = Result<Record, String>>,
) -> Result<(), String> {
    let (start, end) = keys::shard_range(shard);
    let (applied_key, membership_key) = (applied_log_id_key(shard), membership_key(shard));
    let write = |batch| db.write_state(batch).map_err(|e| format!("write the snapshot's state: {e}"));
    let mut batch = db.state_batch();
    batch.delete_range(&start, &end);
    let mut last = Vec::new();
    for record in records {
        let (key, value) = record?;
        if key == applied_key || key == membership_key {
            last.push((key, value));
            continue;
        }
        batch.put(&key, &value);
        if batch.size_bytes() >= INSTALL_BATCH_BYTES {
            write(std::mem::replace(&mut batch, db.state_batch()))?;
        }
    }
    for (key, value) in &last {
        batch.put(key, value);
    }
    write(batch)?;
    // openraft purges the log up to the snapshot next; the state must be durable first.
    db.sync_wal().map_err(|e| format!("sync the snapshot's state: {e}"))
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| format!("sync directory {}: {e}", dir.display()))
}

/// At start: removes incoming files a crash left for `shard`, and returns the pending install
/// file (a complete, checked-before snapshot whose install may have been cut short), if any.
pub fn recover_files(db: &Db, shard: u32) -> io::Result<Option<PathBuf>> {
    let dir = snapshot_dir(db);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let prefix = format!("incoming-{shard}-");
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(shard, path = %entry.path().display(), "removing a partly received snapshot");
            std::fs::remove_file(entry.path())?;
        }
    }
    let pending = pending_path(&dir, shard);
    Ok(pending.exists().then_some(pending))
}

/// A replica's checksum of its shard state at the applied log id it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateChecksum {
    pub applied: Option<LogId>,
    /// CRC-32 of every record (lengths, key and value), in key order.
    pub crc32: u32,
    pub records: u64,
    pub bytes: u64,
}

/// Checksums every record of `view` (blocking: scans the shard's whole state once).
pub fn checksum_view(view: PinnedStateView) -> Result<StateChecksum, String> {
    let shard = view.shard();
    let applied_key = applied_log_id_key(shard);
    view.scan(move |records| {
        let mut sum = StateChecksum { applied: None, crc32: 0, records: 0, bytes: 0 };
        let mut crc = crc32fast::Hasher::new();
        for record in records {
            let (key, value) = record.map_err(|e| e.to_string())?;
            if *key == *applied_key {
                sum.applied = codec::decode(&value).map_err(|e| format!("decode the applied log id: {e}"))?;
            }
            crc.update(&(key.len() as u64).to_le_bytes());
            crc.update(&(value.len() as u64).to_le_bytes());
            crc.update(&key);
            crc.update(&value);
            sum.records += 1;
            sum.bytes += (key.len() + value.len()) as u64;
        }
        sum.crc32 = crc.finalize();
        Ok(sum)
    })
    .map_err(|e| e.to_string())?
}

/// A snapshot's data as openraft moves it: a pinned view not yet read, a spill file being
/// read, or a file being received. See the module doc.
pub struct ShardSnapshotData {
    state: DataState,
    /// Held while the data exists, so a host shutting down waits for it (it may hold a view).
    _lease: Option<Arc<()>>,
}

enum DataState {
    /// A pinned view; `spill` writes it to a file on first use; a seek asked for meanwhile waits.
    View {
        view: Option<PinnedStateView>,
        dir: PathBuf,
        spill: Option<JoinHandle<io::Result<File>>>,
        seek: Option<SeekFrom>,
    },
    /// A readable, writable file; `incoming` is its path while it is a received file not yet
    /// installed (deleted on drop).
    File {
        file: tokio::fs::File,
        incoming: Option<PathBuf>,
    },
    Failed(String),
}

impl std::fmt::Debug for ShardSnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            DataState::View { spill, .. } => write!(f, "ShardSnapshotData::View(spilling: {})", spill.is_some()),
            DataState::File { incoming, .. } => write!(f, "ShardSnapshotData::File(incoming: {incoming:?})"),
            DataState::Failed(e) => write!(f, "ShardSnapshotData::Failed({e})"),
        }
    }
}

impl Drop for ShardSnapshotData {
    fn drop(&mut self) {
        if let DataState::File { incoming: Some(path), .. } = &self.state {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ShardSnapshotData {
    /// The data of a snapshot that is `view`, spilled under `dir` when first read.
    pub fn view(view: PinnedStateView, dir: PathBuf, lease: Arc<()>) -> ShardSnapshotData {
        ShardSnapshotData {
            state: DataState::View { view: Some(view), dir, spill: None, seek: None },
            _lease: Some(lease),
        }
    }

    /// An empty file under `dir` to receive a snapshot of `shard` into.
    pub fn receiving(dir: &Path, shard: u32) -> io::Result<ShardSnapshotData> {
        std::fs::create_dir_all(dir)?;
        let seq = INCOMING_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("incoming-{shard}-{}-{seq}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(ShardSnapshotData {
            state: DataState::File { file: tokio::fs::File::from_std(file), incoming: Some(path) },
            _lease: None,
        })
    }

    /// A received file and its path, ready to check and install (written out and flushed). A
    /// view (openraft's storage tests install a leader's data directly) is first written to a
    /// new incoming file under `dir`.
    pub async fn into_received(mut self, dir: &Path, shard: u32) -> io::Result<(File, PathBuf)> {
        if let DataState::View { .. } = self.state {
            let mut target = ShardSnapshotData::receiving(dir, shard)?;
            tokio::io::copy(&mut self, &mut target).await?;
            return Box::pin(target.into_received(dir, shard)).await;
        }
        match std::mem::replace(&mut self.state, DataState::Failed("taken".into())) {
            DataState::File { mut file, incoming: Some(path) } => {
                use tokio::io::AsyncWriteExt;
                file.flush().await?;
                Ok((file.into_std().await, path))
            }
            DataState::File { incoming: None, .. } => Err(io::Error::other("this snapshot data was not received")),
            DataState::Failed(e) => Err(io::Error::other(e)),
            DataState::View { .. } => unreachable!("handled above"),
        }
    }

    /// Polls until the data is a file (spilling a view first).
    fn poll_file(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut tokio::fs::File>> {
        if let DataState::View { view, dir, spill, seek } = &mut self.state {
            let handle = match spill {
                Some(handle) => handle,
                None => {
                    let view = view.take().expect("a view not yet spilling holds its view");
                    let dir = dir.clone();
                    spill.insert(tokio::task::spawn_blocking(move || spill_view(view, &dir)))
                }
            };
            let spilled = ready!(Pin::new(handle).poll(cx))
                .unwrap_or_else(|e| Err(io::Error::other(format!("snapshot spill task: {e}"))));
            let seek = seek.take();
            self.state = match spilled {
                Ok(file) => {
                    let mut file = tokio::fs::File::from_std(file);
                    match seek.map(|position| Pin::new(&mut file).start_seek(position)) {
                        Some(Err(e)) => DataState::Failed(format!("seek the snapshot: {e}")),
                        _ => DataState::File { file, incoming: None },
                    }
                }
                Err(e) => DataState::Failed(format!("write the snapshot out: {e}")),
            };
        }
        match &mut self.state {
            DataState::File { file, .. } => Poll::Ready(Ok(file)),
            DataState::Failed(e) => Poll::Ready(Err(io::Error::other(e.clone()))),
            DataState::View { .. } => unreachable!("a view became a file or failed above"),
        }
    }
}

/// Writes `view` to an unlinked file under `dir`, positioned at its start.
fn spill_view(view: PinnedStateView, dir: &Path) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::tempfile_in(dir)?;
    let shard = view.shard();
    let out = file.try_clone()?;
    let started = std::time::Instant::now();
    let count =
        view.scan(move |records| write_records(shard, records, out)).map_err(|e| io::Error::other(e.to_string()))??;
    let bytes = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    tracing::info!(
        shard,
        records = count,
        bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "wrote a snapshot out to send"
    );
    metrics::counter!("weft_raft_snapshot_bytes_sent_total").increment(bytes);
    Ok(file)
}

impl AsyncRead for ShardSnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_read(cx, buf)
    }
}

impl AsyncWrite for ShardSnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_shutdown(cx)
    }
}

impl AsyncSeek for ShardSnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        match &mut self.get_mut().state {
            DataState::View { seek, .. } => {
                *seek = Some(position);
                Ok(())
            }
            DataState::File { file, .. } => Pin::new(file).start_seek(position),
            DataState::Failed(e) => Err(io::Error::other(e.clone())),
        }
    }
    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let file = ready!(self.get_mut().poll_file(cx))?;
        Pin::new(file).poll_complete(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(n: u64) -> Vec<Record> {
        (0..n).map(|i| (keys::KeyBuilder::new(7, 0x10).u64(i).finish(), vec![i as u8; (i % 5) as usize])).collect()
    }

    fn encode(shard: u32, records: &[Record]) -> Vec<u8> {
        let mut out = Vec::new();
        write_records(shard, records.iter().map(|(k, v)| Ok::<_, String>((k, v))), &mut out).expect("write");
        out
    }

    fn decode(shard: u32, bytes: &[u8]) -> Result<Vec<Record>, String> {
        SnapshotReader::new(bytes, bytes.len() as u64, shard)?.collect()
    }

    #[test]
    fn records_round_trip() {
        for n in [0, 1, 100] {
            let written = records(n);
            assert_eq!(decode(7, &encode(7, &written)).expect("decode"), written);
        }
    }

    #[test]
    fn every_damage_is_an_error() {
        let bytes = encode(7, &records(20));
        assert!(decode(8, &bytes).unwrap_err().contains("shard 7"));
        for cut in [0, 5, 12, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(7, &bytes[..cut]).is_err(), "truncated at {cut}");
        }
        for at in [0, 13, bytes.len() / 2, bytes.len() - 5, bytes.len() - 1] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x40;
            assert!(decode(7, &flipped).is_err(), "byte {at} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(7, &longer).is_err(), "trailing bytes");
        // A huge announced length is refused before anything is allocated.
        let mut huge = bytes[..12].to_vec();
        huge.extend_from_slice(&8u32.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(7, &huge).unwrap_err().contains("truncated"));
    }
}
