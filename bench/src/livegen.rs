//! The live-load generator (`syncer-bench live-gen`, its own process): writes the mixed load of a
//! busy file server **into an existing tree** (the start-up tree of [`TreeLayout`], which it
//! knows from its parameters and never reads back) at a steady rate, open-loop like `gen`
//! (operation i is due at t0 + i/rate). Operations: creations of new files in random existing
//! directories, rewrites of random existing files, renames of files to another random
//! directory, deletions, temporary directories (mkdir, a few files, `rm -r` of it 0.5-2 s later)
//! and, rarely, the rename of a leaf directory.
//!
//! Every name it gives is unique for the whole run (files `fNNNNNNNN` numbered on from the
//! tree's, renamed directories `rNNNNNNNN`, temporary ones `xNNNNNNNN`), so that the target
//! watcher can match arrivals and departures by name alone. For every change that must reach the
//! target it records the CLOCK_MONOTONIC time when the operation completed: the names that must
//! arrive (kept only if the name still holds at the end) and the names that must leave (kept
//! with whether the pre-built tree held them; the bench times the others only if the target
//! ever saw them). Files of temporary directories are not timed.

use std::collections::BinaryHeap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::gen::{Content, Rng, TreeLayout};
use crate::sys::mono_ns;
use crate::watch::{dir_key, file_name, DirName};

/// Percentages of each operation; creations are the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LiveMix {
    pub rewrite: f64,
    pub rename: f64,
    pub delete: f64,
    pub tmpdir: f64,
    pub dir_rename: f64,
}

impl Default for LiveMix {
    fn default() -> LiveMix {
        LiveMix::parse(LiveMix::DEFAULT).expect("the default mix parses")
    }
}

impl LiveMix {
    pub const DEFAULT: &'static str = "rewrite=30,rename=15,delete=12,tmpdir=8,dirrename=0.02";

    /// e.g. `rewrite=30,rename=15,delete=12,tmpdir=8,dirrename=0.02` (percent of operations).
    pub fn parse(s: &str) -> Result<LiveMix> {
        let mut m = LiveMix {
            rewrite: 0.0,
            rename: 0.0,
            delete: 0.0,
            tmpdir: 0.0,
            dir_rename: 0.0,
        };
        for part in s.split(',').filter(|p| !p.is_empty() && *p != "none") {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("live mix item {part:?}: expected name=percent"))?;
            let v: f64 = v
                .parse()
                .with_context(|| format!("live mix item {part:?}"))?;
            match k {
                "rewrite" => m.rewrite = v,
                "rename" => m.rename = v,
                "delete" => m.delete = v,
                "tmpdir" => m.tmpdir = v,
                "dirrename" => m.dir_rename = v,
                // Creations are the rest; `describe` names them.
                "create" => {}
                _ => bail!(
                    "unknown live mix item {k:?} (create, rewrite, rename, delete, tmpdir, \
                     dirrename)"
                ),
            }
        }
        if m.rewrite + m.rename + m.delete + m.tmpdir + m.dir_rename > 95.0 {
            bail!("the live mix leaves under 5% creations");
        }
        Ok(m)
    }

    pub fn describe(&self) -> String {
        format!(
            "create={},rewrite={},rename={},delete={},tmpdir={},dirrename={}",
            self.create(),
            self.rewrite,
            self.rename,
            self.delete,
            self.tmpdir,
            self.dir_rename
        )
    }

    pub fn create(&self) -> f64 {
        ((100.0 - self.rewrite - self.rename - self.delete - self.tmpdir - self.dir_rename)
            * 1000.0)
            .round()
            / 1000.0
    }
}

/// What a timed change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Create,
    Rewrite,
    RenameTo,
    RenameFrom,
    Delete,
    DirRenameTo,
    DirRenameFrom,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Create,
        Kind::Rewrite,
        Kind::RenameTo,
        Kind::RenameFrom,
        Kind::Delete,
        Kind::DirRenameTo,
        Kind::DirRenameFrom,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Rewrite => "rewrite",
            Kind::RenameTo => "rename-to",
            Kind::RenameFrom => "rename-from",
            Kind::Delete => "delete",
            Kind::DirRenameTo => "dir-rename-to",
            Kind::DirRenameFrom => "dir-rename-from",
        }
    }
}

/// A name that must arrive on the target: (key, op completed ns, kind). Keys are file ids, or
/// [`dir_key`]s for directories.
pub type Expect = (u64, u64, Kind);
/// A name that must leave the target: (key, op completed ns, kind, the pre-built tree held it).
pub type Leave = (u64, u64, Kind, bool);

