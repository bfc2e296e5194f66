//! Who may do what on the control socket. Reading state: root and `daemon.read_group`;
//! controlling agents: root and `daemon.admin_group`. The caller is whoever the kernel says is at
//! the other end of the socket (SO_PEERCRED), with the groups of that process.

use std::sync::Arc;

use serde::Serialize;
use tokio::net::unix::UCred;

/// The peer of one control connection (inserted into each request by the server).
#[derive(Debug, Clone, Copy)]
pub struct PeerInfo {
    pub cred: Option<UCred>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Admin,
}

/// A caller as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pid: Option<i32>,
    pub user: Option<String>,
}

impl Caller {
    pub fn of(peer: &PeerInfo) -> Self {
        let uid = peer.cred.map(|c| c.uid());
        let user = uid.and_then(|u| nix::unistd::User::from_uid(u.into()).ok().flatten()).map(|u| u.name);
        Self { uid, gid: peer.cred.map(|c| c.gid()), pid: peer.cred.and_then(|c| c.pid()), user }
    }

    pub fn describe(&self) -> String {
        format!(
            "uid {} ({}) pid {}",
            self.uid.map_or("?".into(), |u| u.to_string()),
            self.user.as_deref().unwrap_or("?"),
            self.pid.map_or("?".into(), |p| p.to_string())
        )
    }
}

/// The configured groups, resolved to ids at start.
#[derive(Debug, Clone, Default)]
pub struct AccessGroups {
    pub read: Option<(String, u32)>,
    pub admin: Option<(String, u32)>,
}

impl AccessGroups {
    pub fn resolve(read: Option<&str>, admin: Option<&str>) -> anyhow::Result<Arc<Self>> {
        let look = |name: &str, key: &str| -> anyhow::Result<(String, u32)> {
            let g = nix::unistd::Group::from_name(name)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "{key}: no group named {name:?} on this host; create it (groupadd {name}) or remove the key"
                )
            })?;
            Ok((name.to_owned(), g.gid.as_raw()))
        };
        Ok(Arc::new(Self {
            read: read.map(|n| look(n, "daemon.read_group")).transpose()?,
            admin: admin.map(|n| look(n, "daemon.admin_group")).transpose()?,
        }))
    }

    /// The highest role the peer holds, if any.
    pub fn role(&self, peer: &PeerInfo) -> Option<Role> {
        let cred = peer.cred?;
        if cred.uid() == 0 {
            return Some(Role::Admin);
        }
        let groups = groups_of(cred);
        let member = |g: &Option<(String, u32)>| g.as_ref().is_some_and(|(_, gid)| groups.contains(gid));
        if member(&self.admin) {
            Some(Role::Admin)
        } else if member(&self.read) {
            Some(Role::Read)
        } else {
            None
        }
    }

    /// Why `needed` was refused, for the caller.
    pub fn refusal(&self, needed: Role) -> String {
        let group = match needed {
            Role::Read => self.read.as_ref().or(self.admin.as_ref()),
            Role::Admin => self.admin.as_ref(),
        };
        match group {
            Some((name, _)) => format!("permission denied: this needs root or membership of group {name:?}"),
            None => format!(
                "permission denied: this needs root (no daemon.{} is configured)",
                if needed == Role::Admin { "admin_group" } else { "read_group" }
            ),
        }
    }
}

/// The peer process's primary and supplementary groups (from /proc), or just its gid.
fn groups_of(cred: UCred) -> Vec<u32> {
    let mut out = vec![cred.gid()];
    if let Some(pid) = cred.pid()
        && let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
        && let Some(line) = status.lines().find(|l| l.starts_with("Groups:"))
    {
        out.extend(line["Groups:".len()..].split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
    }
    out
}
