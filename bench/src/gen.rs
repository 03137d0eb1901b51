//! The workload generators, run as separate processes (`syncer-bench gen`, `syncer-bench tree`).
//!
//! `gen` writes files of 10-100 KB at a steady rate (open-loop: operation i is due at
//! t0 + i/rate; when it falls behind it writes without sleeping, and the achieved rate says so)
//! into a two-level tree (`tNNNN/dNNNNNN/fNNNNNNNN`, ~100 files per leaf directory), mixed with
//! rewrites, renames (to a new unique name), deletions and leaf-directory renames. Every file
//! name is unique for the whole run, so the watcher can match arrivals by name alone. It
//! records the CLOCK_MONOTONIC time right after the close() (or rename()) that gave each file
//! its final name and, at the end, writes a JSON report with the files alive at the end.
//!
//! `tree` fills a directory with many small files as fast as it can (the start-up tree).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::sys::{mono_ns, secs};
use crate::watch::file_name;

/// Percentages of each operation (the rest are creations).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub rewrite: f64,
    pub rename: f64,
    pub delete: f64,
    pub dir_rename: f64,
}

impl Mix {
    pub const NONE: Mix = Mix {
        rewrite: 0.0,
        rename: 0.0,
        delete: 0.0,
        dir_rename: 0.0,
    };

    /// `none`, or e.g. `rewrite=5,rename=3,delete=2,dirrename=0.02` (percent of operations).
    pub fn parse(s: &str) -> Result<Mix> {
        let mut m = Mix::NONE;
        if s == "none" || s.is_empty() {
            return Ok(m);
        }
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("mix item {part:?}: expected name=percent"))?;
            let v: f64 = v.parse().with_context(|| format!("mix item {part:?}"))?;
            match k {
                "rewrite" => m.rewrite = v,
                "rename" => m.rename = v,
                "delete" => m.delete = v,
                "dirrename" => m.dir_rename = v,
                _ => bail!("unknown mix item {k:?} (rewrite, rename, delete, dirrename)"),
            }
        }
        if m.rewrite + m.rename + m.delete + m.dir_rename > 90.0 {
            bail!("the mix leaves under 10% creations");
        }
        Ok(m)
    }

    pub fn describe(&self) -> String {
        if *self == Mix::NONE {
            return "creations only".into();
        }
        format!(
            "rewrite={},rename={},delete={},dirrename={}",
            self.rewrite, self.rename, self.delete, self.dir_rename
        )
    }
}

/// Parameters of one `gen` run.
#[derive(Debug, Clone)]
pub struct GenArgs {
    pub dir: PathBuf,
    /// Operations per second; 0 = as fast as possible.
    pub rate: f64,
    pub ops: u64,
    /// Give up (and say so) after this long.
    pub time_cap: Duration,
    pub mix: Mix,
    pub seed: u64,
    pub files_per_dir: u32,
    pub dirs_per_top: u32,
    pub out: PathBuf,
    /// Also log every operation here (`time op id [new id] [size]`), for looking into results.
    pub trace: Option<PathBuf>,
}

/// What `gen` reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GenReport {
    pub t_start: u64,
    pub t_end: u64,
    pub ops: u64,
    pub creates: u64,
    pub rewrites: u64,
    pub renames: u64,
    pub deletes: u64,
    pub dir_renames: u64,
    pub bytes: u64,
    /// Operations that started more than 100 ms after they were due.
    pub late_ops: u64,
    pub capped: bool,
    /// Files present at the end: (id, time their current name was given, ns).
    pub alive: Vec<(u32, u64)>,
}

impl GenReport {
    pub fn achieved_rate(&self) -> f64 {
        self.ops as f64 / secs(self.t_end.saturating_sub(self.t_start)).max(1e-9)
    }
}

/// A small, fast, seedable generator (splitmix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Random bytes that file contents are cut from.
pub struct Content {
    pool: Vec<u8>,
    scratch: Vec<u8>,
}

const POOL: usize = 4 << 20;

impl Content {
    pub fn new(seed: u64) -> Content {
        let mut r = Rng::new(seed);
        let mut pool = Vec::with_capacity(POOL + 128 * 1024);
        while pool.len() < POOL + 128 * 1024 {
            pool.extend_from_slice(&r.next().to_le_bytes());
        }
        Content {
            pool,
            scratch: Vec::with_capacity(128 * 1024),
        }
    }

