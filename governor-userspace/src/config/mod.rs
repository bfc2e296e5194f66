//! The TOML configuration: schema, loading, and validation with file:line:column errors.

pub mod hostname;
mod schema;
mod validate;

use std::path::{Path, PathBuf};

pub use schema::{
    AgentConfig, BudgetConfig, CheckpointConfig, Config, DaemonConfig, DnsConfig, EndpointConfig, HostConfig,
    LimitsConfig, Mode, NotifyConfig, OnDaemonExit, OnExhausted, PriceConfig, Protocol, UnlistedAgents,
};
pub use validate::Cidr;

/// The configuration used when `governor run` is given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// A configuration that was refused, and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `key` is the dotted path of the offending entry, e.g. `agent[1].endpoints`.
    #[error("{}:{line}:{column}: {key}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
}

/// A validated configuration and the text it came from (kept for its checksum).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    pub source_name: PathBuf,
    pub text: String,
}

impl LoadedConfig {
    /// Compiles the policy; an error with a place in the file is given its file:line:column.
    pub fn compile(&self) -> anyhow::Result<crate::policy::Policy> {
        self.compile_generation(0)
    }

    /// As `compile`, for a policy generation (see `policy::compile_generation`).
    pub fn compile_generation(&self, generation: u32) -> anyhow::Result<crate::policy::Policy> {
        crate::policy::compile_generation(&self.config, generation).map_err(|e| match e.place() {
            Some((offset, key)) => {
                let (line, column) = line_column(&self.text, offset);
                ConfigError::Invalid { path: self.source_name.clone(), line, column, key, message: e.to_string() }
                    .into()
            }
            None => anyhow::anyhow!("{}: {e}", self.source_name.display()),
        })
    }

    /// Reads and validates `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_str(path, text)
    }

    /// The embedded default configuration.
    pub fn default_config() -> Self {
        Self::from_str(Path::new("<embedded default>"), DEFAULT_CONFIG.to_owned())
            .expect("the embedded default configuration is valid (tested)")
    }

    /// Parses and validates `text`; `name` only labels error messages.
    pub fn from_str(name: &Path, text: String) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(&text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let (line, column) = line_column(&text, span.start);
            ConfigError::Invalid {
                path: name.to_owned(),
                line,
                column,
                key: key_at(&text, span.start),
                message: e.message().to_owned(),
            }
        })?;
        validate::validate(&config).map_err(|e| {
            let (line, column) = line_column(&text, e.offset);
            ConfigError::Invalid { path: name.to_owned(), line, column, key: e.key, message: e.message }
        })?;
        Ok(Self { config, source_name: name.to_owned(), text })
    }

    /// SHA-256 of the configuration text, hex: names exactly which policy is running.
    pub fn sha256(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::digest(self.text.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Best-effort name of the key whose line holds `offset`, for syntax errors that carry no key.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("").trim();
    let key = line.split('=').next().unwrap_or("").trim();
    if key.is_empty() || line.starts_with('#') { "(syntax)".to_owned() } else { key.to_owned() }
}

#[cfg(test)]
mod fuzz;

/// Cases per property test: PROPTEST_CASES (set by `cargo xtask fuzz`), else 2,000.
#[cfg(test)]
pub(crate) fn fuzz_cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000)
}
#[cfg(test)]
mod tests;
