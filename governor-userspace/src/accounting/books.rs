//! The books: one account per budget owner (every agent, and the host in slot 0). Seeds the
//! kernel on start, advances each ledger against what the kernel charged, and writes the
//! ceilings back. The kernel's `SPEND` counters are the truth; the books only decide windows,
//! thresholds and ceilings.

use std::collections::BTreeMap;

use governor_common::{CONTROL_CHECKPOINT, CONTROL_PAUSED, Control, HOST_SLOT, MAX_AGENTS, Prices};
use serde::{Deserialize, Serialize};

use super::{
    budget::{BudgetSpec, Ledger, Notice},
    money::Money,
    state::{HOST, SavedBudget, SavedState},
    window::{Window, rfc3339},
};
use crate::{
    config::OnExhausted,
    kernel::{AgentCounters, KernelError, KernelMaps},
};

/// The cost of what `c` counts at `prices`: connection prices per flow, byte prices per byte.
pub fn cost(c: &AgentCounters, p: &Prices) -> Money {
    let total = u128::from(c.flows) * u128::from(p.connection)
        + u128::from(c.tx_bytes) * u128::from(p.tx_byte)
        + u128::from(c.rx_bytes) * u128::from(p.rx_byte);
    Money(u64::try_from(total).unwrap_or(u64::MAX))
}

#[derive(Debug, Clone)]
pub struct Account {
    pub owner: String,
    pub slot: u32,
    pub spec: BudgetSpec,
    pub ledger: Ledger,
    /// The kernel's spend total at the last tick.
    pub spent: u64,
    /// The kernel's count of new connections (checkpoints) at the last tick.
    pub connections: u64,
    /// Paused by an operator or waiting at a checkpoint; the kernel refuses while set.
    pub paused: Option<Pause>,
    pub checkpoints: CheckpointSpec,
    pub marks: Marks,
    pub limits: crate::policy::Limits,
    /// Some endpoint in its allowlist has limits of its own (`CONTROL_ENDPOINT_LIMITS`).
    pub endpoint_limits: bool,
    /// The kernel holds the agent at its checkpoint while its `Spend::checkpoint_generation`
    /// equals this; moved on at each acknowledgement, never 0.
    checkpoint_generation: u32,
    /// What this daemon last wrote to the slot's CONTROL entry (the daemon is its only writer),
    /// so a tick compares against memory instead of reading the kernel for every account.
    written: Option<Control>,
}

impl Account {
    /// What the kernel must enforce: the budget's ceiling, the pause, the limits.
    fn control(&self) -> Control {
        let mut c = self.ledger.control(&self.spec);
        // A wait at a checkpoint is the kernel's checkpoint gate held shut (reason
        // `checkpoint`); any other pause is the pause flag (reason `paused`).
        let waiting = self.paused.as_ref().is_some_and(|p| p.kind == "checkpoint");
        if self.paused.is_some() && !waiting {
            c.flags |= CONTROL_PAUSED;
        }
        if self.endpoint_limits {
            c.flags |= governor_common::CONTROL_ENDPOINT_LIMITS;
        }
        (c.rate_interval_ns, c.rate_tolerance_ns) = self.limits.rate_ns();
        c.max_concurrent = self.limits.max_concurrent.unwrap_or(0);
        // The milestones as gates the kernel holds, counted from the last acknowledgement.
        // Written even without checkpoints, so a restarted daemon adopts the true generation.
        c.checkpoint_generation = self.checkpoint_generation;
        let cp = &self.checkpoints;
        if cp.any() || waiting {
            c.flags |= CONTROL_CHECKPOINT;
            c.checkpoint_connections =
                cp.every_connections.map_or(0, |n| self.marks.connections.saturating_add(n).max(1));
            c.checkpoint_spend = cp.every_spend.map_or(0, |m| self.marks.spent.saturating_add(m.0).max(1));
            // Waiting: a deadline long past, so the kernel holds everything until the ack.
            c.checkpoint_deadline_ns =
                if waiting { 1 } else { cp.every_secs.map_or(0, |t| boot_ns_at(self.marks.time.saturating_add(t))) };
        }
        c
    }

    /// Whether a tick can change anything for this account: a ceiling, a window that rolls or
    /// slides, or a spend checkpoint. The rest only need their spend for status and the saved
    /// state.
    fn watches_spend(&self) -> bool {
        self.spec.limit.is_some()
            || !matches!(self.spec.window, Window::Total)
            || self.checkpoints.every_spend.is_some()
            || self.checkpoints.every_connections.is_some()
    }