    /// `size` bytes unique to (id, version): a header and a slice of the pool.
    pub fn make(&mut self, id: u32, version: u32, size: usize, r: &mut Rng) -> &[u8] {
        let off = r.below(POOL as u64) as usize;
        self.scratch.clear();
        self.scratch.extend_from_slice(&id.to_le_bytes());
        self.scratch.extend_from_slice(&version.to_le_bytes());
        let rest = size.saturating_sub(8);
        self.scratch.extend_from_slice(&self.pool[off..off + rest]);
        &self.scratch
    }
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
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

const MIN_SIZE: u64 = 10 * 1024;
const MAX_SIZE: u64 = 100 * 1024;
const NONE: u32 = u32::MAX;

struct Leaf {
    /// Path relative to the root: `tNNNN/dNNNNNN`.
    rel: PathBuf,
}

struct State {
    root: PathBuf,
    leaves: Vec<Leaf>,
    /// Leaf of the next creations, and how many it has received.
    cur_leaf: u32,
    cur_fill: u32,
    next_id: u32,
    next_leaf_name: u32,
    /// Per file id: its leaf, its index in `alive` (NONE when gone), its version and the time it
    /// got its current name.
    leaf_of: Vec<u32>,
    pos_of: Vec<u32>,
    version: Vec<u32>,
    named_at: Vec<u64>,
    alive: Vec<u32>,
    files_per_dir: u32,
    dirs_per_top: u32,
}

impl State {
    fn path(&self, id: u32) -> PathBuf {
        let leaf = &self.leaves[self.leaf_of[id as usize] as usize];
        self.root.join(&leaf.rel).join(file_name(id))
    }

    /// The leaf new files go to, creating a new one when the current one is full.
    fn fill_leaf(&mut self) -> Result<u32> {
        if self.leaves.is_empty() || self.cur_fill >= self.files_per_dir {
            let n = self.leaves.len() as u32;
            let top = n / self.dirs_per_top;
            let rel =
                PathBuf::from(format!("t{top:04}")).join(format!("d{:06}", self.next_leaf_name));
            self.next_leaf_name += 1;
            std::fs::create_dir_all(self.root.join(&rel))
                .with_context(|| format!("mkdir {}", rel.display()))?;
            self.leaves.push(Leaf { rel });
            self.cur_leaf = n;
            self.cur_fill = 0;
        }
        self.cur_fill += 1;
        Ok(self.cur_leaf)
    }

    fn new_id(&mut self, leaf: u32, now: u64) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.leaf_of.push(leaf);
        self.pos_of.push(self.alive.len() as u32);
        self.version.push(0);
        self.named_at.push(now);
        self.alive.push(id);
        id
    }

    fn forget(&mut self, id: u32) {
        let pos = self.pos_of[id as usize] as usize;
        self.alive.swap_remove(pos);
        if let Some(&moved) = self.alive.get(pos) {
            self.pos_of[moved as usize] = pos as u32;
        }
        self.pos_of[id as usize] = NONE;
    }
}

type Trace = Option<std::io::BufWriter<std::fs::File>>;

fn log(trace: &mut Trace, line: std::fmt::Arguments) {
    if let Some(t) = trace.as_mut() {
        let _ = writeln!(t, "{} {line}", mono_ns());
    }
}

