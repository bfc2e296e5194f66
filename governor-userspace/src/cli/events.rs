//! `governor events`: the audit log through the daemon, filtered, optionally followed live.

use std::{io::Write as _, path::Path};

use crate::control::Client;

pub async fn run(
    agent: Option<&str>,
    kind: Option<&str>,
    since: Option<&str>,
    follow: bool,
    json: bool,
    socket: &Path,
) -> anyhow::Result<()> {
    let mut query = Vec::new();
    for (k, v) in [("agent", agent), ("kind", kind), ("since", since)] {
        if let Some(v) = v {
            query.push(format!("{k}={}", encode(v)));
        }
    }
    if follow {
        query.push("follow=true".into());
    }
    let path = format!("/v1/events?{}", query.join("&"));
    let mut out = std::io::stdout();
    Client::new(socket)
        .get_lines(&path, |line| {
            let text = if json { line.to_owned() } else { human(line) };
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        })
        .await?;
    Ok(())
}

/// `ts  #seq  kind  agent  details`.
fn human(line: &str) -> String {
    let Ok(r) = serde_json::from_str::<serde_json::Value>(line) else { return line.to_owned() };
    format!(
        "{}  #{}  {:<18} {:<16} {}",
        r["ts"].as_str().unwrap_or("-"),
        r["seq"].as_u64().map_or("-".into(), |s| s.to_string()),
        r["kind"].as_str().unwrap_or("-"),
        r["agent"].as_str().unwrap_or("-"),
        r["details"]
    )
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
