//! A property test of the whole daemon: random sequences of tree operations (create, write,
//! truncate, rename of files and directories, delete, mkdir, rmdir, chmod, symlink, hard link)
//! with syncer killed (SIGKILL) and restarted on the same state at random points; the trees
//! must end identical, live (hard-linked names of the one documented gap: after a restart). Each seed is printed, and a failing one is replayed with
//! `SYNCER_E2E_SEED=N cargo test -p syncer --test e2e -- property`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::*;

/// Seeds run by default (each is a few seconds); `SYNCER_E2E_SEED` runs one.
const SEEDS: &[u64] = &[1, 2, 3, 4, 5, 6];
const OPS: usize = 400;

#[test]
fn random_operations_with_kills_and_restarts() {
    let seeds: Vec<u64> = match std::env::var("SYNCER_E2E_SEED") {
        Ok(s) => vec![s.parse().expect("SYNCER_E2E_SEED is a number")],
        Err(_) => SEEDS.to_vec(),
    };
    for seed in seeds {
        eprintln!("property: seed {seed} (replay: SYNCER_E2E_SEED={seed})");
        let r = std::panic::catch_unwind(|| run_seed(seed));
        if let Err(e) = r {
            eprintln!("property: seed {seed} FAILED; replay with SYNCER_E2E_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

fn run_seed(seed: u64) {
    let Some(rig) = Rig::new() else { return };
    let mut rng = Rng::new(seed);
    let mut ops = Ops {
        root: rig.src.join("p"),
        rng: Rng::new(seed ^ 0x9E37),
        n: 0,
    };
    mkdirs(&ops.root);
    for _ in 0..50 {
        ops.step();
    }
    // Kill points: one or two, anywhere in the run.
    let kills: Vec<usize> = (0..1 + rng.below(2))
        .map(|_| rng.below(OPS as u64) as usize)
        .collect();
    let mut syncer = Some(rig.start(SourceKind::Fanotify));
    for i in 0..OPS {
        ops.step();
        if kills.contains(&i) {
            eprintln!("property: seed {seed}: kill -9 after operation {i}");
            syncer.take().expect("running").kill();
            // Some operations while it is down.
            for _ in 0..rng.below(30) {
                ops.step();
            }
            syncer = Some(rig.spawn(SourceKind::Fanotify, &[]));
        }
        if rng.below(50) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(200)));
        }
    }
    let mut s = syncer.expect("running");
    let left = settle(&rig);
    if !left.is_empty() {
        // Live replication of hard links has one documented gap (ARCHITECTURE.md, hard
        // links): a name in another directory that neither an event nor a walk has shown,
        // written through another name (possible here: links are renamed, written through and
        // deleted within one coalescing delay). Everything else must converge live; those
        // names must be repaired by the catch-up walk of the next start.
        assert!(
            left.iter().all(|d| d.contains(" links in A)")),
            "seed {seed}: not converged live:\n{}",
            left.join("\n")
        );
        eprintln!(
            "property: seed {seed}: {} difference(s) on hard-linked names left to the catch-up walk:\n{}",
            left.len(),
            left.join("\n")
        );
        s.stop();
        s = rig.spawn(SourceKind::Fanotify, &[]);
    }
    rig.assert_converges(&mut s);
    s.stop();
}

/// Waits until both targets equal the source, or 60 s; returns what still differs.
fn settle(rig: &Rig) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let diffs: Vec<String> = rig
            .target_dirs()
            .iter()
            .flat_map(|t| compare_trees(&rig.src, t))
            .collect();
        if diffs.is_empty() || std::time::Instant::now() > deadline {
            return diffs;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Ops {
    root: PathBuf,
    rng: Rng,
    n: usize,
}

impl Ops {
    fn entries(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut files, mut dirs) = (Vec::new(), vec![self.root.clone()]);
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => {
                        dirs.push(p.clone());
                        stack.push(p);
                    }
                    Ok(_) => files.push(p),
                    Err(_) => {}
                }
            }
        }
        (files, dirs)
    }

    fn pick<'a>(&mut self, v: &'a [PathBuf]) -> Option<&'a Path> {
        (!v.is_empty()).then(|| v[self.rng.below(v.len() as u64) as usize].as_path())
    }

    fn step(&mut self) {
        self.n += 1;
        let n = self.n;
        let (files, dirs) = self.entries();
        let dir = self.pick(&dirs).unwrap_or(&self.root).to_path_buf();
        let file = self.pick(&files).map(Path::to_path_buf);
        // Operations on missing or changed paths just fail: the tree is what it is.
        let _ = match self.rng.below(12) {
            0 | 1 => {
                let len = self.rng.below(5000) as usize;
                std::fs::write(dir.join(format!("f{n}")), self.rng.bytes(len))
            }
            2 => match &file {
                Some(f) => {
                    let len = self.rng.below(5000) as usize;
                    std::fs::write(f, self.rng.bytes(len))
                }
                None => Ok(()),
            },
            3 => match &file {
                Some(f) => std::fs::OpenOptions::new()
                    .write(true)
                    .open(f)
                    .and_then(|h| h.set_len(self.rng.below(100))),
                None => Ok(()),
            },
            4 => match &file {
                Some(f) => std::fs::rename(f, dir.join(format!("m{n}"))),
                None => Ok(()),
            },
            5 if dir != self.root => std::fs::rename(&dir, self.root.join(format!("dm{n}"))),
            6 => match &file {
                Some(f) => std::fs::remove_file(f),
                None => Ok(()),
            },
            7 => std::fs::create_dir(dir.join(format!("d{n}"))),
            8 if dir != self.root => std::fs::remove_dir_all(&dir),
            9 => match &file {
                Some(f) => {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = 0o600 | (self.rng.below(0o100) as u32);
                    std::fs::set_permissions(f, std::fs::Permissions::from_mode(mode))
                }
                None => Ok(()),
            },
            10 => std::os::unix::fs::symlink(format!("target{n}"), dir.join(format!("l{n}"))),
            // A hard link beside the file (renames move it elsewhere later): see the end of
            // run_seed and ARCHITECTURE.md, hard links.
            _ => match &file {
                Some(f) => std::fs::hard_link(f, f.with_file_name(format!("h{n}"))),
                None => Ok(()),
            },
        };
    }
}
