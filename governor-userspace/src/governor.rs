//! The running governor's shared state, the one function that turns kernel counters, agents and
//! books into a `Status`, and the recording of notices. Servers and tasks hold an `Arc<Governor>`.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use governor_common::{ENDPOINT_UNLISTED, Prices};
use serde_json::json;
use tokio::sync::mpsc;

use crate::{
    accounting::{
        books::{Books, cost},
        budget::Notice,
        money::Money,
        state::{self, HOST},
        window::rfc3339,
    },
    agents::AgentTable,
    audit::AuditLog,
    cgroup::{AgentsRoot, Cgroup2Mount},
    config::{LoadedConfig, Mode},
    kernel::{AgentCounters, Denial, KernelError, KernelMaps, sockets},
    policy::Policy,
    status::{
        AgentStatus, DenialRecord, EndpointStatus, EventStats, HostEgressRow, HostEgressStatus, NotificationStats,
        PauseStatus, Status, UNLISTED_ENDPOINT, WriteErrors,
    },
};

/// How many recent deny events status keeps.
const RECENT_DENIALS: usize = 100;

/// Example destinations kept per aggregated denial record.
const DENIAL_EXAMPLES: usize = 3;

#[derive(Default)]
pub struct EventLog {
    pub received: u64,
    pub malformed: u64,
    pub recent: VecDeque<Denial>,
    /// Denials since the last flush to the audit log, by (agent id, reason, verdict, hook):
    /// a count, a few example destinations and the pids that tried. A scan of a million
    /// addresses makes a few records a second, not a million.
    pub pending: BTreeMap<DenialKey, (u64, Vec<String>, Vec<u32>)>,
}

/// What denials are aggregated by in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DenialKey {
    pub agent_id: u32,
    pub reason: String,
    pub verdict: String,
    pub hook: String,
}

impl EventLog {
    /// A deny event from the kernel's ring buffer.
    pub fn push(&mut self, d: Denial) {
        self.received += 1;
        self.record(d);
    }

