//! `governor check`: the readiness report for a configuration; exit 1 on any FAIL.

use std::path::Path;

use super::CheckFormat;
use crate::{config::LoadedConfig, readiness::report};

/// Returns whether the configuration is ready (no FAIL).
pub fn run(config: &Path, live: bool, format: CheckFormat, output: Option<&Path>) -> anyhow::Result<bool> {
    let loaded = LoadedConfig::from_file(config)?;
    loaded.compile()?;
    let r = report::build_with(&loaded, live);
    let text = match format {
        CheckFormat::Text => report::text(&r),
        CheckFormat::Markdown => report::markdown(&r),
        CheckFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    match output {
        Some(path) => {
            std::fs::write(path, &text)
                .map_err(|e| anyhow::anyhow!("cannot write the report to {}: {e}", path.display()))?;
            eprintln!(
                "governor check: {} ({} PASS, {} WARN, {} FAIL); report written to {}",
                if r.ready { "READY" } else { "NOT READY" },
                r.pass,
                r.warn,
                r.fail,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(r.ready)
}