/// Parameters of one `live-gen` run.
#[derive(Debug, Clone)]
pub struct LiveGenArgs {
    pub dir: PathBuf,
    /// The pre-built tree in `dir`.
    pub layout: TreeLayout,
    pub rate: f64,
    pub duration: Duration,
    pub mix: LiveMix,
    pub seed: u64,
    /// Sizes of created and rewritten files, bytes.
    pub min_size: u64,
    pub max_size: u64,
    /// Life of a temporary directory before its `rm -r`, ms (uniform in the range).
    pub tmp_life_ms: (u64, u64),
    pub out: PathBuf,
    pub trace: Option<PathBuf>,
}

/// What `live-gen` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LiveGenReport {
    pub t_start: u64,
    /// After the last scheduled operation (the rate is counted to here).
    pub t_ops_end: u64,
    /// After the last operation (the last temporary directory removed included).
    pub t_end: u64,
    pub ops: u64,
    pub creates: u64,
    pub rewrites: u64,
    pub renames: u64,
    pub deletes: u64,
    pub tmpdirs: u64,
    pub tmp_files: u64,
    pub dir_renames: u64,
    pub bytes: u64,
    /// Operations that started more than 100 ms after they were due.
    pub late_ops: u64,
    pub arrive: Vec<Expect>,
    pub leave: Vec<Leave>,
}

impl LiveGenReport {
    pub fn achieved_rate(&self) -> f64 {
        let s = crate::sys::secs(self.t_ops_end.saturating_sub(self.t_start));
        self.ops as f64 / s.max(1e-9)
    }
}

const GONE: u32 = u32::MAX;

/// The generator's books: where every file is, which are alive, the directories' names.
struct Books {
    root: PathBuf,
    /// Per leaf: its current path relative to the root and its current name's key.
    leaves: Vec<(PathBuf, u64)>,
    /// Per file id: its leaf, its index in `alive` (GONE when gone).
    leaf_of: Vec<u32>,
    pos_of: Vec<u32>,
    alive: Vec<u32>,
    next_id: u64,
    next_dir: u64,
    prebuilt_files: u64,
}

impl Books {
    fn new(root: &Path, lay: TreeLayout) -> Result<Books> {
        if lay.files + lay.files / 2 + 1_000_000 > u32::MAX as u64 {
            bail!("tree of {} files: too many for 32-bit ids", lay.files);
        }
        let mut leaf_of = Vec::with_capacity(lay.files as usize * 11 / 10);
        for d in 0..lay.dirs {
            leaf_of.extend(lay.files_of(d).map(|_| d as u32));
        }
        let n = leaf_of.len() as u32;
        Ok(Books {
            root: root.to_path_buf(),
            leaves: (0..lay.dirs)
                .map(|d| (lay.leaf(d), dir_key(DirName::Leaf, d)))
                .collect(),
            pos_of: (0..n).collect(),
            alive: (0..n).collect(),
            leaf_of,
            next_id: lay.files,
            next_dir: 0,
            prebuilt_files: lay.files,
        })
    }

    fn path(&self, id: u32) -> PathBuf {
        let leaf = &self.leaves[self.leaf_of[id as usize] as usize].0;
        self.root.join(leaf).join(file_name(id))
    }

    fn random_leaf(&self, r: &mut Rng) -> u32 {
        r.below(self.leaves.len() as u64) as u32
    }

    fn random_alive(&self, r: &mut Rng) -> Option<u32> {
        (!self.alive.is_empty()).then(|| self.alive[r.below(self.alive.len() as u64) as usize])
    }

    /// A new file id in `leaf` (alive unless `temp`).
    fn new_id(&mut self, leaf: u32, temp: bool) -> u32 {
        let id = self.next_id as u32;
        self.next_id += 1;
        self.leaf_of.push(leaf);
        if temp {
            self.pos_of.push(GONE);
        } else {
            self.pos_of.push(self.alive.len() as u32);
            self.alive.push(id);
        }
        id
    }

    fn forget(&mut self, id: u32) {
        let pos = self.pos_of[id as usize] as usize;
        self.alive.swap_remove(pos);
        if let Some(&moved) = self.alive.get(pos) {
            self.pos_of[moved as usize] = pos as u32;
        }
        self.pos_of[id as usize] = GONE;
    }

    fn is_alive(&self, id: u32) -> bool {
        self.pos_of.get(id as usize).is_some_and(|&p| p != GONE)
    }
}

