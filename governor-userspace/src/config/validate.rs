//! Semantic checks that serde cannot make: names, references, addresses, paths.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use super::{
    hostname::HostPattern,
    schema::{BudgetConfig, Config, PriceConfig},
};
use crate::accounting::{
    money::{MAX_CONNECTION_PRICE, MAX_LIMIT, MAX_MIB_PRICE, Money},
    window::{Window, parse_duration},
};
use toml::Spanned;

/// A rejected value: byte offset into the file, dotted key, and what is wrong.
#[derive(Debug)]
pub(super) struct Problem {
    pub offset: usize,
    pub key: String,
    pub message: String,
}

fn problem(span: std::ops::Range<usize>, key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem { offset: span.start, key: key.into(), message: message.into() }
}

/// An IP prefix: an address with its prefix length; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `203.0.113.10` (a /32), `2001:db8::/32`, `10.0.0.0/8`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr_text, len_text) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| {
            format!("{s:?} is not an IP address or CIDR prefix (e.g. 203.0.113.10, 10.0.0.0/8, 2001:db8::/32)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_text {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!("{s:?}: prefix length must be a number from 0 to {max}"));
                }
            },
        };
        let cidr = Cidr { addr, prefix_len };
        let network = cidr.network();
        if network != addr {
            return Err(format!("{s:?} has host bits set; did you mean {network}/{prefix_len}?"));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The address with every bit past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

/// A name usable as an agent or endpoint name and in metric labels.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || name.starts_with('.') {
        return Err(format!("{name:?} may only use letters, digits, '-', '_' and '.', and not start with '.'"));
    }
    Ok(())
}

