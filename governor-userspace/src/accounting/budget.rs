//! One budget (an agent's or the host's): its window, thresholds and suspension, as a pure
//! state machine over the kernel's spend total. `tick` is called with what the kernel counted;
//! it returns the notices to send and `control` gives the ceiling the kernel must enforce.

use std::collections::{BTreeSet, VecDeque};

use governor_common::{CONTROL_ENFORCE_CEILING, Control};
use serde::{Deserialize, Serialize};

use super::{money::Money, window::Window};
use crate::config::OnExhausted;

/// A budget as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpec {
    /// None: no budget (spend is counted, never limited). Some(0): a zero budget.
    pub limit: Option<Money>,
    pub window: Window,
    /// Percentages, ascending.
    pub thresholds: Vec<u8>,
    pub on_exhausted: OnExhausted,
}

impl BudgetSpec {
    pub fn none() -> Self {
        Self { limit: None, window: Window::Total, thresholds: vec![50, 80, 100], on_exhausted: OnExhausted::Suspend }
    }

    /// Rolling windows resume a suspended agent once its window spend falls below this
    /// percentage (the highest threshold under 100, else 90), so it does not flap at the ceiling.
    fn resume_percent(&self) -> u64 {
        self.thresholds.iter().rev().find(|t| **t < 100).map_or(90, |t| u64::from(*t))
    }
}

/// What a budget remembers between ticks; saved with the daemon's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Unix seconds at which the current window began.
    pub window_start: i64,
    /// The kernel's spend total when the window began (pico-units).
    pub window_base: u64,
    /// Bumped to lift a suspension; the kernel is suspended while its exhausted generation equals it.
    pub generation: u32,
    /// Thresholds already reported in this window.
    pub crossed: BTreeSet<u8>,
    pub suspended: bool,
    /// Rolling windows: (unix second, spend total) samples, oldest first.
    #[serde(default)]
    pub samples: VecDeque<(i64, u64)>,
    /// The limit in force when the budget suspended the agent: a larger one resumes it.
    #[serde(default)]
    pub suspended_at_limit: Option<Money>,
    /// An operator lifted the suspension (`governor resume --budget`): the ceiling is not
    /// enforced until the window rolls or the limit changes.
    #[serde(default)]
    pub overridden: Option<Money>,
}

/// Something that must be told: audited, logged, counted, notified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    ThresholdCrossed { percent: u8, window_spend: Money, limit: Money },
    Suspended { window_spend: Money, limit: Money },
    Resumed { reason: String },
    WindowRolled { previous_spend: Money },
}

/// Samples kept per rolling window: the window's spend is exact to one sample interval.
const ROLLING_SAMPLES: u64 = 600;

impl Ledger {
    pub fn new(now: i64, spent: u64) -> Self {
        Self { window_start: now, window_base: spent, generation: 1, ..Self::default() }
    }

    pub fn window_spend(&self, spent: u64) -> Money {
        Money(spent.saturating_sub(self.window_base))
    }