    /// Writes what the kernel must enforce now to the slot's CONTROL entry.
    fn write_control(&mut self, maps: &mut KernelMaps) -> Result<(), KernelError> {
        let c = self.control();
        maps.set_control(self.slot, c)?;
        self.written = Some(c);
        Ok(())
    }
}

/// The kernel's boot clock (`bpf_ktime_get_boot_ns`) at unix time `unix`, by the offset between
/// the two clocks when the daemon first asked: fixed, so a control value computed twice is the
/// same. Never 0 (0 means "no deadline" to the kernel).
fn boot_ns_at(unix: i64) -> u64 {
    static OFFSET_NS: std::sync::OnceLock<i128> = std::sync::OnceLock::new();
    let offset = *OFFSET_NS.get_or_init(|| {
        let ns = |c| {
            nix::time::clock_gettime(c).map_or(0, |t| i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
        };
        ns(nix::time::ClockId::CLOCK_REALTIME) - ns(nix::time::ClockId::CLOCK_BOOTTIME)
    });
    (i128::from(unix) * 1_000_000_000 - offset).clamp(1, i128::from(u64::MAX)) as u64
}

/// The kernel's boot clock now, in ns, as `bpf_ktime_get_boot_ns` reads it.
fn boot_ns_now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map_or(0, |t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
}

/// Why and since when an agent is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// `operator` or `checkpoint`.
    pub kind: String,
    pub reason: String,
    /// Unix seconds.
    pub since: i64,
    /// Who paused it (an operator's uid, user name and pid), if a person did.
    pub by: Option<String>,
}

/// Oversight milestones: reaching any pauses the agent until an operator acknowledges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointSpec {
    pub every_spend: Option<Money>,
    pub every_secs: Option<i64>,
    pub every_connections: Option<u64>,
}

impl CheckpointSpec {
    pub fn any(&self) -> bool {
        self.every_spend.is_some() || self.every_secs.is_some() || self.every_connections.is_some()
    }
}

/// Where the agent stood at its last acknowledged checkpoint (or its start).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marks {
    pub spent: u64,
    pub time: i64,
    pub connections: u64,
}

/// A budget's state as status reports it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BudgetStatus {
    /// Decimal amount, or null when there is no budget.
    pub limit: Option<String>,
    pub window: String,
    pub window_start: String,
    /// End of a calendar window (RFC 3339); null for `total` and rolling windows.
    pub window_end: Option<String>,
    pub window_spend: String,
    /// Everything charged since the slot was first used, all windows.
    pub spent_total: String,
    /// Window spend as a percentage of the limit; null without a budget.
    pub percent_used: Option<u64>,
    pub remaining: Option<String>,
    pub thresholds: Vec<u8>,
    pub thresholds_crossed: Vec<u8>,
    pub on_exhausted: OnExhausted,
    /// `none` (no budget), `zero` (a zero budget), `ok`, `exhausted` (alert mode, over the
    /// limit), or `suspended`.
    pub state: String,
    /// Exact pico-unit figures, for tools.
    pub window_spend_pico: u64,
    pub spent_total_pico: u64,
    pub limit_pico: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum BooksError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(
        "all {MAX_AGENTS} agent slots are taken (by current and past agents in the state file); remove agents that no longer exist from {0}"
    )]
    SlotsFull(String),
}

pub struct Books {
    accounts: BTreeMap<String, Account>,
    /// Saved budgets of owners not present now: kept so their slots are never reused and a
    /// returning agent gets its spend back.
    retired: BTreeMap<String, SavedBudget>,
    pub currency: String,
}

impl Books {
    /// Opens the books for `owners` (agent name and budget) and the host. `adopted`: the kernel
    /// maps survived (pinned), so they hold the truth; otherwise spend is reseeded from `saved`.
    /// Seeding is a pure function of (kernel maps, saved state): doing it twice gives the same.
    pub fn open(
        currency: &str,
        host: BudgetSpec,
        saved: Option<SavedState>,
        adopted: bool,
        now: i64,
        maps: &mut KernelMaps,
    ) -> Result<Self, BooksError> {
        let saved = saved.unwrap_or_default();
        let mut books = Self { accounts: BTreeMap::new(), retired: saved.budgets, currency: currency.to_owned() };
        books.open_account(HOST, Some(HOST_SLOT), host, adopted, now, maps)?;
        Ok(books)
    }

