//! The audit log: append-only JSON Lines, one record per action. Each record carries a sequence
//! number and the SHA-256 of the previous record's line, so a deleted, reordered or edited
//! record breaks the chain. A record is on disk (fsync) before `append` returns. The log rotates
//! by size (`audit.jsonl.1` is the newest rotated file) and the chain runs on across files.

pub mod verify;

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    pub agent: Option<String>,
    pub kind: String,
    pub details: serde_json::Value,
    /// SHA-256 (hex) of the previous record's line.
    pub prev: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: cannot {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {}: its last record is not valid ({message}); run `governor audit verify` and move the file aside", path.display())]
    Corrupt { path: PathBuf, message: String },
}

pub struct AuditLog {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
    next_seq: u64,
    prev: String,
    live: tokio::sync::broadcast::Sender<String>,
}

/// How long a rotated file is kept whatever `audit_keep` says: ship the log (or let logrotate
/// take it) within this time if the disk cannot hold it.
pub const KEEP_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// The files of a rotated log, oldest first: `path.N`, ..., `path.1`, `path`.
pub fn files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = file.strip_prefix(&format!("{name}.")).and_then(|n| n.parse::<u32>().ok()) {
                rotated.push((n, e.path()));
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_owned());
    }
    out
}

pub fn hash_line(line: &str) -> String {
    Sha256::digest(line.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditLog {
    /// Opens (creating) the log and picks the chain up from its last record (in the newest
    /// rotated file if the current one is empty).
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<Self, AuditError> {
        let io = |op| move |source| AuditError::Io { path: path.to_owned(), op, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
        }
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).mode(0o640).open(path).map_err(io("open"))?;
        let mut last = last_line(&mut file).map_err(io("read"))?;
        if last.is_none()
            && let Some(previous) = files(path).into_iter().rev().nth(1)
        {
            let mut f = File::open(&previous).map_err(io("open the newest rotated file"))?;
            last = last_line(&mut f).map_err(io("read"))?;
        }
        let (next_seq, prev) = match last {
            None => (0, GENESIS.to_owned()),
            Some(line) => {
                let r: Record = serde_json::from_str(&line)
                    .map_err(|e| AuditError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
                (r.seq + 1, hash_line(&line))
            }
        };
        let size = file.metadata().map_err(io("stat"))?.len();
        let (live, _) = tokio::sync::broadcast::channel(4096);
        Ok(Self { path: path.to_owned(), file, size, max_bytes, keep, next_seq, prev, live })
    }

    /// Newly appended lines, for live queries.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.live.subscribe()
    }

    /// The last record's sequence number and the hash of its line (None before the first).
    pub fn head(&self) -> Option<(u64, String)> {
        self.next_seq.checked_sub(1).map(|seq| (seq, self.prev.clone()))
    }

    fn rotate(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let io = |op| {
            let path = path.clone();
            move |source| AuditError::Io { path, op, source }
        };
        let name = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        // Every rotated file moves up by one (.n -> .n+1), the oldest first.
        let mut highest = 0;
        while name(highest + 1).exists() {
            highest += 1;
        }
        for n in (1..=highest).rev() {
            std::fs::rename(name(n), name(n + 1)).map_err(io("rotate"))?;
        }
        std::fs::rename(&self.path, name(1)).map_err(io("rotate"))?;
        // Past `keep`, a file goes only once it is older than KEEP_AT_LEAST: a burst of records
        // (anyone who can make the daemon write) cannot push recent history out of the log.
        // Older files go from the oldest, so the numbering stays without gaps.
        for n in (self.keep + 1..=highest + 1).rev() {
            let old = std::fs::metadata(name(n))
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= KEEP_AT_LEAST));
            if !old {
                break;
            }
            std::fs::remove_file(name(n)).map_err(io("remove the oldest rotated file"))?;
        }
        self.file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(&self.path)
            .map_err(io("reopen after rotation"))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync its directory"))?;
        }
        self.size = 0;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and fsyncs it. Returns its sequence number.
    pub fn append(&mut self, kind: &str, agent: Option<&str>, details: serde_json::Value) -> Result<u64, AuditError> {
        let record = Record {
            seq: self.next_seq,
            ts: now_rfc3339(),
            agent: agent.map(str::to_owned),
            kind: kind.to_owned(),
            details,
            prev: self.prev.clone(),
        };
        let line = serde_json::to_string(&record).expect("record serializes");
        if self.size > 0 && self.size + line.len() as u64 + 1 > self.max_bytes {
            self.rotate()?;
        }
        let path = &self.path;
        let io = |op: &'static str| move |source| AuditError::Io { path: path.clone(), op, source };
        let written = self.file.write_all(format!("{line}\n").as_bytes()).and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A full disk can leave part of the line behind: cut the file back to its last whole
            // record, so the chain stays verifiable and the next append continues it.
            let _ = self.file.set_len(self.size);
            return Err(io("append")(e));
        }
        self.size += line.len() as u64 + 1;
        self.prev = hash_line(&line);
        self.next_seq += 1;
        let _ = self.live.send(line);
        Ok(record.seq)
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let ms = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    ms.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// The last non-empty line of `file`, read from its tail.
fn last_line(file: &mut File) -> std::io::Result<Option<String>> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut window = 4096u64;
    loop {
        let start = len.saturating_sub(window);
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        std::io::Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let text = String::from_utf8_lossy(&buf);
        let trimmed = text.trim_end_matches('\n');
        if let Some(i) = trimmed.rfind('\n') {
            return Ok(Some(trimmed[i + 1..].to_owned()));
        }
        if start == 0 {
            return Ok((!trimmed.is_empty()).then(|| trimmed.to_owned()));
        }
        window *= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_chain_and_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20, 3).unwrap();
        assert_eq!(log.append("daemon_start", None, serde_json::json!({"v": 1})).unwrap(), 0);
        assert_eq!(log.append("threshold_crossed", Some("a1"), serde_json::json!({"percent": 50})).unwrap(), 1);
        drop(log);
        let mut log = AuditLog::open(&path, 1 << 20, 3).unwrap();
        assert_eq!(log.append("daemon_stop", None, serde_json::json!({})).unwrap(), 2);

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let records: Vec<Record> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(records[0].prev, GENESIS);
        assert_eq!(records[1].prev, hash_line(lines[0]));
        assert_eq!(records[2].prev, hash_line(lines[1]));
        assert_eq!(records[1].agent.as_deref(), Some("a1"));
    }

    #[test]
    fn rotation_keeps_the_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 4096, 3).unwrap();
        for i in 0..200 {
            log.append("tick", Some("a"), serde_json::json!({ "i": i, "pad": "x".repeat(100) })).unwrap();
        }
        drop(log);
        // A burst of records does not push history out: files past `keep` stay while young.
        let set = files(&path);
        assert!(set.len() > 4, "{set:?}");
        let report = verify::verify_files(&set).unwrap();
        assert_eq!((report.first_seq, report.records), (0, 200), "every record kept");
        // Once they are older than KEEP_AT_LEAST, the next rotation takes them, oldest first,
        // down to `keep` rotated files.
        let old = std::time::SystemTime::now() - KEEP_AT_LEAST - std::time::Duration::from_secs(60);
        for f in &set[..set.len() - 1] {
            std::fs::File::options().write(true).open(f).unwrap().set_modified(old).unwrap();
        }
        let mut log = AuditLog::open(&path, 4096, 3).unwrap();
        for i in 200..240 {
            log.append("tick", Some("a"), serde_json::json!({ "i": i, "pad": "x".repeat(100) })).unwrap();
        }
        drop(log);
        assert!(!dir.path().join("audit.jsonl.4").exists(), "keeps 3 rotated files once they are old");
        // The chain verifies across the kept files; the first kept file starts mid-chain.
        let report = verify::verify_files(&files(&path)).unwrap();
        assert!(report.records > 0 && report.first_seq > 0);
        // And a reopened log continues it.
        let mut log = AuditLog::open(&path, 4096, 3).unwrap();
        assert_eq!(log.append("tick", None, serde_json::json!({})).unwrap(), 240);
    }

    #[test]
    fn a_torn_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"seq\":0,\"ts\":\"x\"").unwrap();
        assert!(matches!(AuditLog::open(&path, 1 << 20, 3), Err(AuditError::Corrupt { .. })));
    }
}
