//! Reloading the configuration (SIGHUP, `governor reload`): the new file is validated and
//! compiled first (a bad one is refused and the running policy stays), then audited with its
//! sha256, then applied as a new policy generation that each agent switches to atomically
//! (see `AgentTable::apply`). Settings only a restart can change are refused by name.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::{
    agents::AgentsError,
    config::{ConfigError, DaemonConfig, LoadedConfig},
    control::auth::Caller,
    governor::{Core, Governor, unix_now},
};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is refused, the running policy stays: {0}")]
    Config(Box<ConfigError>),
    #[error("the new configuration is refused, the running policy stays: {0}")]
    Policy(String),
    #[error("the new configuration is refused, the running policy stays: {0} changed, and only a restart applies it")]
    NeedsRestart(&'static str),
    #[error("refused: the audit log cannot be written ({0}); the running policy stays")]
    Unrecorded(String),
    #[error("the kernel did not take the new policy ({0}); the running policy stays")]
    Apply(Box<AgentsError>),
}

/// The first setting that differs and that a reload cannot change.
fn needs_restart(old: &LoadedConfig, new: &LoadedConfig) -> Option<&'static str> {
    let (a, b): (&DaemonConfig, &DaemonConfig) = (&old.config.daemon, &new.config.daemon);
    let same = |x: bool, name| if x { None } else { Some(name) };
    same(a.agents_root.get_ref() == b.agents_root.get_ref(), "daemon.agents_root")
        .or_else(|| same(a.socket.get_ref() == b.socket.get_ref(), "daemon.socket"))
        .or_else(|| same(a.metrics.get_ref() == b.metrics.get_ref(), "daemon.metrics"))
        .or_else(|| same(a.state_dir.get_ref() == b.state_dir.get_ref(), "daemon.state_dir"))
        .or_else(|| same(a.audit_log.get_ref() == b.audit_log.get_ref(), "daemon.audit_log"))
        .or_else(|| same(a.currency.get_ref() == b.currency.get_ref(), "daemon.currency"))
        .or_else(|| same(a.unlisted_agents == b.unlisted_agents, "daemon.unlisted_agents"))
        .or_else(|| {
            same(a.events_buffer_bytes.get_ref() == b.events_buffer_bytes.get_ref(), "daemon.events_buffer_bytes")
        })
        .or_else(|| {
            let g = |x: &Option<toml::Spanned<String>>| x.as_ref().map(|v| v.get_ref().clone());
            same(
                g(&a.read_group) == g(&b.read_group) && g(&a.admin_group) == g(&b.admin_group),
                "daemon.read_group/admin_group",
            )
        })
        .or_else(|| {
            let n = |c: &LoadedConfig| {
                let n = &c.config.notify;
                (n.url.as_ref().map(|u| u.get_ref().clone()), n.command.as_ref().map(|c| c.get_ref().clone()))
            };
            same(n(old) == n(new), "notify")
        })
        .or_else(|| same(old.config.dns.proxy_port.get_ref() == new.config.dns.proxy_port.get_ref(), "dns.proxy_port"))
        .or_else(|| {
            let i = |c: &LoadedConfig| {
                c.config
                    .host
                    .interfaces
                    .as_ref()
                    .map(|v| v.get_ref().iter().map(|n| n.get_ref().clone()).collect::<Vec<_>>())
            };
            same(i(old) == i(new), "host.interfaces")
        })
}

impl Governor {
    /// Reloads the configuration from where it came from. Returns what changed. A refusal is
    /// audited too (`policy_reload_refused`, with the reason and who asked), whether it came
    /// through the socket or SIGHUP.
    pub fn reload(&self, by: &Caller) -> Result<Value, ReloadError> {
        let result = self.try_reload(by);
        if let Err(e) = &result {
            let error = e.to_string();
            tracing::error!(%error, by = %by.describe(), "reload refused");
            if let Err(audit) = self.audit("policy_reload_refused", None, json!({ "error": error, "by": by })) {
                tracing::error!(error = %audit, "the refused reload could not be audited");
            }
        }
        result
    }

    fn try_reload(&self, by: &Caller) -> Result<Value, ReloadError> {
        let new = match &self.config_path {
            Some(p) => LoadedConfig::from_file(p).map_err(|e| ReloadError::Config(Box::new(e)))?,
            None => LoadedConfig::default_config(),
        };
        let old = self.config();
        if let Some(setting) = needs_restart(&old, &new) {
            return Err(ReloadError::NeedsRestart(setting));
        }
        let generation = self.core().maps.current_generation().map_or(0, |g| 1 - g);
        let compiled =
            new.compile_generation(generation).map_err(|e| ReloadError::Policy(crate::cli::error_line(&e)))?;
        let details = json!({ "sha256": new.sha256(), "previous_sha256": old.sha256(), "config": new.source_name.display().to_string(), "by": by });
        self.audit("policy_reload", None, details).map_err(|e| ReloadError::Unrecorded(e.to_string()))?;
        let resolvers = crate::dns::resolvers(&compiled.dns);
        let changed = {
            let mut core = self.core();
            let Core { maps, agents, books, names } = &mut *core;
            let admitted = crate::dns::admit::readmit(names, &compiled, crate::dns::boot_secs());
            let rules = crate::agents::Rules { policy: &compiled, admitted: &admitted };
            let changed = match agents.apply(rules, &self.root, maps, books, true, unix_now()) {
                Ok(c) => c,
                Err(e) => return Err(ReloadError::Apply(Box::new(e))),
            };
            crate::dns::admit::retain_allowed(names, &compiled);
            let d = &compiled.dns;
            for held in names.reconfigure(d.max_names, d.max_addresses_per_name, d.lifetimes()) {
                maps.remove_admitted(&crate::dns::admit::held_entries(&compiled, &held, 1));
            }
            if let Err(e) = maps.set_resolvers(&resolvers, self.dns.port) {
                tracing::error!(error = %e, "the new DNS resolvers were not written; the previous ones stay in force");
            } else {
                *self.dns.resolvers.write().unwrap_or_else(std::sync::PoisonError::into_inner) = resolvers;
            }
            self.learn_endpoints(&compiled);
            // Swapped under the core lock: the DNS proxy reads the policy under it too, so it
            // never admits an answer with a generation the kernel no longer uses.
            *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(compiled);
            changed
        };
        let sha = new.sha256();
        *self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(new);
        self.save_now();
        tracing::info!(sha256 = %sha, by = %by.describe(), ?changed, "configuration reloaded");
        Ok(json!({ "sha256": sha, "agents": changed }))
    }
}
