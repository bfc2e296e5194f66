//! The audit log: append-only JSON Lines, one record per action. Each record carries a sequence
//! number and the SHA-256 of the previous record's line, so a deleted, reordered or edited
//! record breaks the chain. A record is on disk (fsync) before `append` returns.

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
    next_seq: u64,
    prev: String,
}

pub fn hash_line(line: &str) -> String {
    Sha256::digest(line.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditLog {
    /// Opens (creating) the log and picks the chain up from its last record.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |op| move |source| AuditError::Io { path: path.to_owned(), op, source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create its directory"))?;
        }
        let mut file =
            OpenOptions::new().read(true).append(true).create(true).mode(0o640).open(path).map_err(io("open"))?;
        let (next_seq, prev) = match last_line(&mut file).map_err(io("read"))? {
            None => (0, GENESIS.to_owned()),
            Some(line) => {
                let r: Record = serde_json::from_str(&line)
                    .map_err(|e| AuditError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
                (r.seq + 1, hash_line(&line))
            }
        };
        Ok(Self { path: path.to_owned(), file, next_seq, prev })
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
        let path = &self.path;
        let io = |op: &'static str| move |source| AuditError::Io { path: path.clone(), op, source };
        self.file.write_all(format!("{line}\n").as_bytes()).map_err(io("append"))?;
        self.file.sync_data().map_err(io("fsync"))?;
        self.prev = hash_line(&line);
        self.next_seq += 1;
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
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.append("daemon_start", None, serde_json::json!({"v": 1})).unwrap(), 0);
        assert_eq!(log.append("threshold_crossed", Some("a1"), serde_json::json!({"percent": 50})).unwrap(), 1);
        drop(log);
        let mut log = AuditLog::open(&path).unwrap();
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
    fn a_torn_last_line_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"seq\":0,\"ts\":\"x\"").unwrap();
        assert!(matches!(AuditLog::open(&path), Err(AuditError::Corrupt { .. })));
    }
}
