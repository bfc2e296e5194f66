//! Prometheus exporter. Each scrape renders a fresh registry from one `Status`, so the numbers
//! are exactly those `governor status` shows, and counters are the kernel's own totals.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus::{Encoder as _, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::{governor::Governor, status::Status};

pub async fn serve(listener: tokio::net::TcpListener, governor: Arc<Governor>) -> anyhow::Result<()> {
    let app = Router::new().route("/metrics", get(scrape)).with_state(governor);
    axum::serve(listener, app).await.context("metrics server failed")
}

async fn scrape(State(g): State<Arc<Governor>>) -> impl IntoResponse {
    let rendered = tokio::task::spawn_blocking(move || g.status().map_err(|e| e.to_string()).and_then(|s| render(&s)))
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("# scrape failed: {e}\n")).into_response(),
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, String> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| e.to_string())?;
    r.register(Box::new(c.clone())).map_err(|e| e.to_string())?;
    Ok(c)
}

/// The text exposition of `s`.
pub fn render(s: &Status) -> Result<String, String> {
    let r = Registry::new();
    let bytes = counter(
        &r,
        "governor_bytes_total",
        "Bytes (L3, as the cgroup_skb hooks see them) by agent, endpoint and direction.",
        &["agent", "endpoint", "direction"],
    )?;
    let packets = counter(
        &r,
        "governor_packets_total",
        "Packets by agent, endpoint and direction.",
        &["agent", "endpoint", "direction"],
    )?;
    let conns = counter(
        &r,
        "governor_connections_total",
        "connect() and UDP sendmsg() calls by agent, endpoint and verdict (allowed, denied, would_deny).",
        &["agent", "endpoint", "verdict"],
    )?;
    let state = IntGaugeVec::new(
        Opts::new("governor_agent_state", "1 for the agent's current state (enforcing, observing, absent)."),
        &["agent", "state"],
    )
    .map_err(|e| e.to_string())?;
    r.register(Box::new(state.clone())).map_err(|e| e.to_string())?;
    let received = counter(&r, "governor_events_received_total", "Deny events read from the kernel ring buffer.", &[])?;
    let lost = counter(
        &r,
        "governor_events_lost_total",
        "Deny events the kernel dropped because the ring buffer was full; counters are unaffected.",
        &[],
    )?;
    let malformed = counter(&r, "governor_events_malformed_total", "Ring buffer records rejected as malformed.", &[])?;
    let agents = IntGauge::new("governor_agents", "Agents known to the daemon.").map_err(|e| e.to_string())?;
    r.register(Box::new(agents.clone())).map_err(|e| e.to_string())?;
    let info = IntGaugeVec::new(
        Opts::new("governor_build_info", "Always 1; labels name the running version and policy."),
        &["version", "config_sha256"],
    )
    .map_err(|e| e.to_string())?;
    r.register(Box::new(info.clone())).map_err(|e| e.to_string())?;

    for a in &s.agents {
        state.with_label_values(&[a.name.as_str(), a.state.as_str()]).set(1);
        for e in &a.endpoints {
            let l = |x: &'static str| [a.name.clone(), e.endpoint.clone(), x.to_owned()];
            let c = &e.counters;
            bytes.with_label_values(&l("egress")).inc_by(c.tx_bytes);
            bytes.with_label_values(&l("ingress")).inc_by(c.rx_bytes);
            packets.with_label_values(&l("egress")).inc_by(c.tx_packets);
            packets.with_label_values(&l("ingress")).inc_by(c.rx_packets);
            conns.with_label_values(&l("allowed")).inc_by(c.allowed);
            conns.with_label_values(&l("denied")).inc_by(c.denied);
            conns.with_label_values(&l("would_deny")).inc_by(c.would_deny);
        }
    }
    received.with_label_values(&[] as &[&str]).inc_by(s.events.received);
    lost.with_label_values(&[] as &[&str]).inc_by(s.events.lost);
    malformed.with_label_values(&[] as &[&str]).inc_by(s.events.malformed);
    agents.set(i64::try_from(s.agents.len()).unwrap_or(i64::MAX));
    info.with_label_values(&[s.version.as_str(), s.config_sha256.as_str()]).set(1);

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
