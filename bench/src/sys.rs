//! Process plumbing for the bench: the system-wide monotonic clock, the interrupt flag that every
//! wait loop checks, [`Proc`] (a child in its own process group that is killed and reaped when
//! dropped) and [`Tap`] (a thread that copies a child's output to a log file and notes when given
//! markers first appear).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process on the machine, so the
/// generator's close() times and the watcher's arrival times can be subtracted.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT, SIGTERM and SIGHUP set a flag instead of killing the bench, so that the wait loops
/// return an error and the guards unmount and kill what they own on the way out.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// Fails once the bench has been asked to stop.
pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d` in slices, failing early when interrupted.
pub fn sleep(d: Duration) -> Result<()> {
    let end = mono_ns() + d.as_nanos() as u64;
    loop {
        check_interrupt()?;
        let now = mono_ns();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep(Duration::from_nanos((end - now).min(100_000_000)));
    }
}

/// How a child ended, from wait4(2): its CPU time includes every descendant it reaped.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Raw wait status.
    pub status: i32,
    pub cpu_s: f64,
    /// ru_maxrss: the largest RSS of the child (or of one reaped descendant), KiB.
    pub maxrss_kb: i64,
}

impl Exit {
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("status {:#x}", self.status)
        }
    }
}

/// A child process leading its own process group. Dropping it kills the whole group and reaps
/// the leader; the child also gets SIGKILL if the bench dies (PR_SET_PDEATHSIG).
pub struct Proc {
    pub pid: i32,
    pub name: String,
    exit: Option<Exit>,
}

impl Proc {
    /// Spawns `cmd` in a new process group. Take its piped stdio from the returned `Child` only
    /// through [`Proc::spawn_with`].
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        Ok(Proc::spawn_with(name, cmd)?.0)
    }

    /// Like [`Proc::spawn`], also handing back the `std` child for its pipes. Never wait on it:
    /// the `Proc` reaps the process itself (with wait4, for the resource usage).
    pub fn spawn_with(name: &str, cmd: &mut Command) -> Result<(Proc, std::process::Child)> {
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let p = Proc {
            pid: child.id() as i32,
            name: name.to_string(),
            exit: None,
        };
        Ok((p, child))
    }

    pub fn signal(&self, sig: i32) {
        if self.exit.is_none() {
            // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Signals every process of the child's group (the child and what it spawned).
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: plain syscall; the group id is the child's pid.
        unsafe { libc::kill(-self.pid, sig) };
    }

    /// Reaps the child if it has exited.
    pub fn try_reap(&mut self) -> Option<Exit> {
        if self.exit.is_some() {
            return self.exit;
        }
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 writes to both out-parameters.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == self.pid {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            self.exit = Some(Exit {
                status,
                cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
                maxrss_kb: ru.ru_maxrss,
            });
        } else if r < 0 {
            // ECHILD: somebody else reaped it; record an unknown end rather than loop forever.
            self.exit = Some(Exit {
                status: -1,
                cpu_s: 0.0,
                maxrss_kb: 0,
            });
        }
        self.exit
    }

    /// Waits up to `timeout` for the child to exit (checking every 20 ms).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Exit> {
        let end = mono_ns() + timeout.as_nanos() as u64;
        loop {
            if let Some(e) = self.try_reap() {
                return Some(e);
            }
            if mono_ns() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `sig` (to the child, or to its whole group), waits up to `grace`, then kills the
    /// group. Returns how the child ended and whether it needed the SIGKILL.
    pub fn stop(&mut self, sig: i32, group: bool, grace: Duration) -> (Exit, bool) {
        if group {
            self.signal_group(sig);
        } else {
            self.signal(sig);
        }
        let mut killed = false;
        let exit = match self.wait_timeout(grace) {
            Some(e) => e,
            None => {
                killed = true;
                eprintln!(
                    "warning: {} did not stop within {grace:?}; killing it",
                    self.name
                );
                self.signal_group(libc::SIGKILL);
                self.wait_timeout(Duration::from_secs(10)).unwrap_or(Exit {
                    status: -1,
                    cpu_s: 0.0,
                    maxrss_kb: 0,
                })
            }
        };
        // Whatever the leader left behind in its group goes too.
        self.signal_group(libc::SIGKILL);
        (exit, killed)
    }

    pub fn exited(&mut self) -> bool {
        self.try_reap().is_some()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        if self.exit.is_none() {
            self.wait_timeout(Duration::from_secs(10));
        }
    }
}

#[derive(Default)]
struct TapState {
    /// First sighting of each pattern: (pattern index, monotonic ns).
    seen: Vec<Option<u64>>,
    /// Lines that contained a pattern.
    kept: Vec<String>,
    tail: VecDeque<String>,
    eof: bool,
}

/// Copies one output stream of a child to a log file, line by line, and notes when each of a
/// set of patterns first appears (with the time the line was read).
pub struct Tap {
    patterns: Vec<String>,
    state: Arc<(Mutex<TapState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

const TAIL_LINES: usize = 30;

impl Tap {
    pub fn new<R: Read + Send + 'static>(reader: R, log: &Path, patterns: &[&str]) -> Result<Tap> {
        let mut file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let patterns: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        let state = Arc::new((
            Mutex::new(TapState {
                seen: vec![None; patterns.len()],
                ..TapState::default()
            }),
            Condvar::new(),
        ));
        let (st, pats) = (state.clone(), patterns.clone());
        let thread = std::thread::Builder::new()
            .name("tap".into())
            .spawn(move || {
                let mut r = BufReader::new(reader);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let now = mono_ns();
                    let _ = file.write_all(&line);
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    let (lock, cv) = &*st;
                    let mut s = lock.lock().expect("tap lock");
                    let mut hit = false;
                    for (i, p) in pats.iter().enumerate() {
                        if text.contains(p.as_str()) {
                            hit = true;
                            if s.seen[i].is_none() {
                                s.seen[i] = Some(now);
                            }
                        }
                    }
                    if hit {
                        s.kept.push(text.clone());
                        cv.notify_all();
                    }
                    s.tail.push_back(text);
                    if s.tail.len() > TAIL_LINES {
                        s.tail.pop_front();
                    }
                }
                let (lock, cv) = &*st;
                lock.lock().expect("tap lock").eof = true;
                cv.notify_all();
            })
            .context("spawn tap thread")?;
        Ok(Tap {
            patterns,
            state,
            thread: Some(thread),
        })
    }

    fn index(&self, pattern: &str) -> usize {
        self.patterns
            .iter()
            .position(|p| p == pattern)
            .unwrap_or_else(|| panic!("pattern {pattern:?} was not registered"))
    }

    /// Waits for `pattern` (up to `timeout`); fails on timeout, end of output or interrupt.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<u64> {
        let i = self.index(pattern);
        let end = mono_ns() + timeout.as_nanos() as u64;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("tap lock");
        loop {
            if let Some(t) = s.seen[i] {
                return Ok(t);
            }
            check_interrupt()?;
            let now = mono_ns();
            if s.eof || now >= end {
                let why = if s.eof { "output ended" } else { "timed out" };
                bail!(
                    "waiting for {pattern:?}: {why}; last output:\n  {}",
                    s.tail.iter().cloned().collect::<Vec<_>>().join("\n  ")
                );
            }
            let slice = Duration::from_nanos((end - now).min(100_000_000));
            s = cv.wait_timeout(s, slice).expect("tap lock").0;
        }
    }

    /// Every line that contained `pattern`.
    pub fn lines_with(&self, pattern: &str) -> Vec<String> {
        let s = self.state.0.lock().expect("tap lock");
        s.kept
            .iter()
            .filter(|l| l.contains(pattern))
            .cloned()
            .collect()
    }

    pub fn tail(&self) -> String {
        let s = self.state.0.lock().expect("tap lock");
        s.tail.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Waits (bounded) for the stream to end, e.g. after the child exited.
    pub fn finish(&mut self, timeout: Duration) {
        let end = mono_ns() + timeout.as_nanos() as u64;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().expect("tap lock");
        while !s.eof && mono_ns() < end {
            s = cv
                .wait_timeout(s, Duration::from_millis(50))
                .expect("tap lock")
                .0;
        }
        let done = s.eof;
        drop(s);
        if done {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        // Otherwise a grandchild still holds the pipe: the thread ends when it does.
    }
}

/// Runs a command to completion (bounded by `timeout`), failing with its output if it fails.
pub fn run_cmd(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let desc = format!("{cmd:?}");
    let (mut p, mut child) = Proc::spawn_with(
        "command",
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    )?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let exit = p.wait_timeout(timeout);
    if exit.is_none() {
        p.stop(libc::SIGKILL, true, Duration::from_secs(5));
        bail!("{desc}: timed out after {timeout:?}");
    }
    let exit = exit.expect("checked");
    let out = t_out.join().unwrap_or_default();
    let err = t_err.join().unwrap_or_default();
    if exit.code() != Some(0) {
        bail!("{desc}: {}\n{}{}", exit.describe(), out, err);
    }
    Ok(out)
}