    /// Advances to `now` given the kernel's spend total and the generation at which it last
    /// reached the ceiling.
    pub fn tick(&mut self, spec: &BudgetSpec, now: i64, spent: u64, exhausted_generation: u32) -> Vec<Notice> {
        let mut out = Vec::new();
        let mut lifted: Option<String> = None;
        match spec.window {
            Window::Total => {}
            Window::Hour | Window::Day | Window::Month => {
                if let Some((start, _)) = spec.window.bounds(now)
                    && start > self.window_start
                {
                    out.push(Notice::WindowRolled { previous_spend: self.window_spend(spent) });
                    self.window_start = start;
                    self.window_base = spent;
                    self.crossed.clear();
                    self.generation = self.generation.wrapping_add(1).max(1);
                    self.overridden = None;
                    lifted = Some("a new window began".to_owned());
                }
            }
            Window::Rolling(d) => self.slide(d.as_secs() as i64, now, spent),
        }

        let window_spend = self.window_spend(spent);
        let exhausted = exhausted_generation == self.generation;
        if let Some(limit) = spec.limit {
            // A charge refused at the ceiling is reaching 100%: refunds keep the counted spend
            // just below the limit, so the kernel's refusal is what says "100% used".
            let pct = if exhausted && spec.on_exhausted == OnExhausted::Suspend {
                window_spend.percent_of(limit).max(100)
            } else {
                window_spend.percent_of(limit)
            };
            for &t in &spec.thresholds {
                if pct >= u64::from(t) && (limit.0 > 0 || exhausted) && self.crossed.insert(t) {
                    out.push(Notice::ThresholdCrossed { percent: t, window_spend, limit });
                }
            }
            if matches!(spec.window, Window::Rolling(_)) {
                // A rolling window re-arms a threshold once its spend falls back below it.
                let spend_pct = window_spend.percent_of(limit);
                let mut still_exhausted = exhausted;
                if self.suspended && exhausted && spend_pct < spec.resume_percent() {
                    self.generation = self.generation.wrapping_add(1).max(1);
                    still_exhausted = false;
                    lifted = Some(format!(
                        "spend in the rolling window fell to {spend_pct}% of the limit, below the resume threshold of {}%",
                        spec.resume_percent()
                    ));
                }
                if !still_exhausted {
                    self.crossed.retain(|t| spend_pct >= u64::from(*t));
                }
            }
        }

        // A limit other than the one an operator's override was given under ends the override.
        if self.overridden.is_some() && self.overridden != spec.limit {
            self.overridden = None;
        }
        // A suspension saved before the limit was recorded: count from the limit in force now.
        if self.suspended && self.suspended_at_limit.is_none() {
            self.suspended_at_limit = spec.limit;
        }
        // Spend is held just below the ceiling by refunds, so "room" means a larger limit than
        // the one the agent was suspended at.
        if self.suspended
            && let (Some(new), Some(old)) = (spec.limit, self.suspended_at_limit)
            && new > old
            && exhausted_generation == self.generation
        {
            self.generation = self.generation.wrapping_add(1).max(1);
            lifted = Some(format!("the budget was raised from {old} to {new}"));
        }
        let enforced = spec.limit.is_some() && spec.on_exhausted == OnExhausted::Suspend && self.overridden.is_none();
        let suspended = enforced && exhausted_generation == self.generation;
        if suspended != self.suspended {
            self.suspended = suspended;
            if suspended {
                self.suspended_at_limit = spec.limit;
            }
            out.push(match (suspended, spec.limit) {
                (true, Some(limit)) => Notice::Suspended { window_spend, limit },
                _ => Notice::Resumed {
                    reason: lifted.unwrap_or_else(|| match (spec.limit, spec.on_exhausted, self.overridden) {
                        (None, _, _) => "the budget was removed".to_owned(),
                        (_, OnExhausted::Alert, _) => "on_exhausted is now \"alert\"".to_owned(),
                        (_, _, Some(_)) => "an operator lifted the suspension for the rest of the window".to_owned(),
                        _ => "the kernel no longer refuses at the ceiling".to_owned(),
                    }),
                },
            });
        }
        out
    }

    /// An operator's override of a suspension (`governor resume --budget`): the ceiling `limit`
    /// is not enforced again until the window rolls or the limit changes. False when the budget
    /// had not suspended the agent.
    pub fn lift(&mut self, limit: Option<Money>) -> bool {
        if !self.suspended {
            return false;
        }
        self.overridden = limit;
        self.generation = self.generation.wrapping_add(1).max(1);
        true
    }

    fn slide(&mut self, window: i64, now: i64, spent: u64) {
        let step = (window / ROLLING_SAMPLES as i64).max(1);
        if self.samples.back().is_none_or(|(t, _)| now - t >= step) {
            self.samples.push_back((now, spent));
        }
        // Keep the newest sample at or before the window's start: it is the base.
        while self.samples.len() > 1 && self.samples[1].0 <= now - window {
            self.samples.pop_front();
        }
        if let Some(&(t, s)) = self.samples.front() {
            self.window_start = t.max(now - window);
            self.window_base = s;
        }
    }

    /// Moves a rolling window's samples by `secs` after the wall clock jumped by that much, so
    /// the window still covers the same elapsed time: a jump neither ages spend out early nor
    /// keeps it too long. Calendar windows follow the wall clock and are left alone.
    pub fn shift(&mut self, secs: i64) {
        for s in &mut self.samples {
            s.0 += secs;
        }
        if !self.samples.is_empty() {
            self.window_start += secs;
        }
    }

