//! The static readiness rules: what the configuration promises, checked before anything runs.

use std::net::IpAddr;

use super::{Control, Item, Verdict};
use crate::{
    config::{Cidr, Config, Mode, OnDaemonExit, OnExhausted, UnlistedAgents, hostname::HostPattern},
    policy::name_id,
};

fn item(
    control: Control,
    verdict: Verdict,
    check: impl Into<String>,
    reason: impl Into<String>,
    key: Option<String>,
) -> Item {
    Item { control, verdict, check: check.into(), reason: reason.into(), key }
}

/// Every rule, over a validated configuration.
pub fn check(config: &Config) -> Vec<Item> {
    let mut out = Vec::new();
    spend(config, &mut out);
    oversight(config, &mut out);
    boundaries(config, &mut out);
    auditability(config, &mut out);
    out
}

fn spend(config: &Config, out: &mut Vec<Item>) {
    use Control::Spend;
    for (i, a) in config.agents.iter().enumerate() {
        let name = a.name.get_ref();
        let key = |k: &str| Some(format!("agent[{i}].{k}"));
        match &a.budget {
            None => out.push(item(
                Spend,
                Verdict::Fail,
                format!("{name} has a budget ceiling"),
                "no budget: nothing limits what it spends",
                key("budget"),
            )),
            Some(b) => out.push(item(
                Spend,
                Verdict::Pass,
                format!("{name} has a budget ceiling"),
                format!("{} per {}", b.get_ref().limit.get_ref(), b.get_ref().window.get_ref()),
                None,
            )),
        }
        if a.on_exhausted == OnExhausted::Alert {
            out.push(item(
                Spend,
                Verdict::Fail,
                format!("{name} is suspended at its ceiling"),
                "on_exhausted = \"alert\" only notifies: the ceiling is not enforced",
                key("on_exhausted"),
            ));
        } else if a.budget.is_some() {
            out.push(item(
                Spend,
                Verdict::Pass,
                format!("{name} is suspended at its ceiling"),
                "on_exhausted = \"suspend\"",
                None,
            ));
        }
        let thresholds: Vec<i64> = a.thresholds.get_ref().iter().map(|t| *t.get_ref()).collect();
        let missing: Vec<i64> = [50, 80, 100].into_iter().filter(|t| !thresholds.contains(t)).collect();
        if missing.is_empty() {
            out.push(item(
                Spend,
                Verdict::Pass,
                format!("{name} is noticed at 50, 80 and 100%"),
                "thresholds include them",
                None,
            ));
        } else {
            out.push(item(
                Spend,
                Verdict::Warn,
                format!("{name} is noticed at 50, 80 and 100%"),
                format!("thresholds lack {missing:?}"),
                key("thresholds"),
            ));
        }
        for e in &a.endpoints {
            if let Some((j, ep)) = config.endpoints.iter().enumerate().find(|(_, ep)| ep.name.get_ref() == e.get_ref())
            {
                let p = &ep.price;
                if p.connection.is_none() && p.mib_sent.is_none() && p.mib_received.is_none() {
                    out.push(item(
                        Spend,
                        Verdict::Fail,
                        format!("{name} pays for {}", e.get_ref()),
                        "the endpoint has no price: its traffic costs nothing against the budget",
                        Some(format!("endpoint[{j}].price")),
                    ));
                }
            }
        }
    }
    match &config.host.budget {
        None => out.push(item(
            Spend,
            Verdict::Warn,
            "the host has a budget over all agents",
            "no host-wide ceiling",
            Some("host.budget".into()),
        )),
        Some(_) if config.host.on_exhausted == OnExhausted::Alert => out.push(item(
            Spend,
            Verdict::Warn,
            "the host has a budget over all agents",
            "host.on_exhausted = \"alert\": not enforced",
            Some("host.on_exhausted".into()),
        )),
        Some(b) => out.push(item(
            Spend,
            Verdict::Pass,
            "the host has a budget over all agents",
            format!("{} per {}", b.get_ref().limit.get_ref(), b.get_ref().window.get_ref()),
            None,
        )),
    }
}

