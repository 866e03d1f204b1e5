//! Watching a child process for a hang, shared by `examples/stress_import.rs`
//! and `tests/import_hang.rs`: its CPU time (a deadlocked process uses
//! none) and, when it is stuck, every thread's stack from gdb. The
//! membership report reads its own CPU time here too.
#![allow(dead_code)]

use std::process::{Command, Stdio};

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
/// or why there is none. gdb writes to a file, not a pipe: when `pid` is
/// this process, gdb stops the thread that would drain a pipe, and a dump
/// larger than the pipe's buffer would then block gdb, and us, for good.
pub fn stacks(pid: u32) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!(
        "fleetkv-stacks-{pid}-{}.txt",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let file = std::fs::File::create(&path).map_err(|e| format!("no stacks: {e}"))?;
    let status = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt",
        ])
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(Stdio::null())
        .status();
    let dump = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    status
        .map(|_| dump)
        .map_err(|e| format!("no stacks: gdb: {e}"))
}
