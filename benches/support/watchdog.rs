//! Watching a child process for a hang, shared by `examples/stress_import.rs`
//! and `tests/import_hang.rs`: its CPU time (a deadlocked process uses
//! none) and, when it is stuck, every thread's stack from gdb.
#![allow(dead_code)]

use std::process::Command;

/// User + system CPU ticks of a process, all threads (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Every thread's stack of process `pid` (gdb attaches, prints, detaches),
/// or why there is none.
pub fn stacks(pid: u32) -> Result<String, String> {
    Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_err(|e| format!("no stacks: gdb: {e}"))
}