    /// A denial the daemon itself made (the DNS proxy's refusals): aggregated and shown like
    /// the kernel's, not counted as a ring buffer event.
    pub fn record(&mut self, d: Denial) {
        let key = DenialKey {
            agent_id: d.agent_id,
            reason: d.reason.clone(),
            verdict: d.verdict.clone(),
            hook: d.hook.clone(),
        };
        let entry = self.pending.entry(key).or_default();
        entry.0 += 1;
        if entry.1.len() < DENIAL_EXAMPLES
            && let Some(dest) = &d.destination
            && !entry.1.contains(dest)
        {
            entry.1.push(dest.clone());
        }
        // Packet-path refusals have no task (pid 0): name only real pids.
        if d.pid != 0 && entry.2.len() < DENIAL_EXAMPLES && !entry.2.contains(&d.pid) {
            entry.2.push(d.pid);
        }
        if self.recent.len() == RECENT_DENIALS {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }
}

/// What changes together: the kernel maps, the agents registered in them, and the books.
pub struct Core {
    pub maps: KernelMaps,
    pub agents: AgentTable,
    pub books: Books,
    /// Addresses admitted from DNS answers (they live in `maps` too).
    pub names: crate::dns::cache::NameCache,
}

/// Counts since the daemon started, for metrics.
#[derive(Default)]
pub struct Tally {
    pub threshold_crossings: BTreeMap<(String, u8), u64>,
    pub suspensions: BTreeMap<String, u64>,
    pub notifications: NotificationStats,
    /// Notices recorded and not yet delivered (saved with the state).
    pub outbox: Vec<serde_json::Value>,
    pub next_notice: u64,
    /// Per agent: the totals at the last traffic summary written to the audit log.
    pub summarized: BTreeMap<String, AgentCounters>,
    /// Ring buffer losses already written to the audit log, and when that was checked.
    pub lost_recorded: (u64, i64),
    /// The wall clock and a monotonic clock at the last tick, to notice clock jumps.
    pub clocks: Option<(i64, std::time::Instant)>,
    /// Audit records and state saves that could not be written (a full or failing disk).
    pub audit_errors: u64,
    pub state_errors: u64,
    /// Refused control requests since the last flush, by (uid, action, agent, why): a count and
    /// the callers' pids. Written as aggregated records like denials, so a caller looping refused
    /// requests writes a few records a second, not one fsync'd record each.
    pub refused: BTreeMap<RefusalKey, Refusals>,
}

/// What refused control requests are aggregated by: the caller's uid, the action, and why they
/// were refused (not the agent named: a caller chooses that freely).
pub type RefusalKey = (Option<u32>, String, String);

/// Refused requests of one key since the last flush: how many, the first caller, their pids,
/// a few of the agents they named.
pub type Refusals = (u64, serde_json::Value, Vec<i32>, Vec<String>);

pub struct Governor {
    /// Swapped whole by a reload; readers take a snapshot with `config()` / `policy()`.
    pub config: std::sync::RwLock<Arc<LoadedConfig>>,
    pub policy: std::sync::RwLock<Arc<Policy>>,
    /// Where the configuration is read from on reload (None: the embedded default).
    pub config_path: Option<PathBuf>,
    /// Every endpoint any loaded policy had (name, prices), so counters of an endpoint a
    /// reload removed keep their name and cost.
    pub known_endpoints: Mutex<BTreeMap<u32, (String, Prices)>>,
    pub mount: Cgroup2Mount,
    pub root: AgentsRoot,
    pub metrics_address: SocketAddr,
    pub state_dir: PathBuf,
    pub core: Mutex<Core>,
    pub events: Mutex<EventLog>,
    pub audit: Mutex<AuditLog>,
    pub tally: Mutex<Tally>,
    pub notify: Option<mpsc::Sender<serde_json::Value>>,
    /// Uplinks the host's egress is counted on.
    pub host_interfaces: Vec<String>,
    /// The kernel's ids of our programs, for their run statistics.
    pub program_ids: Vec<(&'static str, u32)>,
    /// Who may read and who may control, for the control socket.
    pub groups: Arc<crate::control::auth::AccessGroups>,
    /// The DNS proxy's port, resolvers and counters.
    pub dns: crate::dns::proxy::DnsState,
    /// Cgroup id -> path cache for naming host egress, refreshed at most once a second.
    pub cgroup_paths: Mutex<(Option<std::time::Instant>, std::collections::HashMap<u64, String>)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain data behind, still valid to read.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Governor {
    pub fn config(&self) -> Arc<LoadedConfig> {
        self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    pub fn events(&self) -> MutexGuard<'_, EventLog> {
        lock(&self.events)
    }

    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        lock(&self.tally)
    }

    /// Appends an audit record; failures are logged (the caller decides whether to go on).
    pub fn audit(
        &self,
        kind: &str,
        agent: Option<&str>,
        details: serde_json::Value,
    ) -> Result<u64, crate::audit::AuditError> {
        let r = lock(&self.audit).append(kind, agent, details);
        if let Err(e) = &r {
            self.tally().audit_errors += 1;
            tracing::error!(error = %e, kind, "audit record not written; enforcement continues, control commands are refused until it can be");
        }
        r
    }

    /// Remembers `policy`'s endpoints (at start and on every reload).
    pub fn learn_endpoints(&self, policy: &Policy) {
        let mut known = lock(&self.known_endpoints);
        known.insert(governor_common::ENDPOINT_DNS, ("dns".to_owned(), Prices::default()));
        for e in &policy.endpoints {
            known.insert(e.id, (e.name.clone(), e.prices));
        }
    }

    fn endpoint_prices(&self, id: u32) -> Prices {
        lock(&self.known_endpoints).get(&id).map_or_else(Prices::default, |(_, p)| *p)
    }

    /// The name of endpoint `id`, as status shows it.
    pub fn endpoint_name(&self, id: u32) -> String {
        if id == ENDPOINT_UNLISTED {
            return UNLISTED_ENDPOINT.to_owned();
        }
        lock(&self.known_endpoints).get(&id).map_or_else(|| format!("(endpoint {id:#x})"), |(n, _)| n.clone())
    }

    /// Advances the books and records what must be told. Order matters for "never repeat,
    /// never lose": the state (with the crossing and the outbox entry) is saved first, then the
    /// audit record is written, then the notice is queued for the hooks.
    pub fn tick(&self, now: i64, force_save: bool) -> Result<(), KernelError> {
        self.notice_clock_jump(now);
        self.flush_denials();
        self.flush_refusals();
        self.record_event_gap(now)?;
        let (notices, checkpoints, saved) = {
            let mut core = self.core();
            let Core { maps, books, .. } = &mut *core;
            let notices = books.tick(now, force_save, maps)?;
            let checkpoints = books.checkpoints(now, maps)?;
            // Copied only when it will be written: with a thousand agents the copy is most of
            // an idle tick's work.
            let save = force_save || !notices.is_empty() || !checkpoints.is_empty();
            (notices, checkpoints, save.then(|| books.saved(now, Vec::new())))
        };
        for (agent, milestone) in &checkpoints {
            tracing::warn!(agent, milestone, "checkpoint reached: paused until `governor ack`");
            let _ = self.audit("checkpoint", Some(agent), json!({ "milestone": milestone }));
            if let Some(tx) = &self.notify {
                let body = json!({ "id": format!("{agent}-checkpoint-{now}"), "kind": "checkpoint", "scope": "agent", "agent": agent, "milestone": milestone, "time": rfc3339(now) });
                self.tally().outbox.push(body.clone());
                let _ = tx.try_send(body);
            }
        }
        let mut queued = Vec::new();
        {
            let mut tally = self.tally();
            for (owner, notice) in &notices {
                match notice {
                    Notice::ThresholdCrossed { percent, .. } => {
                        *tally.threshold_crossings.entry((owner.clone(), *percent)).or_default() += 1
                    }
                    Notice::Suspended { .. } => *tally.suspensions.entry(owner.clone()).or_default() += 1,
                    _ => {}
                }
                tally.next_notice += 1;
                let body = self.notice_body(owner, notice, now, tally.next_notice);
                tally.outbox.push(body.clone());
                queued.push((owner.clone(), notice.clone(), body));
            }
        }
        if let Some(saved) = saved {
            self.save_state(saved);
        }
        for (owner, notice, mut body) in queued {
            log_notice(&owner, &notice, &self.policy().currency);
            if matches!(notice, Notice::Suspended { .. }) {
                body["connections_ended"] = self.end_connections(&owner);
            }
            let agent = (owner != HOST).then_some(owner.as_str());
            let _ = self.audit(body["kind"].as_str().unwrap_or("notice"), agent, body.clone());
            if let Some(tx) = &self.notify {
                // Full queue: the notice stays in the outbox and is delivered after a restart.
                let _ = tx.try_send(body);
            } else {
                self.tally().outbox.retain(|b| b["id"] != body["id"]);
            }
        }
        Ok(())
    }

    /// Ends the established connections of `owner` (every agent, for the host budget), so a
    /// suspended agent sees an error rather than a hang. Returns what was done, for the record.
    fn end_connections(&self, owner: &str) -> serde_json::Value {
        let dirs: Vec<PathBuf> = {
            let core = self.core();
            core.agents
                .iter()
                .filter(|a| owner == HOST || a.name == owner)
                .map(|a| self.root.agent_path(&a.cgroup))
                .collect()
        };
        let started = std::time::Instant::now();
        let cgroups = dirs.iter().flat_map(|d| sockets::cgroup_tree_ids(d)).collect();
        match sockets::destroy_in_cgroups(&cgroups) {
            Ok(sweep) => {
                let micros = started.elapsed().as_micros() as u64;
                tracing::info!(
                    owner,
                    destroyed = sweep.destroyed,
                    examined = sweep.examined,
                    micros,
                    "ended the suspended agent's connections"
                );
                json!({ "destroyed": sweep.destroyed, "failed": sweep.failed, "examined": sweep.examined, "micros": micros })
            }
            Err(e) => {
                tracing::error!(owner, error = %e, "could not end the suspended agent's connections; their packets are still dropped");
                json!({ "error": e.to_string() })
            }
        }
    }

    /// Writes one `traffic` record per agent whose counters moved since the last summary: the
    /// allowed side of the audit trail (the kernel counters keep every single connection).
    pub fn summarize_traffic(&self) {
        let Ok(status) = self.status() else { return };
        let mut tally = self.tally();
        for a in &status.agents {
            let last = tally.summarized.get(&a.name).cloned().unwrap_or_default();
            if last == a.totals {
                continue;
            }
            let d = |now: u64, was: u64| now.saturating_sub(was);
            let details = json!({
                "allowed": d(a.totals.allowed, last.allowed),
                "denied": d(a.totals.denied, last.denied),
                "would_deny": d(a.totals.would_deny, last.would_deny),
                "tx_bytes": d(a.totals.tx_bytes, last.tx_bytes),
                "rx_bytes": d(a.totals.rx_bytes, last.rx_bytes),
                "window_spend": a.budget.as_ref().map(|b| b.window_spend.clone()),
            });
            if self.audit("traffic", Some(&a.name), details).is_ok() {
                tally.summarized.insert(a.name.clone(), a.totals.clone());
            }
        }
    }

    /// Compares how far the wall clock moved since the last tick with how far a monotonic clock
    /// did; a difference of 2 s or more is a jump (an operator or NTP set the clock), which the
    /// rolling windows are told about and the audit log records.
    fn notice_clock_jump(&self, now: i64) {
        let mono = std::time::Instant::now();
        let last = self.tally().clocks.replace((now, mono));
        let Some((wall, then)) = last else { return };
        let jump = (now - wall) - mono.duration_since(then).as_secs() as i64;
        if jump.abs() < 2 {
            return;
        }
        tracing::warn!(seconds = jump, "the wall clock jumped; rolling budget windows keep their elapsed time");
        self.core().books.clock_jumped(jump);
        let _ = self.audit("clock_jump", None, json!({ "seconds": jump, "wall_clock": rfc3339(now) }));
    }

    /// Writes a gap record when the kernel dropped deny events (ring buffer full): how many, and
    /// between which times. The counts are unaffected: they live in maps.
    fn record_event_gap(&self, now: i64) -> Result<(), KernelError> {
        let lost = self.core().maps.events_lost()?;
        let (recorded, since) = self.tally().lost_recorded;
        if lost > recorded {
            tracing::warn!(
                lost = lost - recorded,
                "the kernel dropped deny events (ring buffer full); counters are unaffected"
            );
            let details = json!({ "count": lost - recorded, "from": rfc3339(since), "to": rfc3339(now), "counters": "unaffected" });
            if self.audit("events_lost", None, details).is_ok() {
                self.tally().lost_recorded = (lost, now);
            }
        } else {
            self.tally().lost_recorded = (recorded.max(lost), now);
        }
        Ok(())
    }

    /// Adds the queries the DNS proxy refused (enforce) or let through unallowed (observe) to
    /// the agent's `dns` endpoint, so status and metrics count them with the kernel's refusals
    /// (reasons `dns-name` and `dns-query`).
    fn add_dns_refusals(&self, agent: &str, endpoints: &mut Vec<EndpointStatus>, totals: &mut AgentCounters) {
        let stats = self.dns.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = |result: &'static str| stats.queries.get(&(agent.to_owned(), result)).copied().unwrap_or(0);
        let (name, query, observed) = (count("refused"), count("refused-query"), count("not-allowed"));
        if name + query + observed == 0 {
            return;
        }
        let mut add = AgentCounters { denied: name + query, would_deny: observed, ..AgentCounters::default() };
        for (reason, n) in [("dns-name", name), ("dns-query", query)].into_iter().filter(|(_, n)| *n > 0) {
            add.denied_by_reason.insert(reason.to_owned(), n);
        }
        totals.add(&add);
        let dns = "dns";
        match endpoints.iter_mut().find(|e| e.endpoint == dns) {
            Some(e) => e.counters.add(&add),
            None => endpoints.push(EndpointStatus {
                endpoint: dns.to_owned(),
                spend: crate::accounting::money::Money(0).to_string(),
                spend_pico: 0,
                limits: None,
                live_connections: None,
                counters: add,
            }),
        }
    }

    /// Writes the refused control requests gathered since the last flush, one record per
    /// (caller, action, agent, reason) with how many there were.
    pub fn flush_refusals(&self) {
        let refused = std::mem::take(&mut self.tally().refused);
        for ((_, action, why), (count, by, pids, agents)) in refused {
            let agent = (agents.len() == 1).then(|| agents[0].clone());
            let _ = self.audit(
                "control_refused",
                agent.as_deref(),
                json!({ "action": action, "by": by, "why": why, "count": count, "pids": pids, "agents": agents }),
            );
        }
    }

    /// Writes the denials gathered since the last flush as aggregated audit records.
    pub fn flush_denials(&self) {
        let pending = std::mem::take(&mut self.events().pending);
        if pending.is_empty() {
            return;
        }
        let names: BTreeMap<u32, String> = self.core().agents.iter().map(|a| (a.id, a.name.clone())).collect();
        for (DenialKey { agent_id, reason, verdict, hook }, (count, examples, pids)) in pending {
            let agent = names.get(&agent_id).cloned().unwrap_or_else(|| format!("(agent {agent_id:#x})"));
            let kind = if verdict == "would_deny" { "would_deny" } else { "denied" };
            let _ = self.audit(
                kind,
                Some(&agent),
                json!({ "reason": reason, "hook": hook, "count": count, "examples": examples, "pids": pids }),
            );
        }
    }

    fn notice_body(&self, owner: &str, notice: &Notice, now: i64, n: u64) -> serde_json::Value {
        let mut body = serde_json::to_value(notice).expect("notice serializes");
        let obj = body.as_object_mut().expect("notice is an object");
        let kind = obj.get("kind").and_then(|k| k.as_str()).unwrap_or("notice").to_owned();
        obj.insert("id".into(), json!(format!("{}-{kind}-{now}-{n}", owner.trim_matches(['(', ')']))));
        obj.insert("scope".into(), json!(if owner == HOST { "host" } else { "agent" }));
        obj.insert("agent".into(), if owner == HOST { serde_json::Value::Null } else { json!(owner) });
        obj.insert("time".into(), json!(rfc3339(now)));
        obj.insert("currency".into(), json!(self.policy().currency));
        for k in ["window_spend", "limit", "previous_spend"] {
            if let Some(v) = obj.get(k).and_then(|v| v.as_u64()) {
                obj.insert(k.into(), json!(Money(v).to_string()));
            }
        }
        body
    }

    /// Saves the books and the outbox; a failure is logged and enforcement goes on.
    pub fn save_state(&self, mut saved: state::SavedState) {
        saved.outbox = self.tally().outbox.clone();
        saved.agents_root = Some(self.root.path.display().to_string());
        if let Err(e) = state::save(&self.state_dir, &saved) {
            self.tally().state_errors += 1;
            tracing::error!(error = %e, "state not saved; spend is still enforced from the kernel maps");
        }
    }

    pub fn save_now(&self) {
        let saved = self.core().books.saved(unix_now(), Vec::new());
        self.save_state(saved);
    }

    /// Reads the kernel's counters now and assembles the full status.
    pub fn status(&self) -> Result<Status, KernelError> {
        let now = unix_now();
        let mut core = self.core();
        let Core { maps, books, .. } = &mut *core;
        books.refresh(maps)?;
        let counters = core.maps.counters()?;
        let lost = core.maps.events_lost()?;
        let host_egress = self.host_egress(&core.maps.host_egress()?);
        let endpoint_live = core.maps.endpoint_live();
        let policy = self.policy();
        // Built once: the per-(agent, endpoint) rows below look these up by key.
        let limited: std::collections::HashMap<u32, crate::policy::Limits> =
            policy.endpoints.iter().filter(|e| !e.limits.is_none()).map(|e| (e.id, e.limits)).collect();
        let compiled: std::collections::HashMap<u32, &crate::policy::CompiledAgent> =
            policy.agents.iter().map(|p| (p.id, p)).collect();

        let mut by_agent: BTreeMap<u32, Vec<(u32, AgentCounters)>> = BTreeMap::new();
        for (key, c) in counters {
            by_agent.entry(key.agent_id).or_default().push((key.endpoint_id, c));
        }

        let mut agent_status: Vec<AgentStatus> = core
            .agents
            .iter()
            .map(|a| {
                let mut totals = AgentCounters::default();
                let mut endpoints: Vec<EndpointStatus> = by_agent
                    .get(&a.id)
                    .into_iter()
                    .flatten()
                    .map(|(ep, c)| {
                        totals.add(c);
                        let spend = cost(c, &self.endpoint_prices(*ep));
                        let limits = limited
                            .get(ep)
                            .filter(|_| compiled.get(&a.id).is_some_and(|p| p.endpoints.contains(ep)))
                            .copied();
                        let key = governor_common::StatsKey { agent_id: a.id, endpoint_id: *ep };
                        EndpointStatus {
                            endpoint: self.endpoint_name(*ep),
                            spend: spend.to_string(),
                            spend_pico: spend.0,
                            live_connections: limits
                                .filter(|l| l.max_concurrent.is_some())
                                .map(|_| endpoint_live.get(&key).copied().unwrap_or(0)),
                            limits,
                            counters: c.clone(),
                        }
                    })
                    .collect();
                self.add_dns_refusals(&a.name, &mut endpoints, &mut totals);
                endpoints.sort_by(|x, y| x.endpoint.cmp(&y.endpoint));
                let budget = core.books.status(&a.name, now);
                let paused = core.books.account(&a.name).and_then(|acc| acc.paused.clone()).map(|p| PauseStatus {
                    waited_seconds: (now - p.since).max(0) as u64,
                    since: rfc3339(p.since),
                    kind: p.kind,
                    reason: p.reason,
                    by: p.by,
                });
                let state = match (a.cgroup_id, a.mode, &budget) {
                    _ if paused.as_ref().is_some_and(|p| p.kind == "checkpoint") => "checkpoint",
                    _ if paused.is_some() => "paused",
                    (_, _, Some(b)) if b.state == "suspended" => "suspended",
                    (None, _, _) => "absent",
                    (Some(_), Mode::Enforce, _) => "enforcing",
                    (Some(_), Mode::Observe, _) => "observing",
                };
                AgentStatus {
                    name: a.name.clone(),
                    cgroup: self.root.agent_path(&a.cgroup).display().to_string(),
                    cgroup_id: a.cgroup_id,
                    source: a.source,
                    mode: a.mode,
                    state: state.to_owned(),
                    totals,
                    budget,
                    paused,
                    limits: core.books.account(&a.name).map(|acc| acc.limits).unwrap_or_default(),
                    live_connections: core
                        .books
                        .account(&a.name)
                        .and_then(|acc| core.maps.spend(acc.slot).ok())
                        .map_or(0, |s| s.live),
                    endpoints,
                }
            })
            .collect();
        agent_status.sort_by(|a, b| a.name.cmp(&b.name));

        let events = self.events();
        let recent_denials = events
            .recent
            .iter()
            .map(|d| DenialRecord { agent: core.agents.get(d.agent_id).map(|a| a.name.clone()), denial: d.clone() })
            .collect();
        let tally = self.tally();

        Ok(Status {
            version: crate::VERSION.to_owned(),
            config_source: self.config().source_name.display().to_string(),
            config_sha256: self.config().sha256(),
            cgroup_mount: self.mount.mount_point.display().to_string(),
            agents_root: self.root.path.display().to_string(),
            metrics_address: self.metrics_address.to_string(),
            currency: self.policy().currency.clone(),
            programs: crate::kernel::program_stats(&self.program_ids),
            events: EventStats { received: events.received, lost, malformed: events.malformed },
            host_budget: core.books.status(HOST, now),
            host_egress,
            agents: agent_status,
            recent_denials,
            notifications: NotificationStats { pending: tally.outbox.len() as u64, ..tally.notifications },
            write_errors: WriteErrors { audit: tally.audit_errors, state: tally.state_errors },
            threshold_crossings: tally.threshold_crossings.iter().map(|((o, p), n)| (format!("{o}:{p}"), *n)).collect(),
            suspensions: tally.suspensions.clone(),
            dns: self.dns_status(&core),
            uncounted: core.maps.uncounted()?,
        })
    }
}

impl Governor {
    fn dns_status(&self, core: &Core) -> crate::status::DnsStatus {
        let stats = self.dns.stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut queries: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((agent, result), n) in &stats.queries {
            queries.entry(agent.clone()).or_default().insert((*result).to_owned(), *n);
        }
        crate::status::DnsStatus {
            proxy_port: self.dns.port,
            resolvers: self
                .dns
                .resolvers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(ToString::to_string)
                .collect(),
            queries,
            admitted_addresses: stats.admitted_addresses,
            cache: crate::status::DnsCacheStatus {
                names: core.names.names() as u64,
                max_names: self.policy().dns.max_names as u64,
                addresses: core.names.addresses() as u64,
                evictions: core.names.evictions,
            },
        }
    }

