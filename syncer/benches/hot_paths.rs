//! Criterion micro-benchmarks of syncer's hot paths: parsing a fanotify read buffer, resolving
//! directory handles to paths (cached and uncached; needs root for `open_by_handle_at`), and
//! the dedup map (inserting bursts of changes, taking due entries).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use syncer::change::{Change, ChangeKind};
use syncer::queue::DedupMap;
use syncer::source::fanotify::parse::{encode_event, parse};
use syncer::source::fanotify::resolve::Resolver;
use syncer::source::fanotify::sys::*;

/// A read buffer as the kernel fills it: 1000 close-write events with a directory handle and a
/// name each.
fn buffer() -> Vec<u8> {
    let mut buf = Vec::new();
    for i in 0..1000u32 {
        let name = format!("file-{i:06}.dat");
        buf.extend(encode_event(
            FAN_CLOSE_WRITE | FAN_MODIFY,
            &[
                (
                    FAN_EVENT_INFO_TYPE_DFID_NAME,
                    &[1, 2, 3, 4, 5, 6, 7, 8],
                    Some(name.as_bytes()),
                ),
                (FAN_EVENT_INFO_TYPE_FID, &i.to_ne_bytes().repeat(2), None),
            ],
        ));
    }
    buf
}

fn bench_parse(c: &mut Criterion) {
    let buf = buffer();
    let mut g = c.benchmark_group("fanotify_parse");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("1000 events", |b| {
        b.iter(|| parse(std::hint::black_box(&buf)).unwrap().len())
    });
    g.finish();
}

/// `struct file_handle` bytes of `path`, from name_to_handle_at.
fn handle_of(path: &std::path::Path) -> Vec<u8> {
    syncer::source::fanotify::sys::name_to_handle(path).expect("name_to_handle_at")
}

fn bench_resolve(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP handle resolution: open_by_handle_at needs root (CAP_DAC_READ_SEARCH)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let dirs: Vec<PathBuf> = (0..256).map(|i| root.join(format!("d{i}/sub"))).collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    let handles: Vec<Vec<u8>> = dirs.iter().map(|d| handle_of(d)).collect();
    let open_root = || std::fs::File::open(&root).unwrap().into();
    let mut g = c.benchmark_group("resolve");
    g.throughput(Throughput::Elements(handles.len() as u64));
    g.bench_function("cached", |b| {
        let mut r = Resolver::new(root.clone(), open_root(), 1 << 16);
        for h in &handles {
            r.dir(h).unwrap();
        }
        b.iter(|| handles.iter().map(|h| r.dir(h).unwrap()).count())
    });
    g.bench_function("uncached (open_by_handle_at + readlink)", |b| {
        let mut r = Resolver::new(root.clone(), open_root(), 1 << 16);
        b.iter(|| {
            r.invalidate_all();
            handles.iter().map(|h| r.dir(h).unwrap()).count()
        })
    });
    g.finish();
}

fn changes(n: usize) -> Vec<Change> {
    (0..n)
        .flat_map(|i| {
            let p = PathBuf::from(format!("d{:03}/f{i:06}", i % 100));
            [
                Change::new(&p, ChangeKind::Created, false),
                Change::new(&p, ChangeKind::Modified, false),
                Change::new(p.parent().unwrap(), ChangeKind::Modified, true),
            ]
        })
        .collect()
}

fn bench_dedup(c: &mut Criterion) {
    let burst = changes(10_000);
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(burst.len() as u64));
    g.bench_function("insert 30k changes (10k files)", |b| {
        b.iter_batched(
            || DedupMap::new(Duration::from_millis(50)),
            |m| {
                m.insert_all(&burst, Instant::now());
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("insert + take_due + complete", |b| {
        b.iter_batched(
            || DedupMap::new(Duration::from_millis(50)),
            |m| {
                let t0 = Instant::now();
                m.insert_all(&burst, t0);
                let later = t0 + Duration::from_secs(1);
                loop {
                    let got = m.take_due(later, 2000, false);
                    if got.is_empty() {
                        break;
                    }
                    for t in got {
                        m.complete(&t.path, None);
                    }
                }
                assert!(m.is_empty());
                m
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench_parse, bench_resolve, bench_dedup);
criterion_main!(benches);
