//! Cleanup after a launcher that was killed without stopping its cluster.
//!
//! Each launcher works in `<tmp>/memkeep-demo-<launcher pid>`. Its direct children die
//! with it (`balancer::die_with_parent`), but a balancer's own workers, started from
//! the balancer, do not, and the run directory stays. A directory whose launcher is gone
//! is stale: every process whose command line names the directory (the balancer's
//! workers are started with `-f <dir>/...`) is killed and the directory removed.

use std::fs;
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The prefix of a launcher's run directory name; the launcher's pid follows.
pub const RUN_DIR_PREFIX: &str = "memkeep-demo-";

/// Cleans up every stale run in `tmp`; returns one line per stale run cleaned up.
pub fn clean_up_stale_runs(tmp: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(tmp) else {
        return Vec::new();
    };
    let me = std::env::current_exe().ok();
    let mut report = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUN_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || launcher_alive(pid, me.as_deref()) {
            continue;
        }
        let dir = entry.path();
        let killed = kill_processes_naming(&dir);
        let removed = fs::remove_dir_all(&dir).is_ok();
        report.push(format!(
            "demo: a previous demo (launcher pid {pid}) was killed without stopping: \
             stopped {killed} leftover process(es){}",
            if removed {
                format!(", removed {}", dir.display())
            } else {
                format!("; could not remove {}", dir.display())
            }
        ));
    }
    report
}

/// Whether `pid` is a running launcher: a process running this same program.
fn launcher_alive(pid: u32, me: Option<&Path>) -> bool {
    match fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => me.is_none_or(|me| same_program(&exe, me)),
        Err(_) => false,
    }
}

/// `/proc/<pid>/exe` of a rebuilt binary ends in " (deleted)".
fn same_program(exe: &Path, me: &Path) -> bool {
    let exe = exe.to_string_lossy();
    let me = me.to_string_lossy();
    exe == me || exe.strip_suffix(" (deleted)") == Some(&*me)
}

/// SIGKILLs every process whose command line mentions `dir`; returns how many.
fn kill_processes_naming(dir: &Path) -> usize {
    crate::procs::processes_naming(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(pid, _)| kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_binary_is_still_the_same_program() {
        let me = Path::new("/x/target/debug/examples/demo");
        assert!(same_program(Path::new("/x/target/debug/examples/demo"), me));
        assert!(same_program(
            Path::new("/x/target/debug/examples/demo (deleted)"),
            me
        ));
        assert!(!same_program(Path::new("/usr/bin/sleep"), me));
    }
}
