//! What the bench examples read of their own process from /proc: peak RSS
//! and minor page faults.

/// Minor page faults of this process so far (field 10 of /proc/self/stat):
/// what a fresh large allocation costs, page by page.
pub fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after_name = &s[s.rfind(')')? + 2..];
            after_name.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}
