//! The kernel side as the daemon sees it: load the embedded object with its maps pinned in
//! bpffs (adopting the previous daemon's maps when they exist), attach or atomically update the
//! pinned links on the agents root, and typed handles on every map.

mod events;
pub mod link;
mod maps;
pub mod pins;
pub mod sockets;

use std::{fs::File, os::fd::AsFd as _, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, CgroupSockopt, SchedClassifier,
        TcAttachType, links::FdLink,
    },
};
use governor_common::{GLOBAL_AGENT_LEVEL, maps as map_names, programs};

pub use events::{DecodeError, Denial, decode_event, reason_name};
pub use maps::{AgentCounters, DynamicRule, KernelMaps};
pub use pins::PinDir;

/// The object `cargo xtask build-ebpf` built, embedded at compile time (empty if it was absent).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOVERNOR_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this governor binary was built without its eBPF programs; build it with `cargo xtask build` \
         (which builds the programs first) instead of plain `cargo build`"
    )]
    NoObject,
    #[error("loading the eBPF object failed: {0}; is this root with CAP_BPF on a kernel with BTF (5.8+)?")]
    Load(#[source] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object; rebuild with `cargo xtask build`")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object; rebuild with `cargo xtask build`")]
    MissingMap { name: &'static str },
    #[error("program {name}: {op} failed: {source}")]
    Program {
        name: &'static str,
        op: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {op} failed: {source}")]
    Map {
        name: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("link of {name} at {}: {op} failed: {source}", path.display())]
    Link {
        name: &'static str,
        path: std::path::PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open cgroup {}: {source}", path.display())]
    OpenCgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pins(#[from] pins::PinError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {name} (host.interfaces): {message}")]
    Interface { name: String, message: String },
}

/// Loaded programs with pinned maps and links. Dropping it closes the daemon's handles but
/// leaves the pins, so enforcement and counting go on; `detach` removes the programs.
pub struct Kernel {
    ebpf: Ebpf,
    pins: PinDir,
    /// True when the maps were already pinned: a previous daemon's counts were adopted.
    pub adopted: bool,
}

const SOCK_ADDR_PROGRAMS: [&str; 10] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::RECVMSG4,
    programs::RECVMSG6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::BIND4,
    programs::BIND6,
];
const SOCK_PROGRAMS: [&str; 2] = [programs::SOCK_CREATE, programs::SOCK_RELEASE];
const SOCKOPT_PROGRAMS: [&str; 1] = [programs::SETSOCKOPT];
const SKB_PROGRAMS: [(&str, CgroupSkbAttachType); 2] =
    [(programs::SKB_EGRESS, CgroupSkbAttachType::Egress), (programs::SKB_INGRESS, CgroupSkbAttachType::Ingress)];

impl Kernel {
    /// Loads the embedded programs for agents at cgroup level `agent_level`, reusing the maps
    /// pinned in `pins` if there are any. Nothing is attached yet.
    pub fn load(agent_level: u32, events_buffer_bytes: u32, pins: PinDir) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        let adopted = pins.map(map_names::SPEND).exists();
        let mut loader = EbpfLoader::new();
        loader.override_global(GLOBAL_AGENT_LEVEL, &agent_level, true);
        loader.map_max_entries(map_names::EVENTS, events_buffer_bytes);
        for name in map_names::ALL {
            loader.map_pin_path(name, pins.map(name));
        }
        let ebpf = loader.load(OBJECT).map_err(KernelError::Load)?;
        Ok(Self { ebpf, pins, adopted })
    }

    /// Takes the maps out of the object; call once, before `attach`, so the maps are filled
    /// before any new program can run.
    pub fn take_maps(&mut self) -> Result<(KernelMaps, RingBuf<MapData>), KernelError> {
        let events =
            self.ebpf.take_map(map_names::EVENTS).ok_or(KernelError::MissingMap { name: map_names::EVENTS })?;
        let events = RingBuf::try_from(events).map_err(|source| KernelError::Map {
            name: map_names::EVENTS,
            op: "open",
            source,
        })?;
        Ok((KernelMaps::take(&mut self.ebpf)?, events))
    }

    /// Loads every program and puts it on `cgroup` (the agents root), so it runs for every agent
    /// below it, present and future. A link a previous daemon pinned for this same cgroup is
    /// switched to the new program atomically; otherwise a new link is made and pinned.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let file = File::open(cgroup).map_err(|source| KernelError::OpenCgroup { path: cgroup.to_owned(), source })?;
        let root_id = crate::cgroup::cgroup_id(cgroup).unwrap_or(0);
        self.forget_links_of_other_cgroups(root_id);
        for name in SOCK_ADDR_PROGRAMS {
            self.program::<CgroupSockAddr>(name)?.load().map_err(program_err(name, "load"))?;
            self.link(name, root_id, |k| {
                let prog: &mut CgroupSockAddr = k.program(name)?;
                // Single: on 5.7+ aya makes a bpf_link, which coexists with other programs anyway.
                let id = prog.attach(&file, CgroupAttachMode::Single).map_err(program_err(name, "attach"))?;
                fd_link(name, prog.take_link(id).map_err(program_err(name, "take link"))?)
            })?;
        }
        for name in SOCK_PROGRAMS {
            self.program::<CgroupSock>(name)?.load().map_err(program_err(name, "load"))?;
            self.link(name, root_id, |k| {
                let prog: &mut CgroupSock = k.program(name)?;
                let id = prog.attach(&file, CgroupAttachMode::Single).map_err(program_err(name, "attach"))?;
                fd_link(name, prog.take_link(id).map_err(program_err(name, "take link"))?)
            })?;
        }
        for name in SOCKOPT_PROGRAMS {
            // aya 0.14's setsockopt link cannot become an FdLink to pin: made and pinned here.
            self.program::<CgroupSockopt>(name)?.load().map_err(program_err(name, "load"))?;
            let pin = self.pins.link(&link_name(name, root_id));
            let program = self.ebpf.program(name).ok_or(KernelError::MissingProgram { name })?;
            let fd = program.fd().map_err(program_err(name, "fd"))?;
            if update_pinned(name, &pin, fd.as_fd())? {
                continue;
            }
            let err = |op, source| KernelError::Link { name, path: pin.clone(), op, source };
            let link_fd = link::link_create(fd.as_fd(), file.as_fd(), link::BPF_CGROUP_SETSOCKOPT)
                .map_err(|e| err("create link", e))?;
            link::obj_pin(link_fd.as_fd(), &pin).map_err(|e| err("pin", e))?;
        }
        for (name, attach_type) in SKB_PROGRAMS {
            self.program::<CgroupSkb>(name)?.load().map_err(program_err(name, "load"))?;
            self.link(name, root_id, |k| {
                let prog: &mut CgroupSkb = k.program(name)?;
                let id =
                    prog.attach(&file, attach_type, CgroupAttachMode::Single).map_err(program_err(name, "attach"))?;
                fd_link(name, prog.take_link(id).map_err(program_err(name, "take link"))?)
            })?;
        }
        Ok(())
    }

    /// Puts the loaded program `name` on the agents root (cgroup id `root_id`): the link a
    /// previous daemon pinned for it is switched to the program atomically; without one,
    /// `attach` makes a new link, which is pinned.
    fn link(
        &mut self,
        name: &'static str,
        root_id: u64,
        attach: impl FnOnce(&mut Self) -> Result<FdLink, KernelError>,
    ) -> Result<(), KernelError> {
        let pin = self.pins.link(&link_name(name, root_id));
        let program = self.ebpf.program(name).ok_or(KernelError::MissingProgram { name })?;
        let fd = program.fd().map_err(program_err(name, "fd"))?;
        if update_pinned(name, &pin, fd.as_fd())? {
            return Ok(());
        }
        let link = attach(self)?;
        pin_link(name, link, &pin)
    }

    fn program<'a, T>(&'a mut self, name: &'static str) -> Result<&'a mut T, KernelError>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf
            .program_mut(name)
            .ok_or(KernelError::MissingProgram { name })?
            .try_into()
            .map_err(program_err(name, "type check"))
    }

    /// Links pinned for an agents root that has since been removed and recreated are defunct
    /// (the kernel detached them with the old cgroup): drop their pins.
    fn forget_links_of_other_cgroups(&self, root_id: u64) {
        let current = link_name("", root_id);
        if let Ok(entries) = std::fs::read_dir(self.pins.base.join("links")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("@cgroup") && !name.ends_with(&current) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Counts the host's egress on each of `interfaces` with the TC program (a TCX link on
    /// 6.6+, pinned like the others and swapped atomically on adoption).
    pub fn attach_host_egress(&mut self, interfaces: &[String]) -> Result<(), KernelError> {
        let name = programs::TC_EGRESS;
        {
            let prog: &mut SchedClassifier = self.program(name)?;
            prog.load().map_err(program_err(name, "load"))?;
        }
        for iface in interfaces {
            let pin = self.pins.link(&format!("{name}@if-{iface}"));
            let prog: &mut SchedClassifier = self.program(name)?;
            let fd = prog.fd().map_err(program_err(name, "fd"))?;
            match update_pinned(name, &pin, fd.as_fd()) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    // The interface was recreated: its old link is defunct.
                    tracing::info!(interface = %iface, error = %e, "re-attaching host egress counting");
                    let _ = std::fs::remove_file(&pin);
                }
            }
            let _ = aya::programs::tc::qdisc_add_clsact(iface); // needed only before TCX (6.6)
            let prog: &mut SchedClassifier = self.program(name)?;
            let id = prog
                .attach(iface, TcAttachType::Egress)
                .map_err(|e| KernelError::Interface { name: iface.clone(), message: e.to_string() })?;
            let link = prog.take_link(id).map_err(program_err(name, "take link"))?;
            match FdLink::try_from(link) {
                Ok(fd_link) => pin_link(name, fd_link, &pin)?,
                // Netlink-attached filters (kernels before 6.6) cannot be pinned; they stay
                // with the qdisc and are removed by `detach` through the program.
                Err(e) => {
                    tracing::warn!(interface = %iface, error = %e, "host egress filter is not pinnable on this kernel")
                }
            }
        }
        Ok(())
    }

    /// Removes every program from the agents root: unpins the links; they die with the last fd.
    pub fn detach(self) {
        if let Ok(entries) = std::fs::read_dir(self.pins.base.join("links")) {
            for e in entries.flatten() {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(path = %e.path().display(), error = %err, "could not unpin link");
                }
            }
        }
        drop(self.ebpf);
    }

    /// Names of the programs attached by `attach`, for status.
    pub fn program_names() -> impl Iterator<Item = &'static str> {
        SOCK_ADDR_PROGRAMS
            .into_iter()
            .chain(SOCK_PROGRAMS)
            .chain(SOCKOPT_PROGRAMS)
            .chain(SKB_PROGRAMS.into_iter().map(|(n, _)| n))
            .chain([programs::TC_EGRESS])
    }

    /// The kernel's ids of the loaded programs, by name (for their run statistics).
    pub fn program_ids(&self) -> Vec<(&'static str, u32)> {
        Self::program_names()
            .filter_map(|name| self.ebpf.program(name).and_then(|p| p.info().ok()).map(|i| (name, i.id())))
            .collect()
    }
}

