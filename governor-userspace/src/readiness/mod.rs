//! The readiness gate: does each of the five controls exist in this configuration, with the
//! reason and the config key to change for anything missing. `static_check.rs` holds the rules
//! (pure, unit-tested); `live.rs` asks the running daemon and the kernel; `probe.rs` proves the
//! controls with a private daemon and a probe agent; `report.rs` renders them as text, JSON or Markdown with the facts an
//! auditor keeps (config sha256, host, kernel, version, time).

pub mod live;
pub mod probe;
pub mod report;
pub mod static_check;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Control {
    Spend,
    Oversight,
    Boundaries,
    Auditability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Item {
    pub control: Control,
    pub verdict: Verdict,
    /// What was checked, e.g. "scanner has a budget ceiling".
    pub check: String,
    pub reason: String,
    /// The config key to change, when there is one.
    pub key: Option<String>,
}
