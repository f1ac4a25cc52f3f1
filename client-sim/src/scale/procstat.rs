//! CPU time and resident memory of processes, read from /proc (so that a load generator
//! sharing the machine does not count against the node it measures).

use anyhow::Context;
use std::sync::OnceLock;

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_s() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// User + system CPU seconds of process `pid` (its threads included).
pub fn cpu_s(pid: u32) -> anyhow::Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_s(&text, ticks_per_s()).with_context(|| format!("parsing /proc/{pid}/stat"))
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in seconds.
pub fn parse_cpu_s(stat: &str, ticks: f64) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// Resident set size of process `pid`, bytes (`VmRSS` of /proc/PID/status).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_rss(&text).with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

pub fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_times_after_a_command_name_with_spaces() {
        let stat = "4242 (tokio (runtime) 1) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 8 0 100";
        assert_eq!(parse_cpu_s(stat, 100.0), Some(4.0));
        assert_eq!(parse_cpu_s("garbage", 100.0), None);
    }

    #[test]
    fn reads_rss_from_status_and_this_process_has_some() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t  2048 kB\n"),
            Some(2 * 1024 * 1024)
        );
        let me = std::process::id();
        assert!(rss_bytes(me).expect("own rss") > 0);
        assert!(cpu_s(me).expect("own cpu") >= 0.0);
    }
}
