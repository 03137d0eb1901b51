//! A big tree under live writes through the start-up pass: 100,000 files in 11,111 directories,
//! already on the target (an rsync daemon; with some stale differences), while a writer makes the usual mixed
//! load of a file server from the moment the event source is live until after the pass has
//! ended: rewrites, creations in existing directories, renames of files across directories,
//! deletions, temporary directories made and removed with `rm -r`, directory renames. The
//! trees must end identical. Correctness only: how fast is the bench's business
//! (`cargo xtask bench`, rows "big tree under live load").
//!
//! Runs with fanotify and inotify: the pass and the dispatcher are the same for every source,
//! and the eBPF variants run in the VMs of `cargo xtask vm-test`, under software emulation,
//! where a tree of this size would cost minutes per kernel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

#[test]
fn big_tree_under_live_writes_fanotify() {
    big_tree_under_live_writes(SourceKind::Fanotify);
}

#[test]
fn big_tree_under_live_writes_inotify() {
    big_tree_under_live_writes(SourceKind::Inotify);
}

const FILES: usize = 100_000;

fn spec() -> TreeSpec {
    TreeSpec {
        fanout: 10,
        depth: 4,
        max_size: 1024,
        ..TreeSpec::new(FILES)
    }
}

fn big_tree_under_live_writes(kind: SourceKind) {
    let Some(rig) = Rig::with_fs_size(2 << 30) else {
        return;
    };
    let src = rig.src.clone();
    let t0 = Instant::now();
    let files = make_tree(&src, &spec());
    let target = rig.daemon.path().to_path_buf();
    let t = target.as_path();
    run_tool(
        std::process::Command::new(tool("rsync"))
            .args(["-a", "--numeric-ids"])
            .arg(format!("{}/", src.display()))
            .arg(t),
    )
    .expect("pre-seeding a target");
    // Stale differences the pass must repair.
    write_file(&t.join(&files[7]), b"stale contents on the target\n");
    write_file(&t.join("d3/d3/stale-extra"), b"not in the source\n");
    remove(&t.join(&files[11]));
    eprintln!(
        "tree of {FILES} files on source and target in {:.1?}",
        t0.elapsed()
    );

    // One target: the pass and the load are what is under test, and a second copy of the tree
    // would double the set-up.
    let mut args: Vec<std::ffi::OsString> =
        vec!["run".into(), "--source".into(), src.clone().into()];
    args.extend(["--target".into(), rig.daemon.url().into()]);
    args.extend(kind.args().into_iter().map(Into::into));
    args.extend(["--delay", DELAY_MS].map(Into::into));
    let mut syncer = Syncer::spawn(args);
    syncer.wait_for_log(LIVE, MARKER_TIMEOUT);
    let load = Load::spawn(src.clone(), files);
    let started = Instant::now();
    while !syncer.log_contains(INITIAL_SYNC_FINISHED) {
        assert!(
            started.elapsed() < CONVERGE_TIMEOUT,
            "the start-up pass did not finish within {CONVERGE_TIMEOUT:?} under load"
        );
        syncer.assert_running("during the start-up pass");
        thread::sleep(Duration::from_millis(20));
    }
    let during = load.ops.load(Ordering::Relaxed);
    eprintln!(
        "start-up pass done after {:.1?} with {during} live operations made meanwhile",
        started.elapsed()
    );
    // Go on writing after the pass, then stop.
    thread::sleep(Duration::from_secs(3));
    let total = load.stop();
    assert!(
        during >= 50,
        "only {during} operations ran during the start-up pass: the test did not exercise it"
    );
    eprintln!("{total} live operations in all");
    assert_converges(&src, &target, CONVERGE_TIMEOUT);
    syncer.assert_running("after converging");
    syncer.stop();
}

/// The writer: a thread making the mixed load at about 1000 operations per second.
struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicUsize>,
    handle: thread::JoinHandle<usize>,
}

impl Load {
    fn spawn(root: PathBuf, files: Vec<PathBuf>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), ops.clone());
        let handle = thread::spawn(move || {
            let mut w = Mixed::new(root, files);
            while !flag.load(Ordering::Relaxed) {
                w.step();
                count.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
            w.finish();
            count.load(Ordering::Relaxed)
        });
        Load { stop, ops, handle }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("the writer panicked")
    }
}

struct Mixed {
    root: PathBuf,
    alive: Vec<PathBuf>,
    /// Leaf directories (relative), for creations and renames.
    dirs: Vec<PathBuf>,
    rng: Rng,
    n: usize,
    /// Temporary directories to remove, with the step at which to do it.
    temps: Vec<(usize, PathBuf)>,
}

impl Mixed {
    fn new(root: PathBuf, alive: Vec<PathBuf>) -> Mixed {
        let mut dirs: Vec<PathBuf> = alive
            .iter()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        Mixed {
            root,
            alive,
            dirs,
            rng: Rng::new(0xB16),
            n: 0,
            temps: Vec::new(),
        }
    }

    fn pick_file(&mut self) -> usize {
        self.rng.below(self.alive.len() as u64) as usize
    }

    fn pick_dir(&mut self) -> PathBuf {
        self.dirs[self.rng.below(self.dirs.len() as u64) as usize].clone()
    }

    fn step(&mut self) {
        self.n += 1;
        let n = self.n;
        while self.temps.first().is_some_and(|(at, _)| *at <= n) {
            let (_, dir) = self.temps.remove(0);
            std::fs::remove_dir_all(self.root.join(dir)).expect("rm -r a temporary directory");
        }
        match self.rng.below(100) {
            0..=34 => {
                let i = self.pick_file();
                let len = self.rng.below(2048) as usize;
                let data = self.rng.bytes(len);
                write_file(&self.root.join(&self.alive[i]), &data);
            }
            35..=64 => {
                let rel = self.pick_dir().join(format!("new{n:07}"));
                write_file(&self.root.join(&rel), format!("created {n}\n").as_bytes());
                self.alive.push(rel);
            }
            65..=79 => {
                let i = self.pick_file();
                let to = self.pick_dir().join(format!("moved{n:07}"));
                rename(&self.root.join(&self.alive[i]), &self.root.join(&to));
                self.alive[i] = to;
            }
            80..=93 => {
                let i = self.pick_file();
                remove(&self.root.join(self.alive.swap_remove(i)));
            }
            94..=98 => {
                let dir = self.pick_dir().join(format!("tmp{n:07}"));
                for k in 0..5 {
                    write_file(&self.root.join(&dir).join(format!("part{k}")), b"scratch\n");
                }
                self.temps
                    .push((n + 20 + self.rng.below(200) as usize, dir));
            }
            _ => {
                // A leaf directory renamed (the files in it go with it).
                let j = self.rng.below(self.dirs.len() as u64) as usize;
                let from = self.dirs[j].clone();
                let to = from.with_file_name(format!("renamed{n:07}"));
                rename(&self.root.join(&from), &self.root.join(&to));
                let moved = |p: &mut PathBuf| {
                    if let Ok(rest) = p.strip_prefix(&from) {
                        *p = to.join(rest);
                    }
                };
                self.alive.iter_mut().for_each(moved);
                self.temps.iter_mut().for_each(|(_, p)| moved(p));
                self.dirs[j] = to;
            }
        }
    }

    /// Removes the temporary directories still there (as their owner would).
    fn finish(&mut self) {
        for (_, dir) in self.temps.drain(..) {
            std::fs::remove_dir_all(self.root.join(dir)).expect("rm -r a temporary directory");
        }
    }
}