/// Runs the `gen` subcommand.
pub fn run_gen(a: &GenArgs) -> Result<()> {
    let mut rng = Rng::new(a.seed);
    let mut content = Content::new(a.seed.wrapping_add(1));
    let mut st = State {
        root: a.dir.clone(),
        leaves: Vec::new(),
        cur_leaf: 0,
        cur_fill: 0,
        next_id: 0,
        next_leaf_name: 0,
        leaf_of: Vec::new(),
        pos_of: Vec::new(),
        version: Vec::new(),
        named_at: Vec::new(),
        alive: Vec::new(),
        files_per_dir: a.files_per_dir.max(1),
        dirs_per_top: a.dirs_per_top.max(1),
    };
    let mut rep = GenReport::default();
    let mut trace: Trace = match &a.trace {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("create {}", p.display()))?,
        )),
        None => None,
    };
    let interval = if a.rate > 0.0 { 1e9 / a.rate } else { 0.0 };
    let t0 = mono_ns();
    let cap = t0 + a.time_cap.as_nanos() as u64;
    rep.t_start = t0;
    let (p_rw, p_rn, p_del, p_dir) = (
        a.mix.rewrite / 100.0,
        a.mix.rename / 100.0,
        a.mix.delete / 100.0,
        a.mix.dir_rename / 100.0,
    );
    for i in 0..a.ops {
        let mut now = mono_ns();
        if interval > 0.0 {
            let due = t0 + (i as f64 * interval) as u64;
            if due > now + 200_000 {
                std::thread::sleep(Duration::from_nanos(due - now));
                now = mono_ns();
            } else if now > due + 100_000_000 {
                rep.late_ops += 1;
            }
        }
        if now > cap {
            rep.capped = true;
            break;
        }
        let u = rng.unit();
        let have = st.alive.len() as u64;
        // Only files from finished leaves are renamed as a directory, so creations never race.
        if u < p_dir && st.leaves.len() > 1 {
            let leaf = rng.below(st.leaves.len() as u64 - 1) as u32;
            let leaf = if leaf >= st.cur_leaf { leaf + 1 } else { leaf };
            let old = st.leaves[leaf as usize].rel.clone();
            let new = old.with_file_name(format!("d{:06}", st.next_leaf_name));
            st.next_leaf_name += 1;
            std::fs::rename(st.root.join(&old), st.root.join(&new))
                .with_context(|| format!("rename {}", old.display()))?;
            log(
                &mut trace,
                format_args!("dir-rename {} {}", old.display(), new.display()),
            );
            st.leaves[leaf as usize].rel = new;
            rep.dir_renames += 1;
        } else if u < p_dir + p_rw && have > 0 {
            let id = st.alive[rng.below(have) as usize];
            st.version[id as usize] += 1;
            let size = (MIN_SIZE + rng.below(MAX_SIZE - MIN_SIZE + 1)) as usize;
            let data = content.make(id, st.version[id as usize], size, &mut rng);
            write_file(&st.path(id), data).context("rewrite")?;
            rep.bytes += size as u64;
            rep.rewrites += 1;
            log(&mut trace, format_args!("rewrite {} {size}", file_name(id)));
        } else if u < p_dir + p_rw + p_rn && have > 0 {
            let old_id = st.alive[rng.below(have) as usize];
            let from = st.path(old_id);
            let leaf = st.fill_leaf()?;
            st.forget(old_id);
            let id = st.new_id(leaf, 0);
            let to = st.path(id);
            std::fs::rename(&from, &to).with_context(|| format!("rename {}", from.display()))?;
            st.named_at[id as usize] = mono_ns();
            rep.renames += 1;
            log(
                &mut trace,
                format_args!("rename {} {}", file_name(old_id), file_name(id)),
            );
        } else if u < p_dir + p_rw + p_rn + p_del && have > 0 {
            let id = st.alive[rng.below(have) as usize];
            std::fs::remove_file(st.path(id)).context("delete")?;
            st.forget(id);
            rep.deletes += 1;
            log(&mut trace, format_args!("delete {}", file_name(id)));
        } else {
            let leaf = st.fill_leaf()?;
            let id = st.new_id(leaf, 0);
            let size = (MIN_SIZE + rng.below(MAX_SIZE - MIN_SIZE + 1)) as usize;
            let data = content.make(id, 0, size, &mut rng);
            write_file(&st.path(id), data).context("create")?;
            st.named_at[id as usize] = mono_ns();
            rep.bytes += size as u64;
            rep.creates += 1;
            log(&mut trace, format_args!("create {} {size}", file_name(id)));
        }
        rep.ops += 1;
    }
    rep.t_end = mono_ns();
    if let Some(mut t) = trace {
        t.flush().context("write the trace")?;
    }
    rep.alive = st
        .alive
        .iter()
        .map(|&id| (id, st.named_at[id as usize]))
        .collect();
    rep.alive.sort_unstable();
    let json = serde_json::to_vec(&rep)?;
    std::fs::write(&a.out, json).with_context(|| format!("write {}", a.out.display()))?;
    Ok(())
}

/// Parameters of one `tree` run.
#[derive(Debug, Clone)]
pub struct TreeArgs {
    pub dir: PathBuf,
    pub files: u64,
    pub dirs: u64,
    pub seed: u64,
    /// File sizes in bytes, inclusive (default 512-4096; the huge tree uses tiny files that
    /// fit in the inode with ext4's inline_data).
    pub min_size: u64,
    pub max_size: u64,
}

