//! Prometheus exporter. Each scrape renders a fresh registry from one `Status`, so the numbers
//! are exactly those `governor status` shows, and counters are the kernel's own totals.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use prometheus::{
    CounterVec, Encoder as _, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

use crate::{accounting::books::BudgetStatus, accounting::money::PICO, governor::Governor, status::Status};

/// The label naming the host-wide budget in budget metrics.
pub const HOST_LABEL: &str = "(host)";

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

/// Registers a newly made metric with `r` and hands it back.
fn register<M: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<M>) -> Result<M, String> {
    let m = made.map_err(|e| e.to_string())?;
    r.register(Box::new(m.clone())).map_err(|e| e.to_string())?;
    Ok(m)
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, String> {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn money_counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<CounterVec, String> {
    register(r, CounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<GaugeVec, String> {
    register(r, GaugeVec::new(Opts::new(name, help), labels))
}

/// Pico-units as currency units: the only place money becomes a float.
fn units(pico: u64) -> f64 {
    pico as f64 / PICO as f64
}

struct BudgetMetrics {
    limit: GaugeVec,
    window_spend: GaugeVec,
    remaining: GaugeVec,
    used: GaugeVec,
    crossed: GaugeVec,
    suspended: GaugeVec,
}

impl BudgetMetrics {
    fn new(r: &Registry) -> Result<Self, String> {
        Ok(Self {
            limit: gauge(
                r,
                "governor_budget_limit",
                "Budget limit per window, in currency units (agent \"(host)\": the host-wide budget).",
                &["agent", "currency"],
            )?,
            window_spend: gauge(
                r,
                "governor_budget_window_spend",
                "Spend in the current budget window, in currency units.",
                &["agent", "currency"],
            )?,
            remaining: gauge(
                r,
                "governor_budget_remaining",
                "Budget left in the current window, in currency units.",
                &["agent", "currency"],
            )?,
            used: gauge(
                r,
                "governor_budget_used_ratio",
                "Window spend over the limit (1 when suspended at the ceiling or for a zero budget).",
                &["agent"],
            )?,
            crossed: gauge(
                r,
                "governor_budget_threshold_crossed",
                "1 once the threshold (percent) is crossed in the current window.",
                &["agent", "threshold"],
            )?,
            suspended: gauge(
                r,
                "governor_budget_suspended",
                "1 while the budget is exhausted and the agent (or, for \"(host)\", every agent) is suspended.",
                &["agent"],
            )?,
        })
    }

    fn set(&self, owner: &str, currency: &str, b: &BudgetStatus) {
        let suspended = b.state == "suspended";
        self.suspended.with_label_values(&[owner]).set(f64::from(u8::from(suspended)));
        self.window_spend.with_label_values(&[owner, currency]).set(units(b.window_spend_pico));
        for t in &b.thresholds {
            let crossed = b.thresholds_crossed.contains(t);
            self.crossed.with_label_values(&[owner, &t.to_string()]).set(f64::from(u8::from(crossed)));
        }
        if let Some(limit) = b.limit_pico {
            self.limit.with_label_values(&[owner, currency]).set(units(limit));
            self.remaining.with_label_values(&[owner, currency]).set(units(limit.saturating_sub(b.window_spend_pico)));
            let ratio = if suspended || limit == 0 { 1.0 } else { b.window_spend_pico as f64 / limit as f64 };
            self.used.with_label_values(&[owner]).set(ratio);
        }
    }
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
        "connect() and UDP sendmsg() calls by agent, endpoint and verdict (allowed, denied, would_deny); denials also by reason (not-allowlisted, budget, paused, checkpoint, rate-limit, concurrency, socket-type, dns-resolver).",
        &["agent", "endpoint", "reason", "verdict"],
    )?;
    let state = register(
        &r,
        IntGaugeVec::new(
            Opts::new("governor_agent_state", "1 for the agent's current state (enforcing, observing, absent)."),
            &["agent", "state"],
        ),
    )?;
    let received = register(
        &r,
        IntCounter::new("governor_events_received_total", "Deny events read from the kernel ring buffer."),
    )?;
    let lost = register(
        &r,
        IntCounter::new(
            "governor_events_lost_total",
            "Deny events the kernel dropped because the ring buffer was full; counters are unaffected.",
        ),
    )?;
    let malformed =
        register(&r, IntCounter::new("governor_events_malformed_total", "Ring buffer records rejected as malformed."))?;
    let agents = register(&r, IntGauge::new("governor_agents", "Agents known to the daemon."))?;
    let info = register(
        &r,
        IntGaugeVec::new(
            Opts::new("governor_build_info", "Always 1; labels name the running version and policy."),
            &["version", "config_sha256"],
        ),
    )?;
    let endpoint_spend = money_counter(
        &r,
        "governor_spend_total",
        "Spend by agent and endpoint at the current prices, in currency units.",
        &["agent", "endpoint", "currency"],
    )?;
    let agent_spend = money_counter(
        &r,
        "governor_agent_spend_total",
        "Everything charged to the agent (the kernel's own total), in currency units.",
        &["agent", "currency"],
    )?;
    let budgets = BudgetMetrics::new(&r)?;
    let crossings = counter(
        &r,
        "governor_budget_threshold_crossings_total",
        "Threshold crossings since the daemon started.",
        &["agent", "threshold"],
    )?;
    let suspensions = counter(
        &r,
        "governor_suspensions_total",
        "Suspensions at the budget ceiling since the daemon started.",
        &["agent"],
    )?;
    let notifications = counter(
        &r,
        "governor_notifications_total",
        "Notices handed to the hooks, by result (sent, failed).",
        &["result"],
    )?;
    let pending =
        register(&r, IntGauge::new("governor_notifications_pending", "Notices recorded and not yet delivered."))?;
    let cur = s.currency.as_str();
    let write_errors = counter(
        &r,
        "governor_write_errors_total",
        "Audit records and state saves that could not be written (enforcement continues; control commands are refused while the audit log cannot be written).",
        &["what"],
    )?;
    write_errors.with_label_values(&["audit"]).inc_by(s.write_errors.audit);
    write_errors.with_label_values(&["state"]).inc_by(s.write_errors.state);
    let egress_bytes = counter(
        &r,
        "governor_host_egress_bytes_total",
        "Bytes the host sent out of its uplinks, by sending cgroup (agents or not).",
        &["cgroup"],
    )?;
    let egress_packets = counter(
        &r,
        "governor_host_egress_packets_total",
        "Packets the host sent out of its uplinks, by sending cgroup.",
        &["cgroup"],
    )?;
    let egress_cost = money_counter(
        &r,
        "governor_host_egress_cost_total",
        "The host's egress bill by sending cgroup, at host.egress_price_per_gib, in currency units.",
        &["cgroup", "currency"],
    )?;
    for row in &s.host_egress.by_cgroup {
        egress_bytes.with_label_values(&[row.cgroup.as_str()]).inc_by(row.bytes);
        egress_packets.with_label_values(&[row.cgroup.as_str()]).inc_by(row.packets);
        egress_cost.with_label_values(&[row.cgroup.as_str(), cur]).inc_by(units(row.cost_pico));
    }

    if let Some(b) = &s.host_budget {
        budgets.set(HOST_LABEL, cur, b);
    }
    for (key, n) in &s.threshold_crossings {
        if let Some((owner, pct)) = key.rsplit_once(':') {
            crossings.with_label_values(&[owner, pct]).inc_by(*n);
        }
    }
    for (owner, n) in &s.suspensions {
        suspensions.with_label_values(&[owner.as_str()]).inc_by(*n);
    }
    notifications.with_label_values(&["sent"]).inc_by(s.notifications.sent);
    notifications.with_label_values(&["failed"]).inc_by(s.notifications.failed);
    pending.set(i64::try_from(s.notifications.pending).unwrap_or(i64::MAX));
    let paused = gauge(
        &r,
        "governor_agent_paused",
        "1 while the agent is paused, by kind (operator, checkpoint).",
        &["agent", "kind"],
    )?;
    let pending = gauge(
        &r,
        "governor_checkpoint_pending_seconds",
        "How long the agent has waited at a checkpoint for `governor ack`.",
        &["agent"],
    )?;
    for a in &s.agents {
        if let Some(p) = &a.paused {
            paused.with_label_values(&[a.name.as_str(), p.kind.as_str()]).set(1.0);
            if p.kind == "checkpoint" {
                pending.with_label_values(&[a.name.as_str()]).set(p.waited_seconds as f64);
            }
        }
    }
    for a in &s.agents {
        state.with_label_values(&[a.name.as_str(), a.state.as_str()]).set(1);
        if let Some(b) = &a.budget {
            budgets.set(&a.name, cur, b);
            agent_spend.with_label_values(&[a.name.as_str(), cur]).inc_by(units(b.spent_total_pico));
        }
        for e in &a.endpoints {
            let l = |x: &'static str| [a.name.clone(), e.endpoint.clone(), x.to_owned()];
            let c = &e.counters;
            bytes.with_label_values(&l("egress")).inc_by(c.tx_bytes);
            bytes.with_label_values(&l("ingress")).inc_by(c.rx_bytes);
            packets.with_label_values(&l("egress")).inc_by(c.tx_packets);
            packets.with_label_values(&l("ingress")).inc_by(c.rx_packets);
            let v = |reason: &str, verdict: &str| {
                [a.name.clone(), e.endpoint.clone(), reason.to_owned(), verdict.to_owned()]
            };
            conns.with_label_values(&v("", "allowed")).inc_by(c.allowed);
            conns.with_label_values(&v("", "would_deny")).inc_by(c.would_deny);
            // The kernel counts refusals by reason; summed over reasons they are `denied`.
            for (reason, n) in &c.denied_by_reason {
                conns.with_label_values(&v(reason, "denied")).inc_by(*n);
            }
            endpoint_spend.with_label_values(&[a.name.as_str(), e.endpoint.as_str(), cur]).inc_by(units(e.spend_pico));
        }
    }
    let uncounted = counter(
        &r,
        "governor_uncounted_total",
        "What the kernel could count in no (agent, endpoint) pair because a map was full: verdicts, bytes, packets.",
        &["what"],
    )?;
    uncounted.with_label_values(&["verdicts"]).inc_by(s.uncounted.verdicts);
    uncounted.with_label_values(&["bytes"]).inc_by(s.uncounted.bytes);
    uncounted.with_label_values(&["packets"]).inc_by(s.uncounted.packets);
    let dns_queries = counter(
        &r,
        "governor_dns_queries_total",
        "Agents' DNS queries through the proxy, by result (admitted, not-allowed, servfail, dropped).",
        &["agent", "result"],
    )?;
    for (agent, results) in &s.dns.queries {
        for (result, n) in results {
            dns_queries.with_label_values(&[agent.as_str(), result.as_str()]).inc_by(*n);
        }
    }
    let cache_names = register(
        &r,
        Gauge::new("governor_dns_cache_names", "(agent, name) pairs in the DNS name cache (bound: dns.max_names)."),
    )?;
    cache_names.set(s.dns.cache.names as f64);
    let cache_addresses = register(
        &r,
        Gauge::new(
            "governor_dns_cache_addresses",
            "Addresses admitted from DNS answers now in the kernel's allowlist.",
        ),
    )?;
    cache_addresses.set(s.dns.cache.addresses as f64);
    let evictions = register(
        &r,
        IntCounter::new(
            "governor_dns_cache_evictions_total",
            "Names and addresses evicted (least recently used) to keep the DNS cache within dns.max_names and dns.max_addresses_per_name.",
        ),
    )?;
    evictions.inc_by(s.dns.cache.evictions);
    received.inc_by(s.events.received);
    lost.inc_by(s.events.lost);
    malformed.inc_by(s.events.malformed);
    agents.set(i64::try_from(s.agents.len()).unwrap_or(i64::MAX));
    info.with_label_values(&[s.version.as_str(), s.config_sha256.as_str()]).set(1);

    let mut out = Vec::new();
    TextEncoder::new().encode(&r.gather(), &mut out).map_err(|e| e.to_string())?;
    String::from_utf8(out).map_err(|e| e.to_string())
}