    /// The budget state the kernel must enforce.
    pub fn control(&self, spec: &BudgetSpec) -> Control {
        match spec.limit {
            None => Control {
                ceiling: u64::MAX,
                window_base: self.window_base,
                generation: self.generation,
                flags: 0,
                ..Control::default()
            },
            Some(limit) => Control {
                ceiling: self.window_base.saturating_add(limit.0),
                window_base: self.window_base,
                generation: self.generation,
                flags: if spec.on_exhausted == OnExhausted::Suspend && self.overridden.is_none() {
                    CONTROL_ENFORCE_CEILING
                } else {
                    0
                },
                ..Control::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::macros::datetime;

    use super::*;

    fn spec(limit: u64, window: Window) -> BudgetSpec {
        BudgetSpec {
            limit: Some(Money(limit)),
            window,
            thresholds: vec![50, 80, 100],
            on_exhausted: OnExhausted::Suspend,
        }
    }

    fn thresholds(n: &[Notice]) -> Vec<u8> {
        n.iter()
            .filter_map(|n| if let Notice::ThresholdCrossed { percent, .. } = n { Some(*percent) } else { None })
            .collect()
    }

    #[test]
    fn each_threshold_fires_exactly_once_per_window() {
        let s = spec(1000, Window::Total);
        let mut l = Ledger::new(0, 0);
        assert!(thresholds(&l.tick(&s, 1, 499, 0)).is_empty());
        assert_eq!(thresholds(&l.tick(&s, 2, 500, 0)), vec![50]);
        assert!(thresholds(&l.tick(&s, 3, 700, 0)).is_empty());
        // Jumping past two thresholds reports both, once.
        assert_eq!(thresholds(&l.tick(&s, 4, 1000, 0)), vec![80, 100]);
        assert!(thresholds(&l.tick(&s, 5, 1000, 0)).is_empty());
    }

    #[test]
    fn ceiling_is_base_plus_limit_and_enforced_only_in_suspend_mode() {
        let s = spec(1000, Window::Total);
        let l = Ledger::new(0, 250);
        assert_eq!(
            l.control(&s),
            Control {
                ceiling: 1250,
                window_base: 250,
                generation: 1,
                flags: CONTROL_ENFORCE_CEILING,
                ..Control::default()
            }
        );
        let alert = BudgetSpec { on_exhausted: OnExhausted::Alert, ..s };
        assert_eq!(l.control(&alert).flags, 0);
        let none = BudgetSpec::none();
        assert_eq!(l.control(&none).ceiling, u64::MAX);
        assert_eq!(l.control(&none).flags, 0);
    }

    fn resumed(n: &[Notice]) -> Option<&str> {
        n.iter().find_map(|n| if let Notice::Resumed { reason } = n { Some(reason.as_str()) } else { None })
    }

    #[test]
    fn raising_the_limit_resumes_with_that_reason_and_keeping_it_does_not() {
        const ONE: u64 = 1_000_000_000_000;
        let s = spec(ONE, Window::Total);
        let mut l = Ledger::new(0, 0);
        // The kernel refused at the ceiling (refunds hold spend just below it).
        let n = l.tick(&s, 1, ONE - 1, 1);
        assert!(n.iter().any(|x| matches!(x, Notice::Suspended { .. })) && l.suspended);
        assert!(l.tick(&s, 2, ONE - 1, 1).is_empty(), "the same limit keeps it suspended");
        let raised = spec(2 * ONE, Window::Total);
        let n = l.tick(&raised, 3, ONE - 1, 1);
        assert_eq!(resumed(&n), Some("the budget was raised from 1.000000 to 2.000000"), "{n:?}");
        assert!(!l.suspended && l.control(&raised).generation != 1, "the kernel's generation moved on");
        // Lowered again below the spend: the kernel refuses at the new ceiling and says so.
        let n = l.tick(&s, 4, ONE - 1, l.generation);
        assert!(n.iter().any(|x| matches!(x, Notice::Suspended { .. })));
    }

    #[test]
    fn an_operator_override_holds_until_the_window_rolls() {
        let s = spec(1000, Window::Hour);
        let t0 = datetime!(2026-11-26 09:10 UTC).unix_timestamp();
        let mut l = Ledger::new(t0, 0);
        l.tick(&s, t0 + 1, 999, 1);
        assert!(l.suspended);
        assert!(l.lift(s.limit));
        let n = l.tick(&s, t0 + 2, 999, 1);
        assert_eq!(resumed(&n), Some("an operator lifted the suspension for the rest of the window"));
        assert_eq!(l.control(&s).flags & CONTROL_ENFORCE_CEILING, 0, "the ceiling is not enforced");
        // The next hour enforces again.
        let next = t0 + 3600;
        l.tick(&s, next, 5000, 0);
        assert!(l.overridden.is_none());
        assert_ne!(l.control(&s).flags & CONTROL_ENFORCE_CEILING, 0);
        assert!(!l.lift(s.limit), "nothing to lift: not suspended");
    }

    #[test]
    fn zero_budget_has_its_ceiling_at_the_base() {
        let s = spec(0, Window::Total);
        let mut l = Ledger::new(0, 42);
        assert_eq!(l.control(&s).ceiling, 42);
        assert!(thresholds(&l.tick(&s, 1, 42, 0)).is_empty(), "a zero budget has nothing to cross");
    }

    #[test]
    fn suspension_follows_the_kernel_and_a_new_window_lifts_it() {
        let s = spec(1000, Window::Hour);
        let t0 = datetime!(2026-11-26 10:15 UTC).unix_timestamp();
        let mut l = Ledger::new(t0, 0);
        l.tick(&s, t0, 0, 0);
        // The kernel refused a charge at generation 1: that is 100% used, and a suspension.
        let n = l.tick(&s, t0 + 1, 990, 1);
        assert!(n.contains(&Notice::Suspended { window_spend: Money(990), limit: Money(1000) }), "{n:?}");
        assert_eq!(thresholds(&n), vec![50, 80, 100]);
        assert!(l.suspended);
        // Still suspended within the hour.
        assert!(l.tick(&s, t0 + 60, 990, 1).is_empty());
        // Next hour: window rolls, spend resets, generation moves on, suspension lifts.
        let n = l.tick(&s, datetime!(2026-11-26 11:00 UTC).unix_timestamp(), 990, 1);
        assert_eq!(n[0], Notice::WindowRolled { previous_spend: Money(990) });
        assert!(n.iter().any(|x| matches!(x, Notice::Resumed { .. })), "{n:?}");
        assert!(!l.suspended);
        assert_eq!(l.window_spend(990), Money(0));
        assert_eq!(l.control(&s).ceiling, 1990);
        assert_eq!(l.control(&s).generation, 2);
        // Thresholds re-arm in the new window.
        assert_eq!(thresholds(&l.tick(&s, datetime!(2026-11-26 11:10 UTC).unix_timestamp(), 1490, 1)), vec![50]);
    }

    #[test]
    fn alert_mode_never_suspends() {
        let s = BudgetSpec { on_exhausted: OnExhausted::Alert, ..spec(1000, Window::Total) };
        let mut l = Ledger::new(0, 0);
        let n = l.tick(&s, 1, 5000, 1);
        assert_eq!(thresholds(&n), vec![50, 80, 100]);
        assert!(!l.suspended);
    }

    #[test]
    fn rolling_windows_forget_old_spend_and_resume_below_the_resume_threshold() {
        let s = spec(1000, Window::Rolling(Duration::from_secs(600)));
        let mut l = Ledger::new(0, 0);
        l.tick(&s, 0, 0, 0);
        l.tick(&s, 10, 995, 1);
        assert!(l.suspended);
        assert_eq!(l.window_spend(995), Money(995));
        // 600 s later the spend at t=10 has aged out of the window.
        let n = l.tick(&s, 611, 995, 1);
        assert_eq!(l.window_spend(995), Money(0));
        assert!(n.iter().any(|x| matches!(x, Notice::Resumed { .. })), "{n:?}");
        assert!(!l.suspended);
        // And thresholds fire again.
        assert_eq!(thresholds(&l.tick(&s, 612, 1600, 1)), vec![50]);
    }

    #[test]
    fn a_clock_jump_neither_resets_nor_double_counts_a_rolling_window() {
        let s = spec(1000, Window::Rolling(Duration::from_secs(600)));
        let mut l = Ledger::new(0, 0);
        l.tick(&s, 0, 0, 0);
        l.tick(&s, 100, 700, 0);
        // The wall clock jumps an hour ahead; without the shift the spend would age out at once.
        l.shift(3600);
        l.tick(&s, 3700 + 1, 700, 0);
        assert_eq!(l.window_spend(700), Money(700), "a forward jump must not reset spend");
        // And back: the window still ends 600 s after the spend, in real time.
        l.shift(-3600);
        l.tick(&s, 102, 700, 0);
        assert_eq!(l.window_spend(700), Money(700));
        l.tick(&s, 701, 700, 0);
        assert_eq!(l.window_spend(700), Money(0), "600 real seconds later it has left the window");
    }

    #[test]
    fn rolling_samples_are_bounded() {
        let s = spec(1000, Window::Rolling(Duration::from_secs(3600)));
        let mut l = Ledger::new(0, 0);
        for t in 0..20_000 {
            l.tick(&s, t, t as u64, 0);
        }
        assert!(l.samples.len() <= ROLLING_SAMPLES as usize + 2, "{}", l.samples.len());
        assert!(l.window_spend(19_999) >= Money(3600) && l.window_spend(19_999) <= Money(3606));
    }
}
