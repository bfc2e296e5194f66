//! What survives a restart or a reboot: each budget's spend total and ledger, and notices not
//! yet delivered. Written atomically (temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves either the old state or the new one, never a torn file.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::budget::Ledger;

pub const STATE_FILE: &str = "state.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    pub currency: String,
    /// Unix seconds.
    pub saved_at: i64,
    /// By budget owner: an agent's name, or `HOST` for the host budget.
    pub budgets: BTreeMap<String, SavedBudget>,
    /// Notices recorded but not yet delivered to the hooks (delivered at least once).
    pub outbox: Vec<serde_json::Value>,
    /// The agents root whose agents these budgets are (absent in files from before 0.1): a
    /// daemon for another root must not take up its agents' spend and pauses by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents_root: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBudget {
    /// Slot in the kernel's CONTROL/SPEND arrays.
    pub slot: u32,
    /// The kernel's spend total (pico-units) when saved.
    pub spent: u64,
    pub ledger: Ledger,
    /// A pause (operator's or a checkpoint's) survives restarts.
    #[serde(default)]
    pub paused: Option<super::books::Pause>,
    #[serde(default)]
    pub marks: super::books::Marks,
    /// The kernel's count of new connections (`Spend::connections`) when saved, so a reboot
    /// does not give a connections checkpoint a fresh start.
    #[serde(default)]
    pub connections: u64,
}

pub const HOST: &str = "(host)";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a governor state file ({message}); move it aside to start from the kernel's pinned state", path.display())]
    Corrupt { path: PathBuf, message: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io { op, path: path.to_owned(), source }
}

/// Creates the state directory (mode 0700: it holds every agent's spend; parents as
/// `create_dir_all` makes them) and refuses one others may write to.
pub fn prepare_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io("create state directory", parent))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create state directory", dir)(e)),
        }
    }
    let meta = std::fs::metadata(dir).map_err(io("stat state directory", dir))?;
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(StateError::Io {
            op: "trust state directory",
            path: dir.to_owned(),
            source: std::io::Error::other("it is writable by others; chmod o-w it"),
        });
    }
    Ok(())
}

pub fn load(dir: &Path) -> Result<Option<SavedState>, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", &path)(e)),
    };
    let state: SavedState =
        serde_json::from_str(&text).map_err(|e| StateError::Corrupt { path: path.clone(), message: e.to_string() })?;
    if state.version != VERSION {
        return Err(StateError::Corrupt {
            path,
            message: format!("version {} (this governor reads {VERSION})", state.version),
        });
    }
    Ok(Some(state))
}

pub fn save(dir: &Path, state: &SavedState) -> Result<(), StateError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let mut state = state.clone();
    state.version = VERSION;
    let text = serde_json::to_vec_pretty(&state).expect("state serializes");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(&text).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename into place", &path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("fsync", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_state_directory_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lib/governor");
        prepare_dir(&dir).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, 0o700);
    }

    #[test]
    fn round_trips_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let mut s = SavedState { currency: "USD".into(), ..Default::default() };
        s.budgets
            .insert("a".into(), SavedBudget { slot: 3, spent: 77, ledger: Ledger::new(5, 70), ..Default::default() });
        save(dir.path(), &s).unwrap();
        let back = load(dir.path()).unwrap().unwrap();
        assert_eq!(back.budgets["a"].spent, 77);
        assert_eq!(back.budgets["a"].ledger.window_base, 70);
        assert!(!dir.path().join(".state.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_file_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a governor state file") && e.contains("move it aside"), "{e}");
    }

    #[test]
    fn a_world_writable_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_dir(dir.path()).unwrap_err().to_string().contains("writable by others"));
    }
}