    /// Names and prices the host's egress counters.
    fn host_egress(&self, raw: &BTreeMap<u64, governor_common::HostEgress>) -> HostEgressStatus {
        let paths = {
            let mut cache = lock(&self.cgroup_paths);
            let stale = cache.0.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1));
            if stale && raw.keys().any(|id| *id != 0 && !cache.1.contains_key(id)) {
                *cache = (Some(std::time::Instant::now()), crate::cgroup::paths_by_id(&self.mount.mount_point));
            }
            cache.1.clone()
        };
        let price = self.policy().host_egress_byte_price;
        let mut rows: Vec<HostEgressRow> = raw
            .iter()
            .filter(|(_, e)| e.packets > 0)
            .map(|(id, e)| {
                let cost = Money(e.bytes.saturating_mul(price));
                let cgroup = match id {
                    0 => "(no socket)".to_owned(),
                    _ => paths.get(id).cloned().unwrap_or_else(|| "(removed)".to_owned()),
                };
                HostEgressRow {
                    cgroup_id: *id,
                    cgroup,
                    bytes: e.bytes,
                    packets: e.packets,
                    cost: cost.to_string(),
                    cost_pico: cost.0,
                }
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.bytes));
        let total_bytes = rows.iter().map(|r| r.bytes).sum::<u64>();
        HostEgressStatus {
            interfaces: self.host_interfaces.clone(),
            price_per_gib: self.config().config.host.egress_price_per_gib.as_ref().map(|p| p.get_ref().clone()),
            total_packets: rows.iter().map(|r| r.packets).sum(),
            total_cost: Money(total_bytes.saturating_mul(price)).to_string(),
            total_bytes,
            by_cgroup: rows,
        }
    }
}

fn log_notice(owner: &str, notice: &Notice, currency: &str) {
    match notice {
        Notice::ThresholdCrossed { percent, window_spend, limit } => {
            tracing::warn!(owner, percent, spend = %window_spend, limit = %limit, currency, "budget threshold crossed")
        }
        Notice::Suspended { window_spend, limit } => {
            tracing::warn!(owner, spend = %window_spend, limit = %limit, currency, "budget exhausted: suspended")
        }
        Notice::Resumed { reason } => tracing::info!(owner, reason = %reason, "resumed"),
        Notice::WindowRolled { previous_spend } => {
            tracing::info!(owner, previous = %previous_spend, currency, "budget window rolled over")
        }
    }
}
