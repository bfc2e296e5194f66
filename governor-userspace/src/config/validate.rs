//! Semantic checks that serde cannot make: names, references, addresses, paths.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use super::schema::Config;

/// A rejected value: byte offset into the file, dotted key, and what is wrong.
#[derive(Debug)]
pub(super) struct Problem {
    pub offset: usize,
    pub key: String,
    pub message: String,
}

fn problem(
    span: std::ops::Range<usize>,
    key: impl Into<String>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        offset: span.start,
        key: key.into(),
        message: message.into(),
    }
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
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR prefix (e.g. 203.0.113.10, 10.0.0.0/8, 2001:db8::/32)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len_text {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(format!(
                        "{s:?}: prefix length must be a number from 0 to {max}"
                    ));
                }
            },
        };
        let cidr = Cidr { addr, prefix_len };
        let network = cidr.network();
        if network != addr {
            return Err(format!(
                "{s:?} has host bits set; did you mean {network}/{prefix_len}?"
            ));
        }
        Ok(cidr)
    }
}

impl Cidr {
    /// The address with every bit past the prefix cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
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
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "{name:?} may only use letters, digits, '-', '_' and '.', and not start with '.'"
        ));
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
                format!(
                    "duplicate endpoint name {:?} (first defined as endpoint[{first}])",
                    ep.name.get_ref()
                ),
            ));
        }
        if ep.addresses.get_ref().is_empty() {
            return Err(problem(
                ep.addresses.span(),
                key("addresses"),
                "must list at least one address or CIDR prefix",
            ));
        }
        for a in ep.addresses.get_ref() {
            a.get_ref()
                .parse::<Cidr>()
                .map_err(|m| problem(a.span(), key("addresses"), m))?;
        }
        for p in &ep.ports {
            if !(1..=65535).contains(p.get_ref()) {
                return Err(problem(
                    p.span(),
                    key("ports"),
                    format!(
                        "{} is not a port (1 to 65535; leave ports empty for any port)",
                        p.get_ref()
                    ),
                ));
            }
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
                format!(
                    "duplicate agent name {:?} (first defined as agent[{first}])",
                    agent.name.get_ref()
                ),
            ));
        }
        let cgroup_span = agent
            .cgroup
            .as_ref()
            .map_or(agent.name.span(), |c| c.span());
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
                format!(
                    "cgroup {cgroup:?} is already agent[{first}]'s; each agent needs its own cgroup"
                ),
            ));
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

fn validate_daemon(config: &Config) -> Result<(), Problem> {
    let d = &config.daemon;
    let root = d.agents_root.get_ref();
    let bad_root = root.is_empty()
        || root.starts_with('/')
        || root
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad_root {
        return Err(problem(
            d.agents_root.span(),
            "daemon.agents_root",
            format!(
                "{root:?} must be a relative path below the cgroup2 mount, e.g. \"governor.agents\""
            ),
        ));
    }
    if !d.socket.get_ref().is_absolute() {
        return Err(problem(
            d.socket.span(),
            "daemon.socket",
            format!("{:?} must be an absolute path", d.socket.get_ref()),
        ));
    }
    d.metrics.get_ref().parse::<SocketAddr>().map_err(|_| {
        problem(
            d.metrics.span(),
            "daemon.metrics",
            format!(
                "{:?} is not an address:port such as \"127.0.0.1:9477\"",
                d.metrics.get_ref()
            ),
        )
    })?;
    Ok(())
}
