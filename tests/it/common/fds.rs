//! A process's descriptors: counted, described, and waited for to return to a baseline.

use super::*;

/// Descriptors open in process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// What process `pid`'s descriptors are, one per line, for a failure's message: the target,
/// and for a TCP socket its local and remote address and state (from `/proc/<pid>/net/tcp*`).
pub fn describe_fds(pid: u32) -> String {
    let mut tcp = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 {
                let state = format!("local {} remote {} state {}", f[1], f[2], f[3]);
                tcp.insert(f[9].to_string(), state);
            }
        }
    }
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            let target = std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_else(|e| format!("? ({e})"));
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|i| tcp.get(i));
            let name = e.file_name().to_string_lossy().into_owned();
            match inode {
                Some(state) => out.push(format!("{name} -> {target} ({state})")),
                None => out.push(format!("{name} -> {target}")),
            }
        }
    }
    out.sort();
    out.join("\n")
}

/// The descriptors a process had before a test's load: how many, and what they were.
pub struct Baseline {
    count: usize,
    seen: String,
}

impl Baseline {
    pub fn of(pid: u32) -> Self {
        Baseline {
            count: open_fds(pid),
            seen: describe_fds(pid),
        }
    }
}

/// Waits (bounded) until `pid` has at most the baseline's descriptors open.
pub async fn back_to(pid: u32, base: &Baseline, who: &str, within: Duration) {
    let start = std::time::Instant::now();
    loop {
        let now = open_fds(pid);
        if now <= base.count {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{who}: {now} descriptors open, baseline {}:\n{}\nat the baseline:\n{}",
            base.count,
            describe_fds(pid),
            base.seen
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