/// A temporary directory waiting for its `rm -r`: (due ns, leaf, name). Ordered soonest first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TmpDir(std::cmp::Reverse<u64>, u32, String);

type Trace = Option<std::io::BufWriter<std::fs::File>>;

fn log(trace: &mut Trace, t: u64, line: std::fmt::Arguments) {
    if let Some(w) = trace.as_mut() {
        let _ = writeln!(w, "{t} {line}");
    }
}

/// The run: books, content, output.
struct Gen<'a> {
    a: &'a LiveGenArgs,
    b: Books,
    rng: Rng,
    content: Content,
    rep: LiveGenReport,
    tmp: BinaryHeap<TmpDir>,
    trace: Trace,
    /// Arrivals recorded so far, before the end-of-run filter.
    arrive: Vec<Expect>,
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    f.write_all(data)?;
    drop(f); // close(2)
    Ok(())
}

impl Gen<'_> {
    fn size(&mut self) -> usize {
        let (lo, hi) = (self.a.min_size.max(8), self.a.max_size.max(8));
        (lo + self.rng.below(hi.saturating_sub(lo) + 1)) as usize
    }

    fn write(&mut self, id: u32, version: u32) -> Result<()> {
        let size = self.size();
        let data = self.content.make(id, version, size, &mut self.rng);
        write_file(&self.b.path(id), data)
            .with_context(|| format!("write {}", self.b.path(id).display()))?;
        self.rep.bytes += size as u64;
        Ok(())
    }

    fn create(&mut self) -> Result<()> {
        let leaf = self.b.random_leaf(&mut self.rng);
        let id = self.b.new_id(leaf, false);
        self.write(id, 0)?;
        let t = mono_ns();
        self.arrive.push((id as u64, t, Kind::Create));
        self.rep.creates += 1;
        log(&mut self.trace, t, format_args!("create {}", file_name(id)));
        Ok(())
    }

    fn rewrite(&mut self, id: u32) -> Result<()> {
        self.write(id, self.rep.rewrites as u32 + 1)?;
        let t = mono_ns();
        self.arrive.push((id as u64, t, Kind::Rewrite));
        self.rep.rewrites += 1;
        log(
            &mut self.trace,
            t,
            format_args!("rewrite {}", file_name(id)),
        );
        Ok(())
    }

    fn rename(&mut self, old: u32) -> Result<()> {
        let from = self.b.path(old);
        let mut leaf = self.b.random_leaf(&mut self.rng);
        if leaf == self.b.leaf_of[old as usize] && self.b.leaves.len() > 1 {
            leaf = (leaf + 1) % self.b.leaves.len() as u32;
        }
        self.b.forget(old);
        let id = self.b.new_id(leaf, false);
        let to = self.b.path(id);
        std::fs::rename(&from, &to).with_context(|| format!("rename {}", from.display()))?;
        let t = mono_ns();
        self.arrive.push((id as u64, t, Kind::RenameTo));
        let pre = (old as u64) < self.b.prebuilt_files;
        self.rep.leave.push((old as u64, t, Kind::RenameFrom, pre));
        self.rep.renames += 1;
        log(
            &mut self.trace,
            t,
            format_args!("rename {} {}", file_name(old), file_name(id)),
        );
        Ok(())
    }

    fn delete(&mut self, id: u32) -> Result<()> {
        let p = self.b.path(id);
        std::fs::remove_file(&p).with_context(|| format!("delete {}", p.display()))?;
        self.b.forget(id);
        let t = mono_ns();
        let pre = (id as u64) < self.b.prebuilt_files;
        self.rep.leave.push((id as u64, t, Kind::Delete, pre));
        self.rep.deletes += 1;
        log(&mut self.trace, t, format_args!("delete {}", file_name(id)));
        Ok(())
    }

    /// mkdir, 2-5 files of 1-8 KB, a subdirectory with 1-3 more, and the `rm -r` scheduled
    /// `tmp_life_ms` later.
    fn tmpdir(&mut self) -> Result<()> {
        let leaf = self.b.random_leaf(&mut self.rng);
        let name = format!("x{:08}", self.b.next_dir);
        self.b.next_dir += 1;
        let dir = self
            .b
            .root
            .join(&self.b.leaves[leaf as usize].0)
            .join(&name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let n = 2 + self.rng.below(4);
        self.tmp_files(leaf, &dir, n)?;
        let sub = dir.join("s");
        std::fs::create_dir(&sub).with_context(|| format!("mkdir {}", sub.display()))?;
        let n = 1 + self.rng.below(3);
        self.tmp_files(leaf, &sub, n)?;
        let t = mono_ns();
        let (lo, hi) = self.a.tmp_life_ms;
        let life_ms = lo + self.rng.below(hi.saturating_sub(lo) + 1);
        let due = t + life_ms * 1_000_000;
        self.tmp
            .push(TmpDir(std::cmp::Reverse(due), leaf, name.clone()));
        self.rep.tmpdirs += 1;
        log(&mut self.trace, t, format_args!("tmpdir {name}"));
        Ok(())
    }

    fn tmp_files(&mut self, leaf: u32, dir: &Path, n: u64) -> Result<()> {
        for _ in 0..n {
            let id = self.b.new_id(leaf, true);
            let size = (1024 + self.rng.below(7 * 1024)) as usize;
            let data = self.content.make(id, 0, size, &mut self.rng);
            write_file(&dir.join(file_name(id)), data).context("write a temporary file")?;
            self.rep.bytes += size as u64;
            self.rep.tmp_files += 1;
        }
        Ok(())
    }

    /// Removes the temporary directories due by `now`.
    fn reap_tmp(&mut self, now: u64) -> Result<()> {
        while self.tmp.peek().is_some_and(|d| d.0 .0 <= now) {
            let TmpDir(_, leaf, name) = self.tmp.pop().expect("peeked");
            let dir = self
                .b
                .root
                .join(&self.b.leaves[leaf as usize].0)
                .join(&name);
            std::fs::remove_dir_all(&dir).with_context(|| format!("rm -r {}", dir.display()))?;
            log(&mut self.trace, mono_ns(), format_args!("rm-r {name}"));
        }
        Ok(())
    }

    /// Renames a random leaf to a new unique name under the same top directory.
    fn dir_rename(&mut self) -> Result<()> {
        let leaf = self.b.random_leaf(&mut self.rng) as usize;
        let (old, old_key) = self.b.leaves[leaf].clone();
        let n = self.b.next_dir;
        self.b.next_dir += 1;
        let new = old.with_file_name(format!("r{n:08}"));
        std::fs::rename(self.b.root.join(&old), self.b.root.join(&new))
            .with_context(|| format!("rename {}", old.display()))?;
        let t = mono_ns();
        let key = dir_key(DirName::Renamed, n);
        let pre = DirName::of_key(old_key) == DirName::Leaf;
        self.rep.leave.push((old_key, t, Kind::DirRenameFrom, pre));
        self.arrive.push((key, t, Kind::DirRenameTo));
        self.b.leaves[leaf] = (new.clone(), key);
        self.rep.dir_renames += 1;
        log(
            &mut self.trace,
            t,
            format_args!("dir-rename {} {}", old.display(), new.display()),
        );
        Ok(())
    }

    fn one_op(&mut self) -> Result<()> {
        let m = &self.a.mix;
        let u = self.rng.unit() * 100.0;
        let mut edge = m.dir_rename;
        if u < edge {
            return self.dir_rename();
        }
        edge += m.tmpdir;
        if u < edge {
            return self.tmpdir();
        }
        let pick = self.b.random_alive(&mut self.rng);
        match pick {
            Some(id) if u < edge + m.rewrite => self.rewrite(id),
            Some(id) if u < edge + m.rewrite + m.rename => self.rename(id),
            Some(id) if u < edge + m.rewrite + m.rename + m.delete => self.delete(id),
            _ => self.create(),
        }
    }
}

