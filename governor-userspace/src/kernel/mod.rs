//! The kernel side as the daemon sees it: load the embedded object, attach it to the agents
//! root, and typed handles on every map.

mod events;
mod maps;

use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr},
};
use governor_common::{GLOBAL_AGENT_LEVEL, maps as map_names, programs};

pub use events::{DecodeError, Denial, decode_event};
pub use maps::{AgentCounters, KernelMaps};

/// The object `cargo xtask build-ebpf` built, embedded at compile time (empty if it was absent).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GOVERNOR_EBPF_OBJECT"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this governor binary was built without its eBPF programs; build it with `cargo xtask build` \
         (which builds the programs first) instead of plain `cargo build`"
    )]
    NoObject,
    #[error(
        "loading the eBPF object failed: {0}; is this root with CAP_BPF on a kernel with BTF (5.8+)?"
    )]
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
    #[error("cannot open cgroup {}: {source}", path.display())]
    OpenCgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loaded and attached programs. Dropping it detaches every program (the links are owned here).
pub struct Kernel {
    ebpf: Ebpf,
}

const SOCK_ADDR_PROGRAMS: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
];
const SKB_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    (programs::SKB_EGRESS, CgroupSkbAttachType::Egress),
    (programs::SKB_INGRESS, CgroupSkbAttachType::Ingress),
];

impl Kernel {
    /// Loads the embedded programs for agents at cgroup level `agent_level`. Nothing is attached yet.
    pub fn load(agent_level: u32) -> Result<Self, KernelError> {
        if OBJECT.is_empty() {
            return Err(KernelError::NoObject);
        }
        let ebpf = EbpfLoader::new()
            .override_global(GLOBAL_AGENT_LEVEL, &agent_level, true)
            .load(OBJECT)
            .map_err(KernelError::Load)?;
        Ok(Self { ebpf })
    }

    /// Takes the maps out of the object; call once, before `attach`, so the maps are filled
    /// before any program can run.
    pub fn take_maps(&mut self) -> Result<(KernelMaps, RingBuf<MapData>), KernelError> {
        let events = self
            .ebpf
            .take_map(map_names::EVENTS)
            .ok_or(KernelError::MissingMap {
                name: map_names::EVENTS,
            })?;
        let events = RingBuf::try_from(events).map_err(|source| KernelError::Map {
            name: map_names::EVENTS,
            op: "open",
            source,
        })?;
        Ok((KernelMaps::take(&mut self.ebpf)?, events))
    }

    /// Loads and attaches every program to `cgroup` (the agents root), so they run for every
    /// agent below it, present and future.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), KernelError> {
        let file = File::open(cgroup).map_err(|source| KernelError::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        for name in SOCK_ADDR_PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram { name })?
                .try_into()
                .map_err(|source| KernelError::Program {
                    name,
                    op: "type check",
                    source,
                })?;
            prog.load().map_err(|source| KernelError::Program {
                name,
                op: "load",
                source,
            })?;
            // Single: on 5.7+ aya makes a bpf_link, which coexists with other programs anyway.
            prog.attach(&file, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Program {
                    name,
                    op: "attach",
                    source,
                })?;
        }
        for (name, attach_type) in SKB_PROGRAMS {
            let prog: &mut CgroupSkb = self
                .ebpf
                .program_mut(name)
                .ok_or(KernelError::MissingProgram { name })?
                .try_into()
                .map_err(|source| KernelError::Program {
                    name,
                    op: "type check",
                    source,
                })?;
            prog.load().map_err(|source| KernelError::Program {
                name,
                op: "load",
                source,
            })?;
            prog.attach(&file, attach_type, CgroupAttachMode::Single)
                .map_err(|source| KernelError::Program {
                    name,
                    op: "attach",
                    source,
                })?;
        }
        Ok(())
    }

    /// Names of the programs attached by `attach`, for status.
    pub fn program_names() -> impl Iterator<Item = &'static str> {
        SOCK_ADDR_PROGRAMS
            .into_iter()
            .chain(SKB_PROGRAMS.into_iter().map(|(n, _)| n))
    }
}