    /// Adds (or re-opens) the account of `owner`, reusing its saved slot and spend.
    pub fn open_account(
        &mut self,
        owner: &str,
        fixed_slot: Option<u32>,
        spec: BudgetSpec,
        adopted: bool,
        now: i64,
        maps: &mut KernelMaps,
    ) -> Result<u32, BooksError> {
        if let Some(a) = self.accounts.get_mut(owner) {
            a.spec = spec;
            return Ok(a.slot);
        }
        let saved = self.retired.remove(owner);
        let saved_extra = saved.as_ref().map(|s| (s.paused.clone(), s.marks.clone()));
        let slot = match (fixed_slot, &saved) {
            (Some(s), _) => s,
            (None, Some(s)) => s.slot,
            (None, None) => self.free_slot()?,
        };
        let kernel = maps.spend(slot)?;
        let mut connections = kernel.connections;
        let (spent, ledger) = match saved {
            // Adopted maps are the truth, and their programs may be running: SPEND is never
            // rewritten under them (a rewrite loses concurrent adds and resets the rate
            // limiter). A saved total above the kernel's means the maps were made anew by
            // someone else; the kernel's stands, and the gap is logged.
            Some(s) if s.slot == slot && adopted => {
                if s.spent > kernel.spent {
                    tracing::warn!(
                        owner,
                        saved = s.spent,
                        kernel = kernel.spent,
                        "the saved spend is above the adopted kernel's; the kernel's counts stand"
                    );
                }
                (kernel.spent, s.ledger)
            }
            Some(s) if s.slot == slot => {
                connections = s.connections;
                (s.spent, s.ledger)
            }
            _ if adopted => {
                let c = maps.control(slot)?;
                let mut l = Ledger::new(now, c.window_base.min(kernel.spent));
                l.generation = c.generation.max(1);
                (kernel.spent, l)
            }
            _ => (0, Ledger::new(now, 0)),
        };
        if !adopted {
            // Fresh maps (a reboot), before any program is attached to them: put the saved totals
            // back, and a saved suspension with them.
            let exhausted = if ledger.suspended { ledger.generation } else { 0 };
            maps.seed_spend(slot, spent, exhausted, connections)?;
        }
        let (paused, marks) = saved_extra.unwrap_or((None, Marks { spent, time: now, connections: 0 }));
        // Adopted maps keep the generation a waiting slot is held at.
        let checkpoint_generation = if adopted { maps.control(slot)?.checkpoint_generation.max(1) } else { 1 };
        let mut account = Account {
            owner: owner.to_owned(),
            slot,
            spec,
            ledger,
            spent,
            connections,
            paused,
            checkpoints: CheckpointSpec::default(),
            marks,
            limits: Default::default(),
            endpoint_limits: false,
            checkpoint_generation,
            written: None,
        };
        account.write_control(maps)?;
        self.accounts.insert(owner.to_owned(), account);
        Ok(slot)
    }

    /// Whether every one of `owners` (none with an account yet) would get a slot: its saved
    /// one, or one of the free ones.
    pub fn free_slots_for(&self, owners: &[&str]) -> bool {
        let needed = owners.iter().filter(|o| !self.retired.contains_key(**o)).count();
        // The host's account sits in slot 0, outside the agents' 1..=MAX_AGENTS.
        let used = self.accounts.values().filter(|a| a.slot != HOST_SLOT).count() + self.retired.len();
        needed <= (MAX_AGENTS as usize).saturating_sub(used)
    }

    fn free_slot(&self) -> Result<u32, BooksError> {
        let used: std::collections::HashSet<u32> =
            self.accounts.values().map(|a| a.slot).chain(self.retired.values().map(|s| s.slot)).collect();
        (1..=MAX_AGENTS).find(|s| !used.contains(s)).ok_or_else(|| BooksError::SlotsFull("the state file".into()))
    }

    pub fn account(&self, owner: &str) -> Option<&Account> {
        self.accounts.get(owner)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values()
    }

