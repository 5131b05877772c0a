//! The standard process metrics of Prometheus clients (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, ...), read from `/proc/self` at each
//! scrape, so CPU and memory per daemon show next to its own series and a benchmark can
//! divide the server's CPU by the calls it served.
//!
//! They are rendered as text at scrape time rather than kept as gauges: the values are the
//! kernel's, and a gauge refreshed on a timer would be stale by up to its period.

use std::{fmt::Write, fs, io};

/// One reading of the process's counters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    /// Seconds since the Unix epoch at which the process started.
    pub start_time_seconds: f64,
}

/// Reads the counters of this process.
pub fn usage() -> io::Result<Usage> {
    parse_stat(&fs::read_to_string("/proc/self/stat")?, &Clock::read()?)
}

/// Returns this process's user plus system CPU time, in seconds.
pub fn cpu_seconds() -> io::Result<f64> {
    usage().map(|usage| usage.cpu_seconds)
}

/// The kernel's units: clock ticks per second, page size, and the boot time in epoch seconds.
struct Clock {
    ticks_per_second: f64,
    page_bytes: u64,
    boot_time_seconds: f64,
}

impl Clock {
    fn read() -> io::Result<Self> {
        // SAFETY: sysconf reads a constant of the running system and has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let boot_time_seconds = fs::read_to_string("/proc/stat")?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .ok_or_else(|| invalid("/proc/stat has no btime line"))?;
        Ok(Self {
            ticks_per_second: ticks.max(1) as f64,
            page_bytes: page.max(1) as u64,
            boot_time_seconds,
        })
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Parses `/proc/self/stat` (proc(5)). The command name, field 2, may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str, clock: &Clock) -> io::Result<Usage> {
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| invalid("/proc/self/stat has no command name"))?;
    // `rest` starts at field 3 (state); field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|value| value.parse().ok())
            .ok_or_else(|| invalid("/proc/self/stat is shorter than proc(5) says"))
    };
    let ticks = |n: u64| n as f64 / clock.ticks_per_second;
    Ok(Usage {
        cpu_seconds: ticks(field(14)? + field(15)?),
        threads: field(20)?,
        start_time_seconds: clock.boot_time_seconds + ticks(field(22)?),
        virtual_bytes: field(23)?,
        resident_bytes: field(24)? * clock.page_bytes,
    })
}

/// Returns the number of open file descriptors and the soft limit on them.
fn fds() -> io::Result<(u64, u64)> {
    let open = fs::read_dir("/proc/self/fd")?.count() as u64;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer to a local.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((open, limit.rlim_cur))
}

/// Appends the process metrics, with `# HELP` and `# TYPE`, to a scrape's text. A reading
/// that fails (no `/proc`) is left out rather than failing the scrape.
pub fn render(out: &mut String) {
    let mut series = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    if let Ok(usage) = usage() {
        series(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            usage.cpu_seconds,
        );
        series(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            usage.resident_bytes as f64,
        );
        series(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            usage.virtual_bytes as f64,
        );
        series(
            "process_threads",
            "gauge",
            "Number of OS threads in the process.",
            usage.threads as f64,
        );
        series(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            usage.start_time_seconds,
        );
    }
    if let Ok((open, max)) = fds() {
        series(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            open as f64,
        );
        series(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_count_from_the_last_parenthesis() {
        let clock = Clock {
            ticks_per_second: 100.0,
            page_bytes: 4096,
            boot_time_seconds: 1_000.0,
        };
        // A command name with a space and a ")" in it, as a process may set.
        let stat = "42 (tb ird) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 500 \
                    123456789 300 18446744073709551615";
        let usage = parse_stat(stat, &clock).expect("parse");
        assert_eq!(usage.cpu_seconds, 3.0);
        assert_eq!(usage.threads, 7);
        assert_eq!(usage.start_time_seconds, 1_005.0);
        assert_eq!(usage.virtual_bytes, 123_456_789);
        assert_eq!(usage.resident_bytes, 300 * 4096);
        assert!(parse_stat("42 (short) S 1", &clock).is_err());
    }

    #[test]
    fn cpu_time_grows_with_work_and_open_files_count() {
        let before = cpu_seconds().expect("read cpu");
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        assert!(
            cpu_seconds().expect("read cpu") > before,
            "200 ms of spinning used no CPU"
        );

        // 64 more files, and a margin for other tests of this binary opening and closing
        // their own descriptors meanwhile.
        let (open, max) = fds().expect("count fds");
        let files: Vec<_> = (0..64)
            .map(|_| tempfile::tempfile().expect("temp file"))
            .collect();
        let (open_with_files, _) = fds().expect("count fds");
        drop(files);
        assert!(
            open_with_files >= open + 32,
            "{open_with_files} fds with 64 more files open, {open} before"
        );
        assert!(max >= open_with_files);

        let mut text = String::new();
        render(&mut text);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} missing in:\n{text}"
            );
        }
    }
}