fn oversight(config: &Config, out: &mut Vec<Item>) {
    use Control::Oversight;
    for (i, a) in config.agents.iter().enumerate() {
        let name = a.name.get_ref();
        let has = a.checkpoints.as_ref().is_some_and(|c| {
            let c = c.get_ref();
            c.every_spend.is_some() || c.every.is_some() || c.every_connections.is_some()
        });
        if has {
            out.push(item(
                Oversight,
                Verdict::Pass,
                format!("{name} has a checkpoint where a person must look"),
                "checkpoints set",
                None,
            ));
        } else {
            out.push(item(
                Oversight,
                Verdict::Fail,
                format!("{name} has a checkpoint where a person must look"),
                "no checkpoints: it can run for ever without review",
                Some(format!("agent[{i}].checkpoints")),
            ));
        }
    }
    match &config.daemon.admin_group {
        None => out.push(item(
            Oversight,
            Verdict::Warn,
            "operators can pause and kill without root",
            "no admin group: only root can control agents",
            Some("daemon.admin_group".into()),
        )),
        Some(g) => match nix::unistd::Group::from_name(g.get_ref()) {
            Ok(Some(_)) => out.push(item(
                Oversight,
                Verdict::Pass,
                "operators can pause and kill without root",
                format!("group {:?}", g.get_ref()),
                None,
            )),
            _ => out.push(item(
                Oversight,
                Verdict::Fail,
                "operators can pause and kill without root",
                format!("group {:?} does not exist on this host", g.get_ref()),
                Some("daemon.admin_group".into()),
            )),
        },
    }
    if config.notify.url.is_none() && config.notify.command.is_none() {
        out.push(item(
            Oversight,
            Verdict::Warn,
            "notices reach a person",
            "no notification hook: notices go to the audit log, metrics and logs only",
            Some("notify".into()),
        ));
    } else {
        out.push(item(Oversight, Verdict::Pass, "notices reach a person", "a notification hook is set", None));
    }
}

fn boundaries(config: &Config, out: &mut Vec<Item>) {
    use Control::Boundaries;
    for (j, ep) in config.endpoints.iter().enumerate() {
        for a in ep.addresses.get_ref() {
            let Ok(cidr) = a.get_ref().parse::<Cidr>() else { continue };
            let key = Some(format!("endpoint[{j}].addresses"));
            let broad = match cidr.addr {
                IpAddr::V4(_) => cidr.prefix_len <= 8,
                IpAddr::V6(_) => cidr.prefix_len <= 16,
            };
            if cidr.prefix_len == 0 {
                out.push(item(
                    Boundaries,
                    Verdict::Fail,
                    format!("{} is not a catch-all", ep.name.get_ref()),
                    format!("{cidr} allows the whole address space"),
                    key,
                ));
            } else if broad {
                out.push(item(
                    Boundaries,
                    Verdict::Warn,
                    format!("{} is not a catch-all", ep.name.get_ref()),
                    format!("{cidr} is very broad"),
                    key,
                ));
            }
        }
        for h in &ep.hosts {
            // `*.com` admits whatever any .com name resolves to: a catch-all in all but name.
            if let Ok(HostPattern::Below(suffix)) = h.get_ref().parse::<HostPattern>()
                && !suffix.contains('.')
            {
                out.push(item(
                    Boundaries,
                    Verdict::Fail,
                    format!("{} is not a catch-all", ep.name.get_ref()),
                    format!("{} admits every name under a top-level domain", h.get_ref()),
                    Some(format!("endpoint[{j}].hosts")),
                ));
            }
        }
    }
    for (i, a) in config.agents.iter().enumerate() {
        let name = a.name.get_ref();
        let key = |k: &str| Some(format!("agent[{i}].{k}"));
        if a.mode == Mode::Observe {
            out.push(item(
                Boundaries,
                Verdict::Fail,
                format!("{name} is enforced"),
                "mode = \"observe\" refuses nothing",
                key("mode"),
            ));
        } else {
            out.push(item(
                Boundaries,
                Verdict::Pass,
                format!("{name} is enforced"),
                format!("{} allowlisted endpoints", a.endpoints.len()),
                None,
            ));
        }
        let limits = a.limits.as_ref().map(|l| l.get_ref());
        match limits.and_then(|l| l.connections_per_minute.as_ref()) {
            Some(r) => out.push(item(
                Boundaries,
                Verdict::Pass,
                format!("{name} has a rate limit"),
                format!("{} connections a minute", r.get_ref()),
                None,
            )),
            None => out.push(item(
                Boundaries,
                Verdict::Fail,
                format!("{name} has a rate limit"),
                "no connections_per_minute: a loop can open connections without bound",
                key("limits"),
            )),
        }
        match limits.and_then(|l| l.max_concurrent.as_ref()) {
            Some(c) => out.push(item(
                Boundaries,
                Verdict::Pass,
                format!("{name} has a concurrency limit"),
                format!("{} at once", c.get_ref()),
                None,
            )),
            None => out.push(item(
                Boundaries,
                Verdict::Fail,
                format!("{name} has a concurrency limit"),
                "no max_concurrent: it can hold connections without bound",
                key("limits"),
            )),
        }
    }
    // Ids must not collide with another's in the other policy generation (see policy/ids.rs);
    // compilation refuses it, so a validated config here always passes.
    let _ = name_id;
    out.push(resolvers_pinned(config));
    if config.daemon.unlisted_agents == UnlistedAgents::Observe {
        out.push(item(
            Boundaries,
            Verdict::Warn,
            "every agent cgroup is bounded",
            "unlisted child cgroups are observed (counted), not bounded",
            Some("daemon.unlisted_agents".into()),
        ));
    }
}