pub(super) fn validate(config: &Config) -> Result<(), Problem> {
    validate_daemon(config)?;

    let mut endpoints: HashMap<&str, usize> = HashMap::new();
    for (i, ep) in config.endpoints.iter().enumerate() {
        let key = |k: &str| format!("endpoint[{i}].{k}");
        check_name(ep.name.get_ref()).map_err(|m| problem(ep.name.span(), key("name"), m))?;
        if let Some(first) = endpoints.insert(ep.name.get_ref(), i) {
            return Err(problem(
                ep.name.span(),
                key("name"),
                format!("duplicate endpoint name {:?} (first defined as endpoint[{first}])", ep.name.get_ref()),
            ));
        }
        if ep.name.get_ref() == "dns" {
            return Err(problem(
                ep.name.span(),
                key("name"),
                "\"dns\" is reserved: DNS to the configured resolvers is counted under it",
            ));
        }
        if ep.addresses.get_ref().is_empty() && ep.hosts.is_empty() {
            return Err(problem(
                ep.name.span(),
                key("addresses"),
                "must list at least one address or CIDR prefix in addresses, or a host name in hosts",
            ));
        }
        for h in &ep.hosts {
            h.get_ref().parse::<HostPattern>().map_err(|m| problem(h.span(), key("hosts"), m))?;
        }
        for a in ep.addresses.get_ref() {
            a.get_ref().parse::<Cidr>().map_err(|m| problem(a.span(), key("addresses"), m))?;
        }
        for p in &ep.ports {
            if !(1..=65535).contains(p.get_ref()) {
                return Err(problem(
                    p.span(),
                    key("ports"),
                    format!("{} is not a port (1 to 65535; leave ports empty for any port)", p.get_ref()),
                ));
            }
        }
        validate_price(&ep.price, &key("price"))?;
        if let Some(l) = &ep.limits {
            validate_limits(l.get_ref(), &key("limits"))?;
        }
    }

    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut cgroups: HashMap<&str, usize> = HashMap::new();
    for (i, agent) in config.agents.iter().enumerate() {
        let key = |k: &str| format!("agent[{i}].{k}");
        check_name(agent.name.get_ref()).map_err(|m| problem(agent.name.span(), key("name"), m))?;
        if let Some(first) = names.insert(agent.name.get_ref(), i) {
            return Err(problem(
                agent.name.span(),
                key("name"),
                format!("duplicate agent name {:?} (first defined as agent[{first}])", agent.name.get_ref()),
            ));
        }
        for p in &agent.inbound {
            if !(1..=65535).contains(p.get_ref()) {
                return Err(problem(p.span(), key("inbound"), format!("{} is not a port (1 to 65535)", p.get_ref())));
            }
        }
        let cgroup_span = agent.cgroup.as_ref().map_or(agent.name.span(), |c| c.span());
        let cgroup = agent.cgroup_name();
        check_name(cgroup).map_err(|m| {
            problem(
                cgroup_span.clone(),
                key("cgroup"),
                format!("{m} (an agent cgroup is one directory directly under agents_root)"),
            )
        })?;
        if let Some(first) = cgroups.insert(cgroup, i) {
            return Err(problem(
                cgroup_span,
                key("cgroup"),
                format!("cgroup {cgroup:?} is already agent[{first}]'s; each agent needs its own cgroup"),
            ));
        }
        if let Some(b) = &agent.budget {
            validate_budget(b, &key("budget"))?;
        }
        validate_thresholds(&agent.thresholds, &key("thresholds"))?;
        if let Some(l) = &agent.limits {
            validate_limits(l.get_ref(), &key("limits"))?;
        }
        if let Some(c) = &agent.checkpoints {
            let k = key("checkpoints");
            let c = c.get_ref();
            if let Some(s) = &c.every_spend {
                let m = amount(s, &format!("{k}.every_spend"), MAX_LIMIT)?;
                if m.0 == 0 {
                    return Err(problem(s.span(), format!("{k}.every_spend"), "must be more than 0"));
                }
            }
            if let Some(e) = &c.every {
                parse_duration(e.get_ref()).map_err(|m| problem(e.span(), format!("{k}.every"), m))?;
            }
            if let Some(n) = &c.every_connections
                && *n.get_ref() < 1
            {
                return Err(problem(n.span(), format!("{k}.every_connections"), "must be 1 or more"));
            }
        }
        for e in &agent.endpoints {
            if !endpoints.contains_key(e.get_ref().as_str()) {
                let mut known: Vec<&str> = endpoints.keys().copied().collect();
                known.sort_unstable();
                let known = if known.is_empty() {
                    "none are defined".to_owned()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                return Err(problem(
                    e.span(),
                    key("endpoints"),
                    format!("unknown endpoint {:?} ({known})", e.get_ref()),
                ));
            }
        }
    }
    Ok(())
}

fn validate_limits(l: &super::LimitsConfig, key: &str) -> Result<(), Problem> {
    for (v, name, max) in [
        (&l.connections_per_minute, "connections_per_minute", 60_000_000),
        (&l.burst, "burst", 1_000_000),
        (&l.max_concurrent, "max_concurrent", 1_000_000),
    ] {
        if let Some(v) = v
            && !(1..=max).contains(v.get_ref())
        {
            return Err(problem(v.span(), format!("{key}.{name}"), format!("{} must be from 1 to {max}", v.get_ref())));
        }
    }
    if let (Some(b), None) = (&l.burst, &l.connections_per_minute) {
        return Err(problem(b.span(), format!("{key}.burst"), "burst needs connections_per_minute"));
    }
    Ok(())
}

/// Parses an amount, bounded by `max`.
pub(crate) fn amount(text: &Spanned<String>, key: &str, max: Money) -> Result<Money, Problem> {
    let m = Money::parse(text.get_ref()).map_err(|e| problem(text.span(), key, e))?;
    if m > max {
        return Err(problem(
            text.span(),
            key,
            format!("{:?} is above the largest accepted amount, {max}", text.get_ref()),
        ));
    }
    Ok(m)
}

fn validate_price(p: &PriceConfig, key: &str) -> Result<(), Problem> {
    if let Some(c) = &p.connection {
        amount(c, &format!("{key}.connection"), MAX_CONNECTION_PRICE)?;
    }
    if let Some(s) = &p.mib_sent {
        amount(s, &format!("{key}.mib_sent"), MAX_MIB_PRICE)?;
    }
    if let Some(r) = &p.mib_received {
        amount(r, &format!("{key}.mib_received"), MAX_MIB_PRICE)?;
    }
    Ok(())
}

fn validate_budget(b: &Spanned<BudgetConfig>, key: &str) -> Result<(), Problem> {
    let b = b.get_ref();
    amount(&b.limit, &format!("{key}.limit"), MAX_LIMIT)?;
    b.window.get_ref().parse::<Window>().map_err(|e| problem(b.window.span(), format!("{key}.window"), e))?;
    Ok(())
}

fn validate_thresholds(t: &Spanned<Vec<Spanned<i64>>>, key: &str) -> Result<(), Problem> {
    let mut seen = Vec::new();
    for p in t.get_ref() {
        if !(1..=100).contains(p.get_ref()) {
            return Err(problem(
                p.span(),
                key,
                format!("{} is not a percentage of the budget (1 to 100)", p.get_ref()),
            ));
        }
        if seen.contains(p.get_ref()) {
            return Err(problem(p.span(), key, format!("{} is listed twice", p.get_ref())));
        }
        seen.push(*p.get_ref());
    }
    Ok(())
}

fn validate_daemon(config: &Config) -> Result<(), Problem> {
    let host = &config.host;
    if let Some(b) = &host.budget {
        validate_budget(b, "host.budget")?;
    }
    validate_thresholds(&host.thresholds, "host.thresholds")?;
    if let Some(p) = &host.egress_price_per_gib {
        amount(p, "host.egress_price_per_gib", MAX_MIB_PRICE)?;
    }
    if let Some(ifs) = &host.interfaces {
        for i in ifs.get_ref() {
            let name = i.get_ref();
            if name.is_empty() || name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace) {
                return Err(problem(i.span(), "host.interfaces", format!("{name:?} is not an interface name")));
            }
        }
    }
    let n = &config.notify;
    if let Some(url) = &n.url {
        let u = url.get_ref();
        if u.starts_with("https://") {
            return Err(problem(
                url.span(),
                "notify.url",
                "https is not supported here; post to a local relay over http, or use notify.command (e.g. [\"curl\", ...])",
            ));
        }
        if !u.starts_with("http://") || u.parse::<axum::http::Uri>().is_err() {
            return Err(problem(url.span(), "notify.url", format!("{u:?} is not an http:// URL")));
        }
    }
    if let Some(c) = &n.command
        && c.get_ref().is_empty()
    {
        return Err(problem(c.span(), "notify.command", "must name a program, e.g. [\"/usr/local/bin/page\"]"));
    }
    if !(1..=20).contains(n.attempts.get_ref()) {
        return Err(problem(n.attempts.span(), "notify.attempts", "must be from 1 to 20"));
    }
    parse_duration(n.timeout.get_ref()).map_err(|e| problem(n.timeout.span(), "notify.timeout", e))?;
    let d = &config.daemon;
    if d.currency.get_ref().is_empty()
        || d.currency.get_ref().len() > 8
        || !d.currency.get_ref().chars().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(problem(d.currency.span(), "daemon.currency", "must be a short label such as \"USD\""));
    }
    let eb = *d.events_buffer_bytes.get_ref();
    if !(4096..=1 << 30).contains(&eb) || (eb as u64).count_ones() != 1 {
        return Err(problem(
            d.events_buffer_bytes.span(),
            "daemon.events_buffer_bytes",
            format!("{eb} must be a power of two from 4096 to 1073741824"),
        ));
    }
    if *d.audit_max_bytes.get_ref() < 4096 {
        return Err(problem(d.audit_max_bytes.span(), "daemon.audit_max_bytes", "must be at least 4096"));
    }
    if !(1..=1000).contains(d.audit_keep.get_ref()) {
        return Err(problem(d.audit_keep.span(), "daemon.audit_keep", "must be from 1 to 1000"));
    }
    for (g, key) in [(&d.read_group, "daemon.read_group"), (&d.admin_group, "daemon.admin_group")] {
        if let Some(g) = g
            && g.get_ref().is_empty()
        {
            return Err(problem(g.span(), key, "must name a group"));
        }
    }
    for (path, key) in [(&d.state_dir, "daemon.state_dir"), (&d.audit_log, "daemon.audit_log")] {
        if !path.get_ref().is_absolute() {
            return Err(problem(path.span(), key, format!("{:?} must be an absolute path", path.get_ref())));
        }
    }
    let d = &config.daemon;
    let root = d.agents_root.get_ref();
    let bad_root =
        root.is_empty() || root.starts_with('/') || root.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad_root {
        return Err(problem(
            d.agents_root.span(),
            "daemon.agents_root",
            format!("{root:?} must be a relative path below the cgroup2 mount, e.g. \"governor.agents\""),
        ));
    }
    if !d.socket.get_ref().is_absolute() {
        return Err(problem(
            d.socket.span(),
            "daemon.socket",
            format!("{:?} must be an absolute path", d.socket.get_ref()),
        ));
    }
    validate_dns(&config.dns)?;
    d.metrics.get_ref().parse::<SocketAddr>().map_err(|_| {
        problem(
            d.metrics.span(),
            "daemon.metrics",
            format!("{:?} is not an address:port such as \"127.0.0.1:9477\"", d.metrics.get_ref()),
        )
    })?;
    Ok(())
}

