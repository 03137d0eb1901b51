//! Memory per pending path and per known directory: `cargo bench -p syncer --bench footprint`.
//!
//! Fills the structures that grow with what is pending or known, one at a time, and reports the
//! growth of the process's resident memory divided by the entries added: a dedup map holding a
//! burst of 1,000,000 pending changes (paths of a 1 M-file tree: 100,000 directories of 10
//! files), the same entries taken for transfer (in flight, as the dispatcher holds them), and
//! the fanotify resolver's cache of 100,000 directories (root only: it needs open_by_handle_at).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use syncer::change::{Change, ChangeKind};
use syncer::queue::DedupMap;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The relative path of file `i` of a tree of 100 top directories, 1000 leaves each, 10 files
/// per leaf (about the bench's 1 M-file layout).
fn path_of(i: usize) -> PathBuf {
    PathBuf::from(format!("t{:04}/d{:06}/f{i:08}", i / 10_000, i / 10))
}

fn main() {
    // The resolver first: freed memory is not always handed back, so later growth would hide.
    resolver();
    const N: usize = 1_000_000;
    let before = rss_bytes();
    let map = DedupMap::new(Duration::from_millis(50));
    let t0 = Instant::now();
    let mut chunk = Vec::with_capacity(1000);
    for i in 0..N {
        chunk.push(Change::new(path_of(i), ChangeKind::Created, false));
        if chunk.len() == 1000 {
            map.insert_all(&chunk, Instant::now());
            chunk.clear();
        }
    }
    map.insert_all(&chunk, Instant::now());
    let pending = rss_bytes() - before;
    println!(
        "dedup map: {} pending paths in {:.2?}: {:.0} bytes per pending path ({:.0} MiB)",
        map.len(),
        t0.elapsed(),
        pending as f64 / N as f64,
        pending as f64 / (1 << 20) as f64
    );
    let t1 = Instant::now();
    let later = Instant::now() + Duration::from_secs(1);
    let mut taken = Vec::with_capacity(N);
    loop {
        let got = map.take_due(later, 10_000, false);
        if got.is_empty() {
            break;
        }
        taken.extend(got);
    }
    let inflight = rss_bytes() - before;
    println!(
        "taken for transfer: {} entries in {:.2?}: {:.0} bytes per path in flight, map included",
        taken.len(),
        t1.elapsed(),
        inflight as f64 / N as f64
    );
}

#[cfg(target_os = "linux")]
fn resolver() {
    use syncer::source::fanotify::resolve::Resolver;
    use syncer::source::fanotify::sys::name_to_handle;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("resolver cache: SKIP (open_by_handle_at needs root)");
        return;
    }
    const DIRS: usize = 100_000;
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let mut handles = Vec::with_capacity(DIRS);
    for i in 0..DIRS {
        let d = root.join(format!("t{:04}/d{i:06}", i / 1000));
        std::fs::create_dir_all(&d).unwrap();
        handles.push(name_to_handle(&d).unwrap());
    }
    let mut r = Resolver::new(
        root.clone(),
        std::fs::File::open(&root).unwrap().into(),
        1 << 20,
    );
    let before = rss_bytes();
    let t0 = Instant::now();
    for h in &handles {
        r.dir(h).unwrap();
    }
    let grown = rss_bytes() - before;
    println!(
        "resolver cache: {} directories in {:.2?}: {:.0} bytes per known directory",
        r.cached(),
        t0.elapsed(),
        grown as f64 / DIRS as f64
    );
}
