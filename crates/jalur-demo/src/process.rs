//! Child processes that cannot outlive the test that started them.

use std::process::{Child, Command, ExitStatus};

/// Owns a child process and kills (SIGKILL) and reaps it when dropped.
pub struct ChildGuard {
    what: String,
    child: Child,
}

impl ChildGuard {
    /// Spawns `command`; `what` names it in errors.
    pub fn spawn(what: &str, command: &mut Command) -> Result<ChildGuard, String> {
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start {what} ({command:?}): {err}"))?;
        Ok(ChildGuard {
            what: what.to_string(),
            child,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the child has already ended; `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The child itself, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Kills (SIGKILL) and reaps the child unless it has already ended; idempotent.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            if let Err(err) = self.child.kill() {
                eprintln!("jalur: cannot kill {} ({}): {err}", self.what, self.id());
            }
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
