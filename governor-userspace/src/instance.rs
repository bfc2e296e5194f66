//! One daemon per state directory and per agents root. Two daemons on one agents root would
//! both write its maps, and the one that stopped last would leave the agents' DNS pointing at a
//! dead proxy; two on one state directory would overwrite each other's spend. Each daemon holds
//! an exclusive `flock` on its state directory and on its pin directory for as long as it runs;
//! the kernel drops the locks with the process, however it ends.

use std::{
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use nix::fcntl::{Flock, FlockArg};

/// The pid file beside the state, naming the daemon that holds the lock.
const PID_FILE: &str = "governor.pid";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another governor{} is running with state directory {} (daemon.state_dir); stop it first, or give this one its own state_dir", pid.map_or(String::new(), |p| format!(" (pid {p})")), dir.display())]
    StateBusy { dir: PathBuf, pid: Option<u32> },
    #[error("another governor{} is serving this agents root (its pins are at {}); one daemon per agents root: stop it first", pid.map_or(String::new(), |p| format!(" (pid {p})")), dir.display())]
    RootBusy { dir: PathBuf, pid: Option<u32> },
    #[error("cannot lock {}", dir.display())]
    Lock {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The locks a running daemon holds; released when dropped (or when the process ends).
pub struct InstanceLock {
    locks: Vec<Flock<File>>,
    pid_file: Option<PathBuf>,
}

impl InstanceLock {
    /// Locks `state_dir` and writes this daemon's pid beside the state.
    pub fn state(state_dir: &Path) -> Result<Self, InstanceError> {
        let pid_file = state_dir.join(PID_FILE);
        let lock = lock(state_dir).map_err(|e| match e {
            Busy => InstanceError::StateBusy { dir: state_dir.to_owned(), pid: read_pid(&pid_file) },
            Failed(source) => InstanceError::Lock { dir: state_dir.to_owned(), source },
        })?;
        let written = std::fs::File::create(&pid_file).and_then(|mut f| writeln!(f, "{}", std::process::id()));
        if let Err(e) = written {
            tracing::warn!(path = %pid_file.display(), error = %e, "could not write the pid file");
        }
        Ok(Self { locks: vec![lock], pid_file: Some(pid_file) })
    }

    /// No lock yet: for adding pin directories alone (`governor detach`).
    pub fn none() -> Self {
        Self { locks: Vec::new(), pid_file: None }
    }

    /// Adds the lock on the pin directory of the agents root; `state_dir`'s pid file names the
    /// other daemon when both share it.
    pub fn add_pins(&mut self, pin_dir: &Path) -> Result<(), InstanceError> {
        let lock = lock(pin_dir).map_err(|e| match e {
            Busy => InstanceError::RootBusy { dir: pin_dir.to_owned(), pid: None },
            Failed(source) => InstanceError::Lock { dir: pin_dir.to_owned(), source },
        })?;
        self.locks.push(lock);
        Ok(())
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        if let Some(p) = &self.pid_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum LockError {
    Busy,
    Failed(std::io::Error),
}
use LockError::{Busy, Failed};

fn lock(dir: &Path) -> Result<Flock<File>, LockError> {
    let file = File::open(dir).map_err(Failed)?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK { Busy } else { Failed(std::io::Error::from(errno)) }
    })
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = InstanceLock::state(dir.path()).unwrap();
        let err = InstanceLock::state(dir.path()).err().expect("refused");
        let text = err.to_string();
        assert!(text.contains(&format!("(pid {})", std::process::id())) && text.contains("daemon.state_dir"), "{text}");
        drop(first);
        assert!(!dir.path().join(PID_FILE).exists());
        InstanceLock::state(dir.path()).expect("free again once the first is gone");
    }
}