fn validate_dns(dns: &super::DnsConfig) -> Result<(), Problem> {
    if let Some(r) = &dns.resolvers {
        if r.get_ref().is_empty() {
            return Err(problem(
                r.span(),
                "dns.resolvers",
                "must list at least one resolver address (omit it to use /etc/resolv.conf)",
            ));
        }
        if r.get_ref().len() > governor_common::MAX_RESOLVERS as usize {
            return Err(problem(
                r.span(),
                "dns.resolvers",
                format!("at most {} resolvers", governor_common::MAX_RESOLVERS),
            ));
        }
        for a in r.get_ref() {
            a.get_ref().parse::<IpAddr>().map_err(|_| {
                problem(
                    a.span(),
                    "dns.resolvers",
                    format!("{:?} is not an IP address (resolvers are queried on port 53)", a.get_ref()),
                )
            })?;
        }
    }
    if !(0..=65535).contains(dns.proxy_port.get_ref()) {
        return Err(problem(
            dns.proxy_port.span(),
            "dns.proxy_port",
            "must be from 1 to 65535, or 0 for any free port",
        ));
    }
    for (d, key) in [
        (&dns.min_ttl, "dns.min_ttl"),
        (&dns.grace, "dns.grace"),
        (&dns.refresh, "dns.refresh"),
        (&dns.upstream_timeout, "dns.upstream_timeout"),
    ] {
        parse_duration(d.get_ref()).map_err(|m| problem(d.span(), key, m))?;
    }
    for (v, key, max) in [
        (&dns.max_addresses_per_name, "dns.max_addresses_per_name", 1024),
        (&dns.max_names, "dns.max_names", 1_000_000),
    ] {
        if !(1..=max).contains(v.get_ref()) {
            return Err(problem(v.span(), key, format!("{} must be from 1 to {max}", v.get_ref())));
        }
    }
    Ok(())
}
