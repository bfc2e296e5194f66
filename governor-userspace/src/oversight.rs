//! The operator's controls: pause, resume, acknowledge a checkpoint, kill. Each writes its audit
//! record first (a control that cannot be recorded is refused, never run unrecorded), then
//! changes the kernel state, and returns only once the kernel enforces it.

use serde_json::{Value, json};

use crate::{
    accounting::books::Pause,
    control::auth::Caller,
    governor::{Governor, unix_now},
    kernel::KernelError,
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no agent named {name:?}; agents: {known}")]
    NoAgent { name: String, known: String },
    #[error("agent {0:?} has no pending checkpoint to acknowledge")]
    NoCheckpoint(String),
    #[error(
        "agent {0:?} is not paused; its budget suspends it: `governor resume --budget {0}` lifts that for the rest of the window, or raise its budget and `governor reload`"
    )]
    OnlyBudgetSuspended(String),
    #[error("agent {0:?} is not paused and not at a checkpoint: nothing to resume")]
    NotPaused(String),
    #[error("agent {0:?} is not suspended by its budget: nothing to lift")]
    NotSuspended(String),
    #[error(
        "agent {0:?} has a total budget: it has no window to roll, so lifting its suspension would lift its ceiling for good. Raise its limit and `governor reload` instead"
    )]
    TotalWindow(String),
    #[error("refused: the audit log cannot be written ({0}); nothing was changed")]
    Unrecorded(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{0}")]
    Kill(String),
}

impl Governor {
    /// The names `target` designates: one agent, or every agent for `None`.
    pub fn resolve(&self, target: Option<&str>) -> Result<Vec<String>, ControlError> {
        let core = self.core();
        match target {
            None => Ok(core.agents.iter().map(|a| a.name.clone()).collect()),
            Some(name) if core.agents.by_name(name).is_some() => Ok(vec![name.to_owned()]),
            Some(name) => {
                let known: Vec<&str> = core.agents.iter().map(|a| a.name.as_str()).collect();
                Err(ControlError::NoAgent {
                    name: name.to_owned(),
                    known: if known.is_empty() { "none".into() } else { known.join(", ") },
                })
            }
        }
    }

    fn record(&self, kind: &str, agent: &str, details: Value) -> Result<(), ControlError> {
        self.audit(kind, Some(agent), details).map(drop).map_err(|e| ControlError::Unrecorded(e.to_string()))
    }

    pub fn pause(&self, agent: &str, reason: &str, by: &Caller) -> Result<(), ControlError> {
        self.record("pause", agent, json!({ "reason": reason, "by": by }))?;
        let pause =
            Pause { kind: "operator".into(), reason: reason.to_owned(), since: unix_now(), by: Some(by.describe()) };
        {
            let mut core = self.core();
            let crate::governor::Core { maps, books, .. } = &mut *core;
            books.pause(agent, pause, maps)?;
        }
        tracing::warn!(agent, reason, by = %by.describe(), "paused");
        self.save_now();
        Ok(())
    }

    /// Resumes `agent` from a pause or a checkpoint, not from a budget suspension (see
    /// `resume_budget`). With `ack`, only a pending checkpoint is lifted, and the record is an
    /// acknowledgement with its note. With `all`, an agent that is not paused is left alone
    /// (`Ok(false)`); alone, it is an error that says what holds the agent.
    pub fn resume(&self, agent: &str, by: &Caller, ack: Option<&str>, all: bool) -> Result<bool, ControlError> {
        let (pause, suspended) = {
            let core = self.core();
            (core.books.account(agent).and_then(|a| a.paused.clone()), core.books.budget_suspended(agent))
        };
        if ack.is_some() {
            if pause.as_ref().is_none_or(|p| p.kind != "checkpoint") {
                return Err(ControlError::NoCheckpoint(agent.to_owned()));
            }
            self.record("ack", agent, json!({ "note": ack, "by": by }))?;
        } else {
            match (&pause, suspended) {
                (None, _) if all => return Ok(false),
                (None, true) => return Err(ControlError::OnlyBudgetSuspended(agent.to_owned())),
                (None, false) => return Err(ControlError::NotPaused(agent.to_owned())),
                (Some(p), _) => self.record("resume", agent, json!({ "by": by, "lifted": p.kind }))?,
            }
        }
        {
            let mut core = self.core();
            let crate::governor::Core { maps, books, .. } = &mut *core;
            books.resume(agent, unix_now(), maps)?;
        }
        tracing::info!(agent, by = %by.describe(), ack = ?ack, "resumed");
        self.save_now();
        Ok(true)
    }

    /// Lifts `agent`'s budget suspension for the rest of its window: an explicit act, audited
    /// as `budget_resume`. The `resumed` notice follows from the next tick, with this reason.
    pub fn resume_budget(&self, agent: &str, by: &Caller) -> Result<(), ControlError> {
        {
            let core = self.core();
            if !core.books.budget_suspended(agent) {
                return Err(ControlError::NotSuspended(agent.to_owned()));
            }
            if core.books.account(agent).is_some_and(|a| a.spec.window == crate::accounting::window::Window::Total) {
                return Err(ControlError::TotalWindow(agent.to_owned()));
            }
        }
        self.record("budget_resume", agent, json!({ "by": by }))?;
        {
            let mut core = self.core();
            let crate::governor::Core { maps, books, .. } = &mut *core;
            books.lift_budget(agent, maps)?;
        }
        tracing::warn!(agent, by = %by.describe(), "budget suspension lifted for the rest of the window");
        self.save_now();
        Ok(())
    }

    /// Pauses `agent`, then ends every process in its cgroup (cgroup.kill) and waits until
    /// none is left. Returns how many processes there were.
    pub fn kill(&self, agent: &str, by: &Caller) -> Result<usize, ControlError> {
        self.pause(agent, "kill", by)?;
        let dir = {
            let core = self.core();
            core.agents.by_name(agent).map(|a| self.root.agent_path(&a.cgroup))
        }
        .ok_or_else(|| ControlError::Kill(format!("agent {agent:?} has no cgroup")))?;
        let before = count_processes(&dir);
        self.record("kill", agent, json!({ "by": by, "processes": before, "cgroup": dir.display().to_string() }))?;
        if dir.exists() {
            std::fs::write(dir.join("cgroup.kill"), "1").map_err(|e| {
                ControlError::Kill(format!("cannot write {}/cgroup.kill: {e} (needs kernel 5.14+)", dir.display()))
            })?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while count_processes(&dir) > 0 {
                if std::time::Instant::now() > deadline {
                    return Err(ControlError::Kill(format!("processes are still in {} after 10 s", dir.display())));
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        tracing::warn!(agent, processes = before, by = %by.describe(), "killed");
        Ok(before)
    }
}

/// Processes in `dir` and every cgroup below it.
pub fn count_processes(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        n += std::fs::read_to_string(d.join("cgroup.procs")).map_or(0, |t| t.lines().count());
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
    }
    n
}
