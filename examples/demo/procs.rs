//! The running processes whose command line names a path (read from `/proc`): how the
//! demo finds what a killed launcher's balancer left running, and how its tests check
//! that nothing was left.

use std::fs;
use std::path::Path;

/// Every process whose command line (arguments joined by spaces) contains `path`:
/// its pid and that command line. An error when `/proc` cannot be read.
pub fn processes_naming(path: &Path) -> std::io::Result<Vec<(i32, String)>> {
    let needle = path.to_string_lossy().into_owned();
    let procs = fs::read_dir("/proc")?;
    let mut found = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(raw) = fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw).replace('\0', " ");
        if text.contains(&needle) {
            found.push((pid, text));
        }
    }
    Ok(found)
}
