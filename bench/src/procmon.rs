//! Resource accounting of process trees by sampling /proc (every 100 ms by default, on one
//! sleeping thread): CPU of a tree (utime+stime+cutime+cstime summed over the live processes, so
//! that children reaped between samples still count through their parent's cutime/cstime; a
//! child that is reaped while a sample is being taken can be missed or counted twice in that
//! one sample, a few milliseconds of CPU at most), the
//! root's own CPU, the summed RSS of the tree and its peak, the root's VmRSS/VmHWM, and the
//! rsync processes seen in the tree. Also the machine's busy CPU time from /proc/stat.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the monitor knows of one tree.
#[derive(Debug, Clone, Default)]
pub struct TreeStats {
    /// CPU seconds of the tree at the last sample (live processes plus what they reaped).
    pub cpu_s: f64,
    /// CPU seconds of the root process alone (utime+stime).
    pub self_cpu_s: f64,
    /// Summed RSS of the tree now, and the largest sum seen, bytes.
    pub rss: u64,
    pub rss_peak: u64,
    /// VmRSS and VmHWM of the root, KiB.
    pub vm_rss_kb: u64,
    pub vm_hwm_kb: u64,
    /// Distinct rsync processes seen in the tree.
    pub rsync_seen: usize,
    /// Largest number of rsync processes seen at once, and at the last sample.
    pub rsync_max_live: usize,
    pub rsync_live: usize,
    pub samples: u64,
    pub alive: bool,
}

struct Tracked {
    stats: TreeStats,
    rsync_pids: HashSet<i32>,
}

/// Samples the trees of a set of root pids until stopped.
pub struct Monitor {
    state: Arc<Mutex<HashMap<i32, Tracked>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct ProcStat {
    ppid: i32,
    rsync: bool,
    self_ticks: u64,
    child_ticks: u64,
    rss_pages: u64,
}

fn clk_tck() -> f64 {
    // SAFETY: plain sysconf query.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn page_size() -> u64 {
    // SAFETY: plain sysconf query.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = &text[open + 1..close];
    let f: Vec<&str> = text[close + 2..].split(' ').collect();
    let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    Some(ProcStat {
        ppid: f.get(1)?.parse().ok()?,
        rsync: comm == "rsync",
        self_ticks: n(11) + n(12),
        child_ticks: n(13) + n(14),
        rss_pages: n(21),
    })
}

/// One pass over /proc: every process's parent, CPU and RSS.
fn scan() -> HashMap<i32, ProcStat> {
    let mut all = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return all;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some(s) = parse_stat(&text) {
                all.insert(pid, s);
            }
        }
    }
    all
}

/// VmRSS and VmHWM of `pid`, KiB.
pub fn vm_kb(pid: i32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn sample(state: &Mutex<HashMap<i32, Tracked>>, tck: f64, page: u64) {
    let roots: Vec<i32> = state
        .lock()
        .expect("monitor lock")
        .keys()
        .copied()
        .collect();
    if roots.is_empty() {
        return;
    }
    let all = scan();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, s) in &all {
        children.entry(s.ppid).or_default().push(pid);
    }
    let vms: HashMap<i32, Option<(u64, u64)>> = roots.iter().map(|&r| (r, vm_kb(r))).collect();
    let mut st = state.lock().expect("monitor lock");
    for root in roots {
        let Some(t) = st.get_mut(&root) else { continue };
        let Some(rs) = all.get(&root) else {
            t.stats.alive = false;
            continue;
        };
        let (mut ticks, mut rss, mut live_rsync) = (0u64, 0u64, 0usize);
        let mut stack = vec![root];
        let mut seen = HashSet::new();
        while let Some(p) = stack.pop() {
            if !seen.insert(p) {
                continue;
            }
            let Some(s) = all.get(&p) else { continue };
            ticks += s.self_ticks + s.child_ticks;
            rss += s.rss_pages * page;
            if s.rsync {
                live_rsync += 1;
                t.rsync_pids.insert(p);
            }
            if let Some(c) = children.get(&p) {
                stack.extend(c);
            }
        }
        let s = &mut t.stats;
        // Not latched with max(): with pids wrapping around, a child can be read before its
        // parent and be reaped in between, counting it twice in this one sample.
        s.cpu_s = ticks as f64 / tck;
        s.self_cpu_s = rs.self_ticks as f64 / tck;
        s.rss = rss;
        s.rss_peak = s.rss_peak.max(rss);
        if let Some(Some((r, h))) = vms.get(&root) {
            s.vm_rss_kb = *r;
            s.vm_hwm_kb = s.vm_hwm_kb.max(*h);
        }
        s.rsync_seen = t.rsync_pids.len();
        s.rsync_max_live = s.rsync_max_live.max(live_rsync);
        s.rsync_live = live_rsync;
        s.samples += 1;
        s.alive = true;
    }
}

impl Monitor {
    pub fn start(interval: Duration) -> Monitor {
        let state: Arc<Mutex<HashMap<i32, Tracked>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("procmon".into())
            .spawn(move || {
                let (tck, page) = (clk_tck(), page_size());
                while !sp.load(Ordering::Relaxed) {
                    sample(&st, tck, page);
                    std::thread::sleep(interval);
                }
            })
            .expect("spawn procmon thread");
        Monitor {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// Starts following the tree of `pid` (from zero).
    pub fn track(&self, pid: i32) {
        self.state.lock().expect("monitor lock").insert(
            pid,
            Tracked {
                stats: TreeStats::default(),
                rsync_pids: HashSet::new(),
            },
        );
    }

    pub fn untrack(&self, pid: i32) {
        self.state.lock().expect("monitor lock").remove(&pid);
    }

    /// Takes fresh samples now and returns the tree's stats, with the median CPU of three
    /// samples 10 ms apart (so that one sample racing a reap does not count).
    pub fn sample_now(&self, pid: i32) -> TreeStats {
        let mut cpu = Vec::with_capacity(3);
        let mut last = TreeStats::default();
        for i in 0..3 {
            if i > 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
            sample(&self.state, clk_tck(), page_size());
            last = self.get(pid);
            cpu.push(last.cpu_s);
        }
        cpu.sort_by(f64::total_cmp);
        last.cpu_s = cpu[1];
        last
    }

    pub fn get(&self, pid: i32) -> TreeStats {
        self.state
            .lock()
            .expect("monitor lock")
            .get(&pid)
            .map(|t| t.stats.clone())
            .unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// CPU seconds the whole machine spent busy (everything but idle and iowait), from /proc/stat.
pub fn machine_busy_s() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
    let busy: u64 = v
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4 | 8 | 9))
        .map(|(_, x)| x)
        .sum();
    busy as f64 / clk_tck()
}

/// CPU seconds of this process so far (the bench itself: watcher, monitor, comparisons).
pub fn own_cpu_s() -> f64 {
    // SAFETY: rusage is plain data written by the call.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_with_spaces_in_comm() {
        let line = "1234 (rs ync) S 99 1234 1234 0 -1 4194560 100 0 0 0 7 3 11 2 20 0 1 0 \
                    555 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.ppid, 99);
        assert_eq!(s.self_ticks, 10);
        assert_eq!(s.child_ticks, 13);
        assert_eq!(s.rss_pages, 250);
        assert!(!s.rsync);
        assert!(
            parse_stat("1 (rsync) S 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0")
                .unwrap()
                .rsync
        );
    }
}