/// Agents' DNS goes only to the resolvers governor lets through (its proxy); say which.
fn resolvers_pinned(config: &Config) -> Item {
    let check = "DNS resolvers are pinned";
    let uses_hosts = config.endpoints.iter().any(|e| !e.hosts.is_empty());
    match &config.dns.resolvers {
        Some(r) => {
            let list: Vec<&str> = r.get_ref().iter().map(|a| a.get_ref().as_str()).collect();
            item(
                Control::Boundaries,
                Verdict::Pass,
                check,
                format!(
                    "agents' DNS goes only to {} through governor's proxy; any other resolver is refused",
                    list.join(", ")
                ),
                None,
            )
        }
        None => {
            let system = crate::dns::system_resolvers();
            let (verdict, reason) = if !system.is_empty() {
                let list: Vec<String> = system.iter().map(ToString::to_string).collect();
                (
                    Verdict::Pass,
                    format!(
                        "agents' DNS goes only to {} (this host's /etc/resolv.conf, read at start and reload); any other resolver is refused",
                        list.join(", ")
                    ),
                )
            } else if uses_hosts {
                (
                    Verdict::Warn,
                    "no resolver: dns.resolvers is unset and /etc/resolv.conf names none, so agents' DNS is refused and host names are never admitted".into(),
                )
            } else {
                (Verdict::Pass, "no resolver on this host: agents' DNS is refused".into())
            };
            item(Control::Boundaries, verdict, check, reason, Some("dns.resolvers".into()))
        }
    }
}

