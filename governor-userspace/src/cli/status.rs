//! `governor status`: a table of agents and their counters, or the raw JSON.

use std::{fmt::Write as _, path::Path};

use crate::{control::Client, status::Status};

pub async fn run(json: bool, socket: &Path) -> anyhow::Result<()> {
    let status: Status = Client::new(socket).get_json("/v1/status").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", table(&status));
    }
    Ok(())
}

/// The human view: one line per agent, one indented line per endpoint it used.
pub fn table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "governor {}  agents root {}  metrics {}", s.version, s.agents_root, s.metrics_address);
    let _ = writeln!(out, "config {} (sha256 {})", s.config_source, &s.config_sha256[..12.min(s.config_sha256.len())]);
    let _ = writeln!(
        out,
        "\n{:<24} {:<8} {:<10} {:>14} {:>14} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "AGENT",
        "MODE",
        "STATE",
        "SENT_BYTES",
        "RECV_BYTES",
        "SENT_PKTS",
        "RECV_PKTS",
        "ALLOWED",
        "DENIED",
        "WOULD_DENY"
    );
    if s.agents.is_empty() {
        let _ = writeln!(out, "(no agents: create a cgroup under {} or add [[agent]] to the config)", s.agents_root);
    }
    let row = |out: &mut String, name: &str, mode: &str, state: &str, c: &crate::kernel::AgentCounters| {
        let _ = writeln!(
            out,
            "{:<24} {:<8} {:<10} {:>14} {:>14} {:>10} {:>10} {:>9} {:>9} {:>10}",
            name, mode, state, c.tx_bytes, c.rx_bytes, c.tx_packets, c.rx_packets, c.allowed, c.denied, c.would_deny
        );
    };
    for a in &s.agents {
        row(&mut out, &a.name, a.mode.as_str(), &a.state, &a.totals);
        for e in &a.endpoints {
            row(&mut out, &format!("  {}", e.endpoint), "", "", &e.counters);
        }
    }
    let _ = writeln!(
        out,
        "\ndeny events: {} received, {} lost (counters unaffected), {} malformed",
        s.events.received, s.events.lost, s.events.malformed
    );
    out
}