/// Runs the `live-gen` subcommand.
pub fn run_live_gen(a: &LiveGenArgs) -> Result<()> {
    let trace: Trace = match &a.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => None,
    };
    let mut g = Gen {
        a,
        b: Books::new(&a.dir, a.layout)?,
        rng: Rng::new(a.seed.wrapping_mul(31).wrapping_add(17)),
        content: Content::new(a.seed.wrapping_add(2)),
        rep: LiveGenReport::default(),
        tmp: BinaryHeap::new(),
        trace,
        arrive: Vec::new(),
    };
    let interval = 1e9 / a.rate.max(1e-3);
    let t0 = mono_ns();
    let end = t0 + a.duration.as_nanos() as u64;
    g.rep.t_start = t0;
    for i in 0u64.. {
        let due = t0 + (i as f64 * interval) as u64;
        if due >= end {
            break;
        }
        loop {
            let now = mono_ns();
            g.reap_tmp(now)?;
            let next_tmp = g.tmp.peek().map_or(u64::MAX, |d| d.0 .0);
            let wake = due.min(next_tmp);
            if wake <= now + 200_000 {
                break;
            }
            std::thread::sleep(Duration::from_nanos(wake - now));
        }
        if mono_ns() > due + 100_000_000 {
            g.rep.late_ops += 1;
        }
        g.one_op()?;
        g.rep.ops += 1;
        crate::sys::check_interrupt()?;
    }
    g.rep.t_ops_end = mono_ns();
    // The temporary directories still standing go when due, as they would have.
    while let Some(d) = g.tmp.peek() {
        let now = mono_ns();
        if d.0 .0 > now {
            std::thread::sleep(Duration::from_nanos(d.0 .0 - now));
        }
        g.reap_tmp(mono_ns())?;
    }
    g.rep.t_end = mono_ns();
    finish(g)
}

