//! The bounded on-disk spool of derived instances waiting to be pushed to the PACS.
//!
//! An instance is accepted (a STOW-RS success, a pull job's progress) only after its file
//! is in the spool: written under `tmp/`, fsynced, renamed into `queue/`, the folder
//! fsynced. The push worker ([`super::push`]) sends the oldest first and deletes a file
//! once the PACS has stored it, so an instance survives a PACS outage and a server
//! restart ([`Spool::open`] resumes what is left, and removes half-written files).
//!
//! Files are named `<sequence>-<SOP Instance UID>-<content key>.dcm`, the key being the
//! SHA-256 (hex) of the source pixels. A SOP Instance UID is queued at most once: derived
//! UIDs are deterministic, so a retried STOW-RS request or a resumed job finds its
//! instance already queued and adds nothing, while the same UID with other pixels is a
//! conflict, also after a restart (the key is in the name, written by the same atomic
//! rename as the file; files named `<sequence>-<UID>.dcm` by older versions are resumed
//! without a key, so a repeat of them is not checked). Instances the PACS refuses
//! for good move to `failed/` with a `.reason.txt` next to them (kept for an operator:
//! they count towards the size bound until removed by hand).
//!
//! The bound (`--spool-max-bytes`) covers queued, being-written and failed files; an
//! instance that would exceed it is refused ([`SpoolError::Full`]): STOW-RS answers it
//! with Failure Reason A700 (out of resources) and the sender retries later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use tokio::sync::Notify;

use ldct_imaging::instance::is_uid;

use crate::durable;
use crate::metrics::metrics;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the spool is full ({used} of {max} bytes used; {needed} more needed): the PACS is \
         not taking instances fast enough or is down; retry later"
    )]
    Full { used: u64, needed: u64, max: u64 },
    #[error("cannot write to the spool: {0}")]
    Io(String),
    #[error("{0:?} is not a valid SOP Instance UID")]
    InvalidUid(String),
    #[error(
        "an instance with SOP Instance UID {0} but other pixel data is already waiting in the \
         spool: one of the two sources reuses a SOP Instance UID; not stored"
    )]
    Conflict(String),
}

/// What an instance's content is (a SHA-256 of its source pixels): the same SOP
/// Instance UID queued again with another key is a [`SpoolError::Conflict`].
pub type ContentKey = [u8; 32];

/// A queued instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub sop_instance_uid: String,
    pub path: PathBuf,
    pub len: u64,
}

/// What [`Spool::enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Added,
    /// The SOP Instance UID was already waiting: nothing added.
    AlreadyQueued,
}

/// Where an instance stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Queued,
    /// Refused by the PACS for good, with the reason.
    Failed(String),
    /// Not in the spool: pushed (or never queued).
    Absent,
}

#[derive(Default)]
struct Inner {
    queue: BTreeMap<u64, Entry>,
    by_sop: HashMap<String, u64>,
    writing: HashSet<String>,
    /// The content key of each instance queued or being written (from the file name for
    /// instances found on disk at start; older names have none: a repeat of them is not
    /// checked).
    keys: HashMap<String, ContentKey>,
    failed: HashMap<String, String>,
    /// Queued + being written + failed.
    bytes: u64,
    next_seq: u64,
}

pub struct Spool {
    queue_dir: PathBuf,
    failed_dir: PathBuf,
    tmp_dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    wake: Notify,
    /// Signalled when a write finishes (a second enqueue of the same UID waits for it).
    written: Condvar,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("queue_dir", &self.queue_dir)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> SpoolError {
    SpoolError::Io(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    durable::sync_dir(dir).map_err(|e| io_err("fsync", dir, e))
}

/// The spool's file name of an instance.
fn file_name(seq: u64, uid: &str, key: &ContentKey) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("{seq:016}-{uid}-{hex}.dcm")
}

/// `<seq>-<uid>-<key>.dcm` -> (seq, uid, Some(key)); `<seq>-<uid>.dcm` (older
/// versions) -> (seq, uid, None).
fn parse_name(name: &str) -> Option<(u64, String, Option<ContentKey>)> {
    let stem = name.strip_suffix(".dcm")?;
    let (seq, rest) = stem.split_once('-')?;
    let seq = seq.parse().ok()?;
    let (uid, key) = match rest.split_once('-') {
        Some((uid, hex)) => (uid, Some(parse_key(hex)?)),
        None => (rest, None),
    };
    is_uid(uid).then(|| (seq, uid.to_owned(), key))
}

fn parse_key(hex: &str) -> Option<ContentKey> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
        *k = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(key)
}