    /// Advances every ledger to `now` against the kernel and writes changed ceilings.
    /// Returns what must be told, by owner.
    /// `every_account` also reads the spend of accounts a tick cannot change (see
    /// `watches_spend`); ticks that save the state pass it, the others skip those reads.
    pub fn tick(
        &mut self,
        now: i64,
        every_account: bool,
        maps: &mut KernelMaps,
    ) -> Result<Vec<(String, Notice)>, KernelError> {
        let mut out = Vec::new();
        for a in self.accounts.values_mut().filter(|a| every_account || a.watches_spend()) {
            let spend = maps.spend(a.slot)?;
            a.spent = spend.spent;
            a.connections = spend.connections;
            for n in a.ledger.tick(&a.spec, now, spend.spent, spend.exhausted_generation) {
                out.push((a.owner.clone(), n));
            }
            if a.written != Some(a.control()) {
                a.write_control(maps)?;
            }
        }
        Ok(out)
    }

    /// Reads every account's spend total from the kernel now, without advancing the ledgers,
    /// so status shows live spend between ticks.
    pub fn refresh(&mut self, maps: &KernelMaps) -> Result<(), KernelError> {
        for a in self.accounts.values_mut() {
            let spend = maps.spend(a.slot)?;
            (a.spent, a.connections) = (spend.spent, spend.connections);
        }
        Ok(())
    }

    /// Tells every rolling window that the wall clock jumped by `secs`.
    pub fn clock_jumped(&mut self, secs: i64) {
        for a in self.accounts.values_mut() {
            if matches!(a.spec.window, Window::Rolling(_)) {
                a.ledger.shift(secs);
            }
        }
    }

    /// Pauses `owner`; when this returns the kernel refuses its connects and drops its packets.
    /// False if there is no such account.
    pub fn pause(&mut self, owner: &str, pause: Pause, maps: &mut KernelMaps) -> Result<bool, KernelError> {
        let Some(a) = self.accounts.get_mut(owner) else { return Ok(false) };
        a.paused = Some(pause);
        a.write_control(maps)?;
        Ok(true)
    }

    /// Resumes `owner`: lifts a pause or a pending checkpoint (its milestones start again from
    /// here), not a budget suspension. The kernel sees it when this returns. Returns the pause
    /// lifted (None: it was not paused), or None for no such account.
    pub fn resume(
        &mut self,
        owner: &str,
        now: i64,
        maps: &mut KernelMaps,
    ) -> Result<Option<Option<Pause>>, KernelError> {
        let Some(a) = self.accounts.get_mut(owner) else { return Ok(None) };
        let was = a.paused.take();
        if was.as_ref().is_some_and(|p| p.kind == "checkpoint") {
            // The milestones count again from here: new gates, and a new generation so the
            // kernel no longer holds the slot.
            let kernel = maps.spend(a.slot)?;
            a.marks = Marks { spent: kernel.spent, time: now, connections: kernel.connections };
            a.checkpoint_generation = a.checkpoint_generation.wrapping_add(1).max(1);
        }
        if was.is_some() {
            a.write_control(maps)?;
        }
        Ok(Some(was))
    }

    /// An operator lifts `owner`'s budget suspension for the rest of the window: the ceiling is
    /// not enforced again until the window rolls or the limit changes. False when the budget has
    /// not suspended it.
    pub fn lift_budget(&mut self, owner: &str, maps: &mut KernelMaps) -> Result<bool, KernelError> {
        let Some(a) = self.accounts.get_mut(owner) else { return Ok(false) };
        if !a.ledger.lift(a.spec.limit) {
            return Ok(false);
        }
        a.write_control(maps)?;
        Ok(true)
    }

    /// Whether `owner`'s budget holds it suspended now.
    pub fn budget_suspended(&self, owner: &str) -> bool {
        self.accounts.get(owner).is_some_and(|a| a.ledger.suspended)
    }

    /// Sets `owner`'s rate and concurrency limits (from the config); the kernel has them at once.
    /// Sets `owner`'s own limits, and whether any of its endpoints has limits (write those to
    /// `ENDPOINT_LIMITS` first: the kernel looks there once this is set).
    pub fn set_limits(
        &mut self,
        owner: &str,
        limits: crate::policy::Limits,
        endpoint_limits: bool,
        maps: &mut KernelMaps,
    ) -> Result<(), KernelError> {
        if let Some(a) = self.accounts.get_mut(owner) {
            a.limits = limits;
            a.endpoint_limits = endpoint_limits;
            a.write_control(maps)?;
        }
        Ok(())
    }