/// Keeps the arrivals whose name still holds at the end, and writes the report.
fn finish(mut g: Gen) -> Result<()> {
    let live_dirs: std::collections::HashSet<u64> = g.b.leaves.iter().map(|l| l.1).collect();
    let b = &g.b;
    g.rep.arrive = std::mem::take(&mut g.arrive)
        .into_iter()
        .filter(|&(key, _, kind)| match kind {
            Kind::DirRenameTo => live_dirs.contains(&key),
            _ => b.is_alive(key as u32),
        })
        .collect();
    if let Some(mut t) = g.trace.take() {
        t.flush().context("write the trace")?;
    }
    let json = serde_json::to_vec(&g.rep)?;
    std::fs::write(&g.a.out, json).with_context(|| format!("write {}", g.a.out.display()))?;
    Ok(())
}

/// Parses a range `LO-HI` (or one number).
pub fn parse_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u64, u64) = (
        a.trim().parse().with_context(|| format!("range {s:?}"))?,
        b.trim().parse().with_context(|| format!("range {s:?}"))?,
    );
    if a > b {
        bail!("range {s:?}: the low end is above the high end");
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{run_tree, TreeArgs};

    #[test]
    fn mix_parses() {
        let m = LiveMix::parse(LiveMix::DEFAULT).unwrap();
        assert_eq!(m.create(), 34.98);
        assert!(LiveMix::parse("rewrite=99").is_err());
        assert!(LiveMix::parse("explode=1").is_err());
        assert_eq!(LiveMix::parse(&m.describe()).unwrap(), m);
    }

    /// The generator's books match the tree it leaves: every name it says must have arrived
    /// exists, every name it says must have left does not, and no temporary directory is left.
    #[test]
    fn live_generator_keeps_its_books() {
        let base = std::env::temp_dir().join(format!("sb-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("t");
        std::fs::create_dir_all(&dir).unwrap();
        let lay = TreeLayout::new(2000, 200);
        run_tree(&TreeArgs {
            dir: dir.clone(),
            files: lay.files,
            dirs: lay.dirs,
            seed: 3,
            min_size: 16,
            max_size: 64,
        })
        .unwrap();
        let a = LiveGenArgs {
            dir: dir.clone(),
            layout: lay,
            rate: 2000.0,
            duration: Duration::from_millis(1500),
            mix: LiveMix::parse("rewrite=20,rename=20,delete=20,tmpdir=10,dirrename=2").unwrap(),
            seed: 5,
            min_size: 100,
            max_size: 200,
            tmp_life_ms: (50, 500),
            out: base.join("out.json"),
            trace: None,
        };
        run_live_gen(&a).unwrap();
        let rep: LiveGenReport = serde_json::from_slice(&std::fs::read(&a.out).unwrap()).unwrap();
        assert!(rep.ops > 2000 && rep.tmpdirs > 0 && rep.dir_renames > 0);
        let mut files = std::collections::HashSet::new();
        let mut dirs = std::collections::HashSet::new();
        let mut stack = vec![dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let name = e.file_name();
                let name = name.as_encoded_bytes();
                assert_ne!(name[0], b'x', "a temporary directory was left");
                if e.file_type().unwrap().is_dir() {
                    if let Some(k) = crate::watch::dir_key_of(name) {
                        dirs.insert(k);
                    }
                    stack.push(e.path());
                } else {
                    files.insert(crate::watch::file_id(name).unwrap() as u64);
                }
            }
        }
        for (key, _, kind) in &rep.arrive {
            let here = if *kind == Kind::DirRenameTo {
                dirs.contains(key)
            } else {
                files.contains(key)
            };
            assert!(here, "{kind:?} {key} missing");
        }
        for (key, _, kind, _) in &rep.leave {
            let here = if *kind == Kind::DirRenameFrom {
                dirs.contains(key)
            } else {
                files.contains(key)
            };
            assert!(!here, "{kind:?} {key} still there");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