impl Spool {
    /// Opens (creating) the spool under `dir`: removes half-written files, indexes the
    /// queued and failed ones.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        let queue_dir = dir.join("queue");
        let failed_dir = dir.join("failed");
        let tmp_dir = dir.join("tmp");
        for d in [&queue_dir, &failed_dir, &tmp_dir] {
            fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        for e in fs::read_dir(&tmp_dir).map_err(|e| io_err("read", &tmp_dir, e))? {
            let e = e.map_err(|e| io_err("read", &tmp_dir, e))?;
            let path = e.path();
            fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
        }
        let mut inner = Inner::default();
        for e in fs::read_dir(&queue_dir).map_err(|e| io_err("read", &queue_dir, e))? {
            let e = e.map_err(|e| io_err("read", &queue_dir, e))?;
            let path = e.path();
            let Some((seq, uid, key)) = e.file_name().to_str().and_then(parse_name) else {
                tracing::warn!(file = %path.display(), "ignoring a foreign file in the spool");
                continue;
            };
            let len = e.metadata().map_err(|e| io_err("stat", &path, e))?.len();
            inner.next_seq = inner.next_seq.max(seq + 1);
            if let Some(&other) = inner.by_sop.get(&uid) {
                // The same instance twice (cannot happen through enqueue): keep the older.
                if other < seq {
                    fs::remove_file(&path).map_err(|e| io_err("remove", &path, e))?;
                    continue;
                }
                if let Some(old) = inner.queue.remove(&other) {
                    inner.bytes -= old.len;
                    fs::remove_file(&old.path).map_err(|e| io_err("remove", &old.path, e))?;
                }
            }
            inner.by_sop.insert(uid.clone(), seq);
            match key {
                Some(k) => inner.keys.insert(uid.clone(), k),
                None => inner.keys.remove(&uid),
            };
            inner.bytes += len;
            inner.queue.insert(
                seq,
                Entry {
                    seq,
                    sop_instance_uid: uid,
                    path,
                    len,
                },
            );
        }
        for e in fs::read_dir(&failed_dir).map_err(|e| io_err("read", &failed_dir, e))? {
            let e = e.map_err(|e| io_err("read", &failed_dir, e))?;
            let path = e.path();
            let len = e.metadata().map_err(|e| io_err("stat", &path, e))?.len();
            inner.bytes += len;
            if let Some((seq, uid, _)) = e.file_name().to_str().and_then(parse_name) {
                inner.next_seq = inner.next_seq.max(seq + 1);
                let reason = fs::read_to_string(path.with_extension("reason.txt"))
                    .unwrap_or_else(|_| "refused by the PACS".into());
                inner.failed.insert(uid, reason.trim().to_owned());
            }
        }
        let spool = Spool {
            queue_dir,
            failed_dir,
            tmp_dir,
            max_bytes,
            inner: Mutex::new(inner),
            wake: Notify::new(),
            written: Condvar::new(),
        };
        spool.publish(&spool.lock());
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code under the lock panics; a poisoned lock still holds a consistent index.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        let m = metrics();
        m.spool_depth.set(inner.queue.len() as i64);
        m.spool_bytes.set(inner.bytes as i64);
        m.spool_failed.set(inner.failed.len() as i64);
    }

