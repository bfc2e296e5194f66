//! `governor audit verify`: walks the chain of one or more audit files (oldest first) and
//! reports the first break: a line that is not a record, a sequence gap (a deleted or reordered
//! record), or a `prev` that does not hash the previous line (an edited, swapped or deleted one).

use std::path::{Path, PathBuf};

use super::{GENESIS, Record, hash_line};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: Option<u64>,
    /// Hash of the last line: compare with the daemon's head to catch a removed or edited tail.
    pub last_hash: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}:{line}: {problem}", file.display())]
pub struct Break {
    pub file: PathBuf,
    pub line: usize,
    pub problem: String,
}

/// Verifies `files` as one chain. The first record may continue an older, pruned file.
pub fn verify_files(files: &[PathBuf]) -> Result<Report, Break> {
    let mut report = Report { records: 0, first_seq: 0, last_seq: None, last_hash: None };
    let mut prev_hash: Option<String> = None;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| Break {
            file: file.clone(),
            line: 0,
            problem: format!("cannot read: {e}"),
        })?;
        if !text.is_empty() && !text.ends_with('\n') {
            let line = text.lines().count();
            return Err(Break {
                file: file.clone(),
                line,
                problem: "the last record is truncated (no end of line)".into(),
            });
        }
        for (i, line) in text.lines().enumerate() {
            let at = |problem: String| Break { file: file.clone(), line: i + 1, problem };
            let r: Record = serde_json::from_str(line).map_err(|e| at(format!("not an audit record: {e}")))?;
            match (&report.last_seq, &prev_hash) {
                (None, _) => {
                    report.first_seq = r.seq;
                    if r.seq == 0 && r.prev != GENESIS {
                        return Err(at("the first record does not start the chain".into()));
                    }
                }
                (Some(last), Some(h)) => {
                    if r.seq != last + 1 {
                        return Err(at(format!(
                            "sequence jumps from {last} to {}: a record is missing or out of order",
                            r.seq
                        )));
                    }
                    if &r.prev != h {
                        return Err(at(format!(
                            "record {} does not follow record {last}: the chain is broken (edited, removed or reordered)",
                            r.seq
                        )));
                    }
                }
                (Some(_), None) => unreachable!("a hash is kept with every sequence number"),
            }
            report.records += 1;
            report.last_seq = Some(r.seq);
            prev_hash = Some(hash_line(line));
        }
    }
    report.last_hash = prev_hash;
    Ok(report)
}

/// Verifies the rotated set of `path` (or just `path` if it is not rotated).
pub fn verify_log(path: &Path) -> Result<Report, Break> {
    let set = super::files(path);
    if set.is_empty() {
        return Err(Break { file: path.to_owned(), line: 0, problem: "no such audit log".into() });
    }
    verify_files(&set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditLog;

    fn log_with(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut log = AuditLog::open(&path, 1 << 20, 3).unwrap();
        for i in 0..n {
            log.append("pause", Some("a1"), serde_json::json!({ "i": i, "reason": "test" })).unwrap();
        }
        (dir, path)
    }

    fn rewrite(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
        f(&mut lines);
        std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn a_real_log_verifies() {
        let (_d, path) = log_with(5);
        let r = verify_log(&path).unwrap();
        assert_eq!((r.records, r.first_seq, r.last_seq), (5, 0, Some(4)));
    }

    #[test]
    fn each_tampering_is_caught() {
        type Tamper = fn(&mut Vec<String>);
        let cases: [(&str, Tamper); 3] = [
            ("deleted line", |l| {
                l.remove(2);
            }),
            ("edited field", |l| l[1] = l[1].replace("\"reason\":\"test\"", "\"reason\":\"tset\"")),
            ("swapped pair", |l| l.swap(1, 2)),
        ];
        for (what, tamper) in cases {
            let (_d, path) = log_with(5);
            rewrite(&path, tamper);
            let e = verify_log(&path).expect_err(what);
            assert!(e.line >= 2 && e.line <= 4, "{what}: {e}");
        }
        let (_d, path) = log_with(5);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        assert!(verify_log(&path).unwrap_err().problem.contains("truncated"));
    }
}