fn auditability(config: &Config, out: &mut Vec<Item>) {
    use Control::Auditability;
    let log = config.daemon.audit_log.get_ref();
    let dir = log.parent().unwrap_or(log);
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(dir);
    // The nearest existing ancestor must be a directory this user may write (it is created
    // below it); a path under a file can never be.
    let writable = existing.is_dir() && nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok();
    if writable {
        out.push(item(Auditability, Verdict::Pass, "the audit log is writable", format!("{}", log.display()), None));
    } else {
        out.push(item(
            Auditability,
            Verdict::Fail,
            "the audit log is writable",
            format!("{} cannot be written here", existing.display()),
            Some("daemon.audit_log".into()),
        ));
    }
    if log.exists() {
        match crate::audit::verify::verify_log(log) {
            Ok(r) => out.push(item(
                Auditability,
                Verdict::Pass,
                "the audit chain verifies",
                format!("{} records intact", r.records),
                None,
            )),
            Err(b) => out.push(item(
                Auditability,
                Verdict::Fail,
                "the audit chain verifies",
                b.to_string(),
                Some("daemon.audit_log".into()),
            )),
        }
    }
    if config.daemon.on_daemon_exit == OnDaemonExit::Detach {
        out.push(item(
            Auditability,
            Verdict::Warn,
            "enforcement outlives the daemon",
            "on_daemon_exit = \"detach\": a stopped daemon leaves agents unbounded",
            Some("daemon.on_daemon_exit".into()),
        ));
    } else {
        out.push(item(
            Auditability,
            Verdict::Pass,
            "enforcement outlives the daemon",
            "on_daemon_exit = \"enforce\"",
            None,
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::LoadedConfig;

    const READY: &str = r#"
[daemon]
audit_log = "/tmp/governor-readiness-test/audit.jsonl"
unlisted_agents = "ignore"
[[endpoint]]
name = "api"
addresses = ["203.0.113.10"]
ports = [443]
price = { connection = "0.001", mib_sent = "0.5" }
[[agent]]
name = "scanner"
endpoints = ["api"]
budget = { limit = "25", window = "day" }
checkpoints = { every_spend = "5" }
limits = { connections_per_minute = 600, max_concurrent = 32 }
[host]
budget = { limit = "500", window = "month" }
[notify]
command = ["true"]
"#;

    fn items(text: &str) -> Vec<Item> {
        check(&LoadedConfig::from_str(Path::new("t.toml"), text.to_owned()).unwrap().config)
    }

    fn fails(text: &str) -> Vec<(String, Option<String>)> {
        items(text).into_iter().filter(|i| i.verdict == Verdict::Fail).map(|i| (i.reason, i.key)).collect()
    }

    #[test]
    fn a_ready_config_has_no_fail() {
        assert_eq!(fails(READY), vec![]);
    }

    #[test]
    fn configured_resolvers_pass_as_pinned() {
        let text = READY.replace("[notify]", "[dns]\nresolvers = [\"10.0.0.2\"]\n[notify]");
        let i = items(&text).into_iter().find(|i| i.check == "DNS resolvers are pinned").unwrap();
        assert_eq!(i.verdict, Verdict::Pass);
        assert!(i.reason.contains("10.0.0.2"), "{}", i.reason);
    }

    #[test]
    fn each_fail_rule_names_its_key() {
        // A path below a regular file can never hold the audit log, even for root.
        let file = tempfile::NamedTempFile::new().unwrap();
        let under_a_file = format!("{}/governor/audit.jsonl", file.path().display());
        let cases = [
            (READY.replace("budget = { limit = \"25\", window = \"day\" }", ""), "agent[0].budget"),
            (
                READY.replace(
                    "checkpoints = { every_spend = \"5\" }",
                    "checkpoints = { every_spend = \"5\" }\non_exhausted = \"alert\"",
                ),
                "agent[0].on_exhausted",
            ),
            (READY.replace("price = { connection = \"0.001\", mib_sent = \"0.5\" }", ""), "endpoint[0].price"),
            (READY.replace("checkpoints = { every_spend = \"5\" }", ""), "agent[0].checkpoints"),
            (READY.replace("addresses = [\"203.0.113.10\"]", "addresses = [\"0.0.0.0/0\"]"), "endpoint[0].addresses"),
            (READY.replace("ports = [443]", "ports = [443]\nhosts = [\"*.com\"]"), "endpoint[0].hosts"),
            (
                READY.replace(
                    "limits = { connections_per_minute = 600, max_concurrent = 32 }",
                    "limits = { max_concurrent = 32 }",
                ),
                "agent[0].limits",
            ),
            (
                READY.replace(
                    "limits = { connections_per_minute = 600, max_concurrent = 32 }",
                    "limits = { connections_per_minute = 600 }",
                ),
                "agent[0].limits",
            ),
            (READY.replace("endpoints = [\"api\"]", "endpoints = [\"api\"]\nmode = \"observe\""), "agent[0].mode"),
            (
                READY.replace("[notify]", "[notify]\n").replace(
                    "unlisted_agents = \"ignore\"",
                    "unlisted_agents = \"ignore\"\nadmin_group = \"no-such-group-here\"",
                ),
                "daemon.admin_group",
            ),
            (READY.replace("/tmp/governor-readiness-test/audit.jsonl", &under_a_file), "daemon.audit_log"),
        ];
        for (text, key) in cases {
            let f = fails(&text);
            assert!(f.iter().any(|(_, k)| k.as_deref() == Some(key)), "expected a FAIL naming {key}: {f:?}");
        }
    }

    #[test]
    fn warnings_say_what_is_weak() {
        let warn: Vec<Option<String>> =
            items(&READY.replace("[host]\nbudget = { limit = \"500\", window = \"month\" }", ""))
                .into_iter()
                .filter(|i| i.verdict == Verdict::Warn)
                .map(|i| i.key)
                .collect();
        assert!(warn.contains(&Some("host.budget".into())), "{warn:?}");
    }
}