    /// Durably queues the derived instance `bytes` (blocking: writes and fsyncs).
    ///
    /// The same SOP Instance UID again is [`Enqueued::AlreadyQueued`] when its `key`
    /// matches (a retried request), a [`SpoolError::Conflict`] when it does not; while
    /// the first copy is being written a second caller waits for that write, so it is
    /// never told "queued" for a write that then fails.
    pub fn enqueue(
        &self,
        sop_instance_uid: &str,
        bytes: &[u8],
        key: &ContentKey,
    ) -> Result<Enqueued, SpoolError> {
        if !is_uid(sop_instance_uid) {
            return Err(SpoolError::InvalidUid(sop_instance_uid.to_owned()));
        }
        let len = bytes.len() as u64;
        let seq = {
            let mut inner = self.lock();
            while inner.writing.contains(sop_instance_uid) {
                inner = self.written.wait(inner).unwrap_or_else(|p| p.into_inner());
            }
            if inner.by_sop.contains_key(sop_instance_uid) {
                return match inner.keys.get(sop_instance_uid) {
                    Some(k) if k != key => Err(SpoolError::Conflict(sop_instance_uid.to_owned())),
                    _ => Ok(Enqueued::AlreadyQueued),
                };
            }
            if inner.bytes + len > self.max_bytes {
                return Err(SpoolError::Full {
                    used: inner.bytes,
                    needed: len,
                    max: self.max_bytes,
                });
            }
            // A new attempt at an instance the PACS refused before.
            if inner.failed.remove(sop_instance_uid).is_some() {
                tracing::debug!(
                    sop = sop_instance_uid,
                    "re-queuing a previously failed instance"
                );
            }
            inner.bytes += len;
            inner.writing.insert(sop_instance_uid.to_owned());
            inner.keys.insert(sop_instance_uid.to_owned(), *key);
            let seq = inner.next_seq;
            inner.next_seq += 1;
            seq
        };
        let name = file_name(seq, sop_instance_uid, key);
        let tmp = self.tmp_dir.join(&name);
        let path = self.queue_dir.join(&name);
        let written =
            durable::write_atomic(&tmp, &path, bytes).map_err(|e| io_err("write", &path, e));
        let mut inner = self.lock();
        inner.writing.remove(sop_instance_uid);
        if let Err(e) = written {
            inner.bytes -= len;
            inner.keys.remove(sop_instance_uid);
            drop(inner);
            self.written.notify_all();
            return Err(e);
        }
        inner.by_sop.insert(sop_instance_uid.to_owned(), seq);
        inner.queue.insert(
            seq,
            Entry {
                seq,
                sop_instance_uid: sop_instance_uid.to_owned(),
                path,
                len,
            },
        );
        self.publish(&inner);
        drop(inner);
        self.written.notify_all();
        self.wake.notify_one();
        Ok(Enqueued::Added)
    }

    /// The oldest entries: at most `max_n`, and no more than `max_bytes` in all unless
    /// the first alone is larger.
    pub fn next_batch(&self, max_n: usize, max_bytes: u64) -> Vec<Entry> {
        let inner = self.lock();
        let mut out = Vec::new();
        let mut total = 0;
        for e in inner.queue.values() {
            if out.len() >= max_n.max(1) || (!out.is_empty() && total + e.len > max_bytes) {
                break;
            }
            total += e.len;
            out.push(e.clone());
        }
        out
    }

    /// Waits until something may have been queued (returns at once if something was
    /// queued since the last call).
    pub async fn notified(&self) {
        self.wake.notified().await
    }

