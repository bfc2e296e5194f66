//! The readiness report: the checked items and the facts an auditor keeps with them.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Item, Verdict, static_check};
use crate::config::LoadedConfig;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub config: String,
    pub config_sha256: String,
    pub host: String,
    pub kernel: String,
    pub version: String,
    pub time: String,
    pub pass: usize,
    pub warn: usize,
    pub fail: usize,
    /// No FAIL.
    pub ready: bool,
    pub items: Vec<Item>,
}

/// Checks `loaded` (and with `live`, the running daemon and the kernel) and assembles the report.
pub fn build(loaded: &LoadedConfig) -> Report {
    build_with(loaded, false)
}

pub fn build_with(loaded: &LoadedConfig, live: bool) -> Report {
    let mut items = static_check::check(&loaded.config);
    if live {
        items.extend(super::live::check(loaded));
        items.extend(super::probe::run());
        items.sort_by_key(|i| i.control);
    }
    let count = |v: Verdict| items.iter().filter(|i| i.verdict == v).count();
    let uname = nix::sys::utsname::uname().ok();
    Report {
        config: loaded.source_name.display().to_string(),
        config_sha256: loaded.sha256(),
        host: uname.as_ref().map_or_else(String::new, |u| u.nodename().to_string_lossy().into_owned()),
        kernel: uname.as_ref().map_or_else(String::new, |u| u.release().to_string_lossy().into_owned()),
        version: crate::VERSION.to_owned(),
        time: crate::accounting::window::rfc3339(crate::governor::unix_now()),
        pass: count(Verdict::Pass),
        warn: count(Verdict::Warn),
        fail: count(Verdict::Fail),
        ready: count(Verdict::Fail) == 0,
        items,
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Pass => "PASS",
        Verdict::Warn => "WARN",
        Verdict::Fail => "FAIL",
    }
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "governor {} readiness: {} ({} PASS, {} WARN, {} FAIL)",
        r.version,
        if r.ready { "READY" } else { "NOT READY" },
        r.pass,
        r.warn,
        r.fail
    );
    let _ = writeln!(
        out,
        "config {} (sha256 {}), host {}, kernel {}, {}\n",
        r.config, r.config_sha256, r.host, r.kernel, r.time
    );
    let mut last = None;
    for i in &r.items {
        if last != Some(i.control) {
            let _ = writeln!(out, "{:?}", i.control);
            last = Some(i.control);
        }
        let key = i.key.as_ref().map_or(String::new(), |k| format!("  [{k}]"));
        let _ = writeln!(out, "  {}  {}: {}{key}", verdict(i.verdict), i.check, i.reason);
    }
    out
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# governor readiness report\n\n**{}**: {} PASS, {} WARN, {} FAIL\n",
        if r.ready { "READY" } else { "NOT READY" },
        r.pass,
        r.warn,
        r.fail
    );
    let _ = writeln!(
        out,
        "| | |\n|---|---|\n| config | `{}` |\n| sha256 | `{}` |\n| host | {} |\n| kernel | {} |\n| governor | {} |\n| time | {} |\n",
        r.config, r.config_sha256, r.host, r.kernel, r.version, r.time
    );
    let _ = writeln!(out, "| control | verdict | check | reason | key |\n|---|---|---|---|---|");
    for i in &r.items {
        let _ = writeln!(
            out,
            "| {:?} | {} | {} | {} | {} |",
            i.control,
            verdict(i.verdict),
            i.check,
            i.reason.replace('|', "\\|"),
            i.key.as_deref().map_or(String::new(), |k| format!("`{k}`"))
        );
    }
    out
}
