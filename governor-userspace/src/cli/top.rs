//! `governor top`: every agent's state, spend, rates, budget and pending checkpoint, refreshed
//! every second. Plain ANSI (home and clear), so it works over SSH in any terminal.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::Duration,
};

use crate::{control::Client, status::Status};

/// Bytes sent, bytes received and connections allowed, by agent, at the previous refresh.
type Totals = HashMap<String, (u64, u64, u64)>;

pub async fn run(count: Option<u64>, socket: &Path) -> anyhow::Result<()> {
    let client = Client::new(socket);
    let mut previous: Option<(std::time::Instant, Totals)> = None;
    let mut n = 0;
    loop {
        let s: Status = client.get_json("/v1/status").await?;
        let now = std::time::Instant::now();
        let text = frame(&s, previous.as_ref().map(|(t, m)| (now.duration_since(*t), m)));
        // On a terminal each frame replaces the last (cursor home, clear); piped, frames follow
        // each other as plain text.
        let mut out = std::io::stdout().lock();
        if out.is_terminal() {
            write!(out, "\x1b[H\x1b[2J{text}")?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        drop(out);
        previous = Some((
            now,
            s.agents
                .iter()
                .map(|a| (a.name.clone(), (a.totals.tx_bytes, a.totals.rx_bytes, a.totals.allowed)))
                .collect(),
        ));
        n += 1;
        if count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn frame(s: &Status, previous: Option<(Duration, &Totals)>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "governor {} — {} agents — {} (Ctrl-C to leave)\n", s.version, s.agents.len(), s.currency);
    let _ = writeln!(
        out,
        "{:<20} {:<11} {:>12} {:>6} {:>11} {:>11} {:>7} {:>7}  PENDING",
        "AGENT", "STATE", "SPEND", "USED", "TX/s", "RX/s", "CONN/s", "DENIED"
    );
    for a in &s.agents {
        let rate = |now: u64, idx: usize| -> String {
            previous
                .and_then(|(dt, m)| {
                    m.get(&a.name)
                        .map(|p| [p.0, p.1, p.2][idx])
                        .map(|was| (now.saturating_sub(was) as f64 / dt.as_secs_f64().max(0.001)) as u64)
                })
                .map_or("-".into(), |r| r.to_string())
        };
        let (spend, used) = a.budget.as_ref().map_or(("-".into(), "-".into()), |b| {
            (b.window_spend.clone(), b.percent_used.map_or("-".into(), |p| format!("{p}%")))
        });
        let pending =
            a.paused.as_ref().map_or(String::new(), |p| format!("{}: {} ({} s)", p.kind, p.reason, p.waited_seconds));
        let _ = writeln!(
            out,
            "{:<20} {:<11} {:>12} {:>6} {:>11} {:>11} {:>7} {:>7}  {}",
            a.name,
            a.state,
            spend,
            used,
            rate(a.totals.tx_bytes, 0),
            rate(a.totals.rx_bytes, 1),
            rate(a.totals.allowed, 2),
            a.totals.denied,
            pending
        );
    }
    if let Some(h) = &s.host_budget {
        let _ = writeln!(
            out,
            "\nhost budget: {} of {} ({})",
            h.window_spend,
            h.limit.as_deref().unwrap_or("no limit"),
            h.state
        );
    }
    out
}