    /// The PACS stored `entry`: delete it.
    pub fn remove(&self, entry: &Entry) {
        if let Err(e) = fs::remove_file(&entry.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!(seq = entry.seq, error = %e.kind(), "cannot delete a pushed instance from the spool");
            }
        }
        let mut inner = self.lock();
        if inner.queue.remove(&entry.seq).is_some() {
            inner.by_sop.remove(&entry.sop_instance_uid);
            inner.keys.remove(&entry.sop_instance_uid);
            inner.bytes -= entry.len;
        }
        self.publish(&inner);
    }

    /// The PACS refused `entry` for good: move it to `failed/` with the reason.
    pub fn fail(&self, entry: &Entry, reason: &str) {
        let name = entry
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default();
        let target = self.failed_dir.join(&name);
        let moved = fs::rename(&entry.path, &target)
            .and_then(|_| fs::write(target.with_extension("reason.txt"), format!("{reason}\n")));
        if let Err(e) = moved {
            tracing::error!(seq = entry.seq, error = %e.kind(), "cannot move a refused instance to the spool's failed/ folder");
        }
        let _ = sync_dir(&self.failed_dir);
        let mut inner = self.lock();
        if inner.queue.remove(&entry.seq).is_some() {
            inner.by_sop.remove(&entry.sop_instance_uid);
            inner.keys.remove(&entry.sop_instance_uid);
            inner
                .failed
                .insert(entry.sop_instance_uid.clone(), reason.to_owned());
        }
        self.publish(&inner);
    }

    /// Where `sop_instance_uid` stands.
    pub fn status(&self, sop_instance_uid: &str) -> Status {
        let inner = self.lock();
        if inner.by_sop.contains_key(sop_instance_uid) || inner.writing.contains(sop_instance_uid) {
            Status::Queued
        } else if let Some(r) = inner.failed.get(sop_instance_uid) {
            Status::Failed(r.clone())
        } else {
            Status::Absent
        }
    }

    /// Instances waiting.
    pub fn depth(&self) -> usize {
        self.lock().queue.len()
    }

    /// Bytes used (queued, being written and failed files).
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A content key for tests that do not look at it.
    const K: ContentKey = [7; 32];

    #[test]
    fn the_same_uid_with_other_content_is_a_conflict_not_a_silent_drop() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        assert_eq!(
            spool.enqueue("1.2.3", &[1; 40], &[1; 32]).unwrap(),
            Enqueued::Added
        );
        // A retry of the same source: queued already, a success.
        assert_eq!(
            spool.enqueue("1.2.3", &[1; 40], &[1; 32]).unwrap(),
            Enqueued::AlreadyQueued
        );
        // Another source under the same UID: refused, the first copy kept.
        assert_eq!(
            spool.enqueue("1.2.3", &[9; 40], &[9; 32]),
            Err(SpoolError::Conflict("1.2.3".into()))
        );
        let batch = spool.next_batch(10, 1000);
        assert_eq!(batch.len(), 1);
        assert_eq!(std::fs::read(&batch[0].path).unwrap(), vec![1; 40]);
        // Once pushed and removed, the UID is free again.
        spool.remove(&batch[0]);
        assert_eq!(
            spool.enqueue("1.2.3", &[9; 40], &[9; 32]).unwrap(),
            Enqueued::Added
        );
    }

    #[test]
    fn a_conflict_is_still_refused_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1000).unwrap();
        spool.enqueue("1.2.3", &[1; 40], &[1; 32]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1000).unwrap();
        assert_eq!(
            spool.enqueue("1.2.3", &[9; 40], &[9; 32]),
            Err(SpoolError::Conflict("1.2.3".into()))
        );
        assert_eq!(
            spool.enqueue("1.2.3", &[1; 40], &[1; 32]).unwrap(),
            Enqueued::AlreadyQueued
        );
        assert_eq!(spool.depth(), 1);
        // The name carries the key; a file named by an older version (no key) is still
        // resumed and pushed, and a repeat of it is taken as a retry.
        std::fs::write(dir.path().join("queue/0000000000000005-1.2.7.dcm"), [7; 10]).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1000).unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(
            spool.enqueue("1.2.7", &[8; 10], &[8; 32]).unwrap(),
            Enqueued::AlreadyQueued
        );
        let names: Vec<String> = spool
            .next_batch(10, 1000)
            .iter()
            .map(|e| e.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names[0],
            format!("0000000000000000-1.2.3-{}.dcm", "01".repeat(32))
        );
        // Names that are neither form are foreign files, left alone.
        assert_eq!(parse_name("0000000000000001-1.2.3-zz.dcm"), None);
        assert_eq!(parse_name("0000000000000001-1.2.3-01.dcm"), None);
    }

    #[test]
    fn concurrent_first_writes_of_one_uid_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let results: Vec<_> = (0..8)
            .map(|_| {
                let s = spool.clone();
                std::thread::spawn(move || s.enqueue("1.2.3", &[4; 4096], &[4; 32]))
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        assert_eq!(results.iter().filter(|r| **r == Enqueued::Added).count(), 1);
        assert_eq!(spool.depth(), 1);
        assert_eq!(spool.bytes(), 4096);
        assert_eq!(
            std::fs::read_dir(dir.path().join("queue")).unwrap().count(),
            1
        );
    }

    #[test]
    fn enqueue_dedupes_bounds_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(
            spool.enqueue("1.2.3", &[1; 40], &K).unwrap(),
            Enqueued::Added
        );
        assert_eq!(
            spool.enqueue("1.2.3", &[1; 40], &K).unwrap(),
            Enqueued::AlreadyQueued
        );
        assert_eq!(
            spool.enqueue("1.2.4", &[2; 40], &K).unwrap(),
            Enqueued::Added
        );
        assert!(matches!(
            spool.enqueue("1.2.5", &[3; 40], &K),
            Err(SpoolError::Full {
                used: 80,
                needed: 40,
                max: 100
            })
        ));
        assert!(matches!(
            spool.enqueue("../x", &[3; 4], &K),
            Err(SpoolError::InvalidUid(_))
        ));
        assert_eq!(spool.depth(), 2);
        assert_eq!(spool.status("1.2.3"), Status::Queued);
        assert_eq!(spool.status("9.9"), Status::Absent);
        // A half-written file from a crash is removed on open.
        std::fs::write(dir.path().join("tmp/0000000000000009-1.2.9.dcm"), b"half").unwrap();
        drop(spool);

        let spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(spool.depth(), 2);
        assert_eq!(spool.bytes(), 80);
        assert!(std::fs::read_dir(dir.path().join("tmp"))
            .unwrap()
            .next()
            .is_none());
        let batch = spool.next_batch(10, 1000);
        let uids: Vec<_> = batch.iter().map(|e| e.sop_instance_uid.as_str()).collect();
        assert_eq!(uids, ["1.2.3", "1.2.4"], "oldest first");
        assert_eq!(std::fs::read(&batch[0].path).unwrap(), vec![1; 40]);
        // Sequence numbers continue after the reopen.
        spool.enqueue("1.2.5", &[5; 10], &K).unwrap();
        assert_eq!(spool.next_batch(10, 1000)[2].seq, batch[1].seq + 1);
        // Batches are bounded by count and bytes, with at least one entry.
        assert_eq!(spool.next_batch(1, 1000).len(), 1);
        assert_eq!(spool.next_batch(10, 50).len(), 1);
        assert_eq!(spool.next_batch(10, 1).len(), 1);

        spool.remove(&batch[0]);
        assert_eq!(spool.status("1.2.3"), Status::Absent);
        assert!(!batch[0].path.exists());
        spool.fail(&batch[1], "refused: 0xC000");
        assert_eq!(
            spool.status("1.2.4"),
            Status::Failed("refused: 0xC000".into())
        );
        assert_eq!(spool.depth(), 1);
        // Failed files still count towards the bound, and are remembered.
        assert_eq!(spool.bytes(), 50);
        drop(spool);
        let spool = Spool::open(dir.path(), 100).unwrap();
        assert_eq!(
            spool.status("1.2.4"),
            Status::Failed("refused: 0xC000".into())
        );
        assert_eq!(spool.depth(), 1);
        assert_eq!(spool.bytes(), 50 + "refused: 0xC000\n".len() as u64);
    }
}
