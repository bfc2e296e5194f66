//! `governor spend`: what each agent spent, against its budget, optionally by endpoint.

use std::{fmt::Write as _, path::Path};

use serde_json::json;

use super::SpendBy;
use crate::{control::Client, status::Status};

pub async fn run(agent: Option<&str>, by: Option<SpendBy>, json: bool, socket: &Path) -> anyhow::Result<()> {
    let status: Status = Client::new(socket).get_json("/v1/status").await?;
    let agents: Vec<_> = status.agents.iter().filter(|a| agent.is_none_or(|n| a.name == n)).collect();
    if let Some(n) = agent
        && agents.is_empty()
    {
        let known: Vec<&str> = status.agents.iter().map(|a| a.name.as_str()).collect();
        anyhow::bail!(
            "no agent named {n:?}; agents: {}",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    }
    if json {
        let rows: Vec<_> = agents
            .iter()
            .map(|a| {
                let mut row = json!({ "agent": a.name, "state": a.state, "budget": a.budget });
                if by.is_some() {
                    row["endpoints"] = a
                        .endpoints
                        .iter()
                        .map(|e| json!({ "endpoint": e.endpoint, "spend": e.spend, "spend_pico": e.spend_pico }))
                        .collect();
                }
                row
            })
            .collect();
        let out = json!({ "currency": status.currency, "host_budget": status.host_budget, "agents": rows });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut out = String::new();
    let _ =
        writeln!(out, "{:<24} {:<10} {:>16} {:>16} {:>16}", "AGENT", "STATE", "WINDOW SPEND", "LIMIT", "TOTAL SPEND");
    for a in &agents {
        let (window, limit, total) = a.budget.as_ref().map_or(("-".into(), "-".into(), "-".into()), |b| {
            (b.window_spend.clone(), b.limit.clone().unwrap_or_else(|| "no budget".into()), b.spent_total.clone())
        });
        let _ = writeln!(out, "{:<24} {:<10} {:>16} {:>16} {:>16}", a.name, a.state, window, limit, total);
        if by.is_some() {
            for e in &a.endpoints {
                let _ = writeln!(out, "  {:<22} {:<10} {:>16} {:>16} {:>16}", e.endpoint, "", "", "", e.spend);
            }
        }
    }
    let _ = writeln!(
        out,
        "(amounts in {}; TOTAL SPEND covers every window{})",
        status.currency,
        if by.is_some() { "; endpoint rows are totals at current prices" } else { "" }
    );
    print!("{out}");
    Ok(())
}