    /// Sets `owner`'s checkpoint milestones (from the config).
    pub fn set_checkpoints(&mut self, owner: &str, spec: CheckpointSpec) {
        if let Some(a) = self.accounts.get_mut(owner) {
            a.checkpoints = spec;
        }
    }

    /// Pauses every agent that reached a checkpoint milestone, by the kernel's counts: the
    /// kernel's gates already refuse past a milestone; this records the pause, so status, the
    /// audit log and `governor ack` see it. Returns (owner, milestone) for each new checkpoint.
    pub fn checkpoints(&mut self, now: i64, maps: &mut KernelMaps) -> Result<Vec<(String, String)>, KernelError> {
        let mut out = Vec::new();
        for a in self.accounts.values_mut().filter(|a| a.checkpoints.any() && a.paused.is_none()) {
            let kernel = maps.spend(a.slot)?;
            let conns = kernel.connections;
            if a.marks.connections > conns {
                a.marks.connections = conns; // counters restarted (fresh maps)
            }
            let waiting = kernel.checkpoint_generation == a.checkpoint_generation;
            let c = &a.checkpoints;
            let connections = c.every_connections.is_some_and(|n| conns - a.marks.connections >= n);
            // By the kernel's clock and deadline, so the daemon names the gate the kernel closed.
            let time = c.every_secs.is_some_and(|s| {
                now - a.marks.time >= s || boot_ns_now() >= boot_ns_at(a.marks.time.saturating_add(s))
            });
            let spend = c.every_spend.is_some_and(|s| kernel.spent.saturating_sub(a.marks.spent) >= s.0);
            let milestone = if connections {
                format!("{} connections since the last checkpoint", c.every_connections.unwrap_or_default())
            } else if time {
                format!("{} s elapsed since the last checkpoint", c.every_secs.unwrap_or_default())
            } else if spend || (waiting && c.every_spend.is_some()) {
                format!("spend reached {} since the last checkpoint", c.every_spend.unwrap_or_default())
            } else if waiting {
                "a checkpoint gate closed in the kernel".to_owned()
            } else {
                continue;
            };
            a.paused = Some(Pause { kind: "checkpoint".into(), reason: milestone.clone(), since: now, by: None });
            a.write_control(maps)?;
            out.push((a.owner.clone(), milestone));
        }
        Ok(out)
    }

    /// What to save: every account and every retired one.
    pub fn saved(&self, now: i64, outbox: Vec<serde_json::Value>) -> SavedState {
        let mut budgets = self.retired.clone();
        for a in self.accounts.values() {
            budgets.insert(
                a.owner.clone(),
                SavedBudget {
                    slot: a.slot,
                    spent: a.spent,
                    ledger: a.ledger.clone(),
                    paused: a.paused.clone(),
                    marks: a.marks.clone(),
                    connections: a.connections,
                },
            );
        }
        SavedState { version: 1, currency: self.currency.clone(), saved_at: now, budgets, outbox, agents_root: None }
    }

    pub fn status(&self, owner: &str, now: i64) -> Option<BudgetStatus> {
        let a = self.accounts.get(owner)?;
        let window_spend = a.ledger.window_spend(a.spent);
        let limit = a.spec.limit;
        let state = match limit {
            None => "none",
            Some(_) if a.ledger.suspended => "suspended",
            Some(Money(0)) => "zero",
            Some(l) if window_spend >= l => "exhausted",
            Some(_) => "ok",
        };
        let window_end = match a.spec.window {
            Window::Hour | Window::Day | Window::Month => a.spec.window.bounds(now).map(|(_, end)| rfc3339(end)),
            Window::Total | Window::Rolling(_) => None,
        };
        Some(BudgetStatus {
            limit: limit.map(|l| l.to_string()),
            window: a.spec.window.to_string(),
            window_start: rfc3339(a.ledger.window_start),
            window_end,
            window_spend: window_spend.to_string(),
            spent_total: Money(a.spent).to_string(),
            percent_used: limit.map(|l| window_spend.percent_of(l).min(999)),
            remaining: limit.map(|l| l.saturating_sub(window_spend).to_string()),
            thresholds: a.spec.thresholds.clone(),
            thresholds_crossed: a.ledger.crossed.iter().copied().collect(),
            on_exhausted: a.spec.on_exhausted,
            state: state.to_owned(),
            window_spend_pico: window_spend.0,
            spent_total_pico: a.spent,
            limit_pico: limit.map(|l| l.0),
        })
    }
}