/// Run statistics of one program, from the kernel's own accounting (counted only while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProgramStats {
    pub name: String,
    pub id: u32,
    pub run_count: u64,
    pub run_time_ns: u64,
    /// run_time_ns / run_count; null before the first counted run.
    pub ns_per_run: Option<u64>,
}

/// Reads the kernel's statistics of the programs in `ids`.
pub fn program_stats(ids: &[(&'static str, u32)]) -> Vec<ProgramStats> {
    let mut out = Vec::new();
    for info in aya::programs::loaded_programs().flatten() {
        if let Some((name, id)) = ids.iter().find(|(_, id)| *id == info.id()) {
            let (count, time) = (info.run_count(), info.run_time().as_nanos() as u64);
            out.push(ProgramStats {
                name: (*name).to_owned(),
                id: *id,
                run_count: count,
                run_time_ns: time,
                ns_per_run: (count > 0).then(|| time / count),
            });
        }
    }
    out
}

/// A link's pin name: the program and the id of the cgroup it is attached to.
fn link_name(program: &str, cgroup_id: u64) -> String {
    format!("{program}@cgroup-{cgroup_id}")
}

/// The interfaces of the default routes (IPv4 and IPv6), from /proc/net: the host's uplinks.
pub fn default_route_interfaces() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && f[0] != "lo" {
                out.push(f[0].to_owned());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest dest_len src src_len next_hop metric refcnt use flags iface
            if f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && f[9] != "lo" {
                out.push(f[9].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Switches the link pinned at `pin` to `program`. False if there is no such link.
fn update_pinned(name: &'static str, pin: &Path, program: std::os::fd::BorrowedFd<'_>) -> Result<bool, KernelError> {
    if !pin.exists() {
        return Ok(false);
    }
    let err = |op, source| KernelError::Link { name, path: pin.to_owned(), op, source };
    let fd = link::obj_get(pin).map_err(|e| err("open pinned link", e))?;
    link::link_update(fd.as_fd(), program).map_err(|e| err("update pinned link", e))?;
    tracing::info!(program = name, "adopted pinned link; program replaced atomically");
    Ok(true)
}

/// A link just made by `attach` as an fd link, to pin (every cgroup link here is a bpf_link).
fn fd_link<L>(name: &'static str, link: L) -> Result<FdLink, KernelError>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    FdLink::try_from(link).map_err(|e| KernelError::Program {
        name,
        op: "convert to fd link",
        source: aya::programs::ProgramError::IOError(std::io::Error::other(e.to_string())),
    })
}

fn program_err(name: &'static str, op: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Program { name, op, source }
}

fn pin_link(name: &'static str, link: FdLink, pin: &Path) -> Result<(), KernelError> {
    link.pin(pin).map(drop).map_err(|e| KernelError::Link {
        name,
        path: pin.to_owned(),
        op: "pin",
        source: std::io::Error::other(e.to_string()),
    })
}
