//! `governor audit verify`: the chain of the log and its rotated files, and (when the daemon
//! answers) its newest record against the daemon's own head, which catches a removed or edited
//! tail that the chain alone cannot.

use std::path::{Path, PathBuf};

use crate::{audit::verify::verify_log, control::Client};

pub async fn verify(file: Option<PathBuf>, socket: &Path) -> anyhow::Result<()> {
    let head: Option<serde_json::Value> = Client::new(socket).get_json("/v1/audit/head").await.ok();
    let daemon_path = head.as_ref().and_then(|h| h["path"].as_str()).map(PathBuf::from);
    let path = file.or_else(|| daemon_path.clone()).unwrap_or_else(|| PathBuf::from("/var/log/governor/audit.jsonl"));
    if !path.exists() {
        anyhow::bail!(
            "no audit log at {}: name the file (`governor audit verify FILE`, daemon.audit_log in the config), or run it where the daemon answers on --socket",
            path.display()
        );
    }
    let report = verify_log(&path).map_err(|b| anyhow::anyhow!("audit chain broken: {b}"))?;
    if let (Some(h), Some(dp)) = (&head, &daemon_path)
        && dp == &path
    {
        let (seq, hash) = (h["seq"].as_u64(), h["hash"].as_str());
        if seq.is_some() && (report.last_seq != seq || report.last_hash.as_deref() != hash) {
            let ends = report.last_seq.map_or("with no record".to_owned(), |s| format!("at record {s}"));
            let wrote = seq.map_or(String::new(), |s| s.to_string());
            anyhow::bail!(
                "audit chain broken: {} ends {ends} but the daemon last wrote record {wrote}: the newest records were removed or edited",
                path.display()
            );
        }
    }
    let range = report.last_seq.map_or("none".into(), |l| format!("{}..={l}", report.first_seq));
    println!("{}: {} records (seq {range}), chain intact", path.display(), report.records);
    Ok(())
}
