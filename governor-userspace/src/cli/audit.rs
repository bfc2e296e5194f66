//! `governor audit verify`: the chain of the log and its rotated files, and (when the daemon
//! answers) its newest record against the daemon's own head, which catches a removed or edited
//! tail that the chain alone cannot.

use std::path::{Path, PathBuf};

use crate::{audit::verify::verify_log, control::Client};

pub async fn verify(file: Option<PathBuf>, socket: &Path) -> anyhow::Result<()> {
    let head: Option<serde_json::Value> = Client::new(socket).get_json("/v1/audit/head").await.ok();
    let daemon_path = head.as_ref().and_then(|h| h["path"].as_str()).map(PathBuf::from);
    let path = file.or_else(|| daemon_path.clone()).unwrap_or_else(|| PathBuf::from("/var/log/governor/audit.jsonl"));
    let report = verify_log(&path).map_err(|b| anyhow::anyhow!("audit chain broken: {b}"))?;
    if let (Some(h), Some(dp)) = (&head, &daemon_path)
        && dp == &path
    {
        let (seq, hash) = (h["seq"].as_u64(), h["hash"].as_str());
        if seq.is_some() && (report.last_seq != seq || report.last_hash.as_deref() != hash) {
            anyhow::bail!(
                "audit chain broken: the log ends at record {:?} but the daemon last wrote record {seq:?}: the newest records were removed or edited",
                report.last_seq
            );
        }
    }
    let range = report.last_seq.map_or("none".into(), |l| format!("{}..={l}", report.first_seq));
    println!("{}: {} records (seq {range}), chain intact", path.display(), report.records);
    Ok(())
}