/// The layout of the start-up tree, shared by `tree` (which writes it) and `live-gen` (which
/// writes into it without reading it back): `dirs` leaf directories `tNNNN/dNNNNNN` under
/// ceil(sqrt(dirs)) top directories, leaf d holding files [d*files/dirs, (d+1)*files/dirs).
#[derive(Debug, Clone, Copy)]
pub struct TreeLayout {
    pub files: u64,
    pub dirs: u64,
}

impl TreeLayout {
    pub fn new(files: u64, dirs: u64) -> TreeLayout {
        TreeLayout {
            files,
            dirs: dirs.max(1),
        }
    }

    fn per_top(&self) -> u64 {
        let tops = (self.dirs as f64).sqrt().ceil().max(1.0) as u64;
        self.dirs.div_ceil(tops)
    }

    /// The top directory (`tNNNN`) of leaf `d`.
    pub fn top(&self, d: u64) -> PathBuf {
        PathBuf::from(format!("t{:04}", d / self.per_top()))
    }

    /// Leaf `d`'s path relative to the root.
    pub fn leaf(&self, d: u64) -> PathBuf {
        self.top(d).join(format!("d{d:06}"))
    }

    /// The file ids in leaf `d`.
    pub fn files_of(&self, d: u64) -> std::ops::Range<u64> {
        d * self.files / self.dirs..(d + 1) * self.files / self.dirs
    }
}

/// Runs the `tree` subcommand: `files` small files spread over `dirs` leaf directories under
/// sqrt(dirs) top directories ([`TreeLayout`]).
pub fn run_tree(a: &TreeArgs) -> Result<()> {
    let mut rng = Rng::new(a.seed);
    let mut content = Content::new(a.seed.wrapping_add(1));
    let lay = TreeLayout::new(a.files, a.dirs);
    let dirs = lay.dirs;
    let (lo, hi) = (a.min_size.max(8), a.max_size.max(a.min_size.max(8)));
    let t0 = mono_ns();
    let mut id = 0u64;
    for d in 0..dirs {
        let leaf = a.dir.join(lay.leaf(d));
        std::fs::create_dir_all(&leaf).with_context(|| format!("mkdir {}", leaf.display()))?;
        // Spread the files evenly: leaf d gets files [d*files/dirs, (d+1)*files/dirs).
        let end = lay.files_of(d).end;
        while id < end {
            let size = (lo + rng.below(hi - lo + 1)) as usize;
            let data = content.make(id as u32, 0, size, &mut rng);
            write_file(&leaf.join(file_name(id as u32)), data).context("create")?;
            id += 1;
        }
        crate::sys::check_interrupt()?;
    }
    eprintln!(
        "tree: {} files in {} directories in {:.1} s",
        id,
        dirs,
        secs(mono_ns() - t0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        let m = Mix::parse("rewrite=5,rename=3,delete=2,dirrename=0.02").unwrap();
        assert_eq!(m.rename, 3.0);
        assert_eq!(Mix::parse("none").unwrap(), Mix::NONE);
        assert!(Mix::parse("explode=1").is_err());
        assert!(Mix::parse("rewrite=95").is_err());
    }

    #[test]
    fn generator_keeps_its_books() {
        let dir = std::env::temp_dir().join(format!("sb-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.json");
        let a = GenArgs {
            dir: dir.join("t"),
            rate: 0.0,
            ops: 3000,
            time_cap: Duration::from_secs(60),
            mix: Mix::parse("rewrite=10,rename=10,delete=10,dirrename=1").unwrap(),
            seed: 7,
            files_per_dir: 20,
            dirs_per_top: 3,
            out: out.clone(),
            trace: Some(dir.join("trace")),
        };
        std::fs::create_dir_all(&a.dir).unwrap();
        run_gen(&a).unwrap();
        let rep: GenReport = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(rep.ops, 3000);
        assert!(rep.dir_renames > 0 && rep.renames > 0 && rep.deletes > 0);
        // Exactly the files alive in the report exist on disk, each under its unique name.
        let mut on_disk = Vec::new();
        let mut stack = vec![a.dir.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let id = crate::watch::file_id(e.file_name().as_encoded_bytes()).unwrap();
                    on_disk.push(id);
                }
            }
        }
        on_disk.sort_unstable();
        let alive: Vec<u32> = rep.alive.iter().map(|x| x.0).collect();
        assert_eq!(on_disk, alive);
        assert!(rep
            .alive
            .iter()
            .all(|&(_, t)| t >= rep.t_start && t <= rep.t_end));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
