//! governor: kernel-enforced network and spend boundaries for autonomous AI agents.
//!
//! The library holds every concern of the daemon and CLI; `main.rs` only dispatches.
//! See ARCHITECTURE.md for the map.

pub mod accounting;
pub mod agents;
pub mod audit;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod explain;
pub mod governor;
pub mod instance;
pub mod kernel;
pub mod metrics;
pub mod notify;
pub mod oversight;
pub mod policy;
pub mod readiness;
pub mod reload;
pub mod status;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
