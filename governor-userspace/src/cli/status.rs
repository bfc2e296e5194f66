//! `governor status`: a table of agents and their counters, or the raw JSON.

use std::{fmt::Write as _, path::Path};

use crate::{accounting::books::BudgetStatus, control::Client, status::Status};

pub async fn run(json: bool, host: bool, socket: &Path) -> anyhow::Result<()> {
    let status: Status = Client::new(socket).get_json("/v1/status").await?;
    match (json, host) {
        (true, false) => println!("{}", serde_json::to_string_pretty(&status)?),
        (true, true) => println!("{}", serde_json::to_string_pretty(&status.host_egress)?),
        (false, true) => print!("{}", host_table(&status)),
        (false, false) => print!("{}", table(&status)),
    }
    Ok(())
}

/// The host's egress bill: every sending cgroup, largest first.
pub fn host_table(s: &Status) -> String {
    let h = &s.host_egress;
    let mut out = String::new();
    let price = h
        .price_per_gib
        .as_deref()
        .map_or_else(|| "no price set (host.egress_price_per_gib)".to_owned(), |p| format!("{p} {}/GiB", s.currency));
    let _ = writeln!(
        out,
        "host egress on {}: {} bytes, {} packets, {} {} ({price})",
        if h.interfaces.is_empty() { "(no interfaces)".to_owned() } else { h.interfaces.join(", ") },
        h.total_bytes,
        h.total_packets,
        h.total_cost,
        s.currency
    );
    let _ =
        writeln!(out, "\n{:<48} {:>14} {:>10} {:>14}", "CGROUP", "BYTES", "PACKETS", format!("COST ({})", s.currency));
    for r in &h.by_cgroup {
        let _ = writeln!(out, "{:<48} {:>14} {:>10} {:>14}", r.cgroup, r.bytes, r.packets, r.cost);
    }
    out
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
        if let Some(p) = &a.paused {
            let what = if p.kind == "checkpoint" { "at a checkpoint (governor ack lifts it)" } else { "paused" };
            let by = p.by.as_deref().map_or(String::new(), |b| format!(", by {b}"));
            let _ = writeln!(out, "  {what} for {} s since {}: {}{by}", p.waited_seconds, p.since, p.reason);
        }
        for e in &a.endpoints {
            row(&mut out, &format!("  {}", e.endpoint), "", "", &e.counters);
        }
    }
    let _ = writeln!(out, "\n{}", budget_table(s));
    let _ = writeln!(
        out,
        "deny events: {} received, {} lost (counters unaffected), {} malformed; notices: {} sent, {} failed, {} pending",
        s.events.received,
        s.events.lost,
        s.events.malformed,
        s.notifications.sent,
        s.notifications.failed,
        s.notifications.pending
    );
    let u = &s.uncounted;
    if u.verdicts + u.bytes + u.packets > 0 {
        let _ = writeln!(
            out,
            "uncounted (the kernel's maps were full): {} verdicts, {} bytes in {} packets; see `governor status --json` .uncounted",
            u.verdicts, u.bytes, u.packets
        );
    }
    let d = &s.dns;
    let count = |result: &str| d.queries.values().filter_map(|r| r.get(result)).sum::<u64>();
    let _ = writeln!(
        out,
        "dns: resolvers {} via proxy port {}; queries {} admitted, {} refused, {} relayed unallowed (observe), {} servfail; cache {} of {} names, {} addresses, {} evicted",
        if d.resolvers.is_empty() { "none (agents' DNS is refused)".to_owned() } else { d.resolvers.join(", ") },
        d.proxy_port,
        count("admitted"),
        count("refused") + count("refused-query"),
        count("not-allowed"),
        count("servfail"),
        d.cache.names,
        d.cache.max_names,
        d.cache.addresses,
        d.cache.evictions
    );
    out
}

/// Budgets: spend against limit per agent, and the host's.
pub fn budget_table(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<10} {:>14} {:>14} {:>6} {:<14} {:<21} {:>14}",
        "BUDGET",
        "STATE",
        format!("SPEND ({})", s.currency),
        "LIMIT",
        "USED",
        "WINDOW",
        "WINDOW ENDS",
        "TOTAL SPEND"
    );
    let row = |out: &mut String, owner: &str, b: &BudgetStatus| {
        let limit = match (b.state.as_str(), &b.limit) {
            (_, None) => "no budget".to_owned(),
            ("zero", Some(_)) => "0 (zero)".to_owned(),
            (_, Some(l)) => l.clone(),
        };
        let used = b.percent_used.map_or_else(|| "-".to_owned(), |p| format!("{p}%"));
        let ends = b.window_end.clone().unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:>14} {:>14} {:>6} {:<14} {:<21} {:>14}",
            owner, b.state, b.window_spend, limit, used, b.window, ends, b.spent_total
        );
    };
    if let Some(h) = &s.host_budget {
        row(&mut out, "(host)", h);
    }
    for a in &s.agents {
        if let Some(b) = &a.budget {
            row(&mut out, &a.name, b);
        }
    }
    out
}
