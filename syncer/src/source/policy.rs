//! Which source to open: the one policy behind `--source-kind auto`, used both to start the
//! daemon and by `syncer check` to say what `auto` would pick.
//!
//! `auto` tries, best first: the eBPF VFS-level hooks (they see what fanotify sees, nfsd
//! included, and filter and coalesce in the kernel), fanotify (needs no BPF), the eBPF syscall
//! tracepoints (miss in-kernel writers but need no file-handle support from the filesystem),
//! inotify (a watch per directory). `ebpf_hooks` narrows which eBPF candidates take part.
//!
//! Where an in-kernel file server (nfsd, ksmbd: [`super::servers`]) serves the source, the
//! tracepoints come last, after inotify: they would miss every change its clients make. A
//! source that misses them anyway (chosen explicitly, the eBPF source falling back, or `auto`
//! left with nothing else) is announced as an error at start.

use std::sync::Arc;

use tracing::{error, info};

use super::servers::KernelServers;
use super::SourceStats;
use super::{ebpf, fanotify, inotify, EbpfHooks, Source, SourceConfig, SourceError, SourceKind};

/// One way of watching the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    Fanotify,
    Inotify,
    /// The eBPF source with these hooks (`Auto`: VFS-level where allowed, else tracepoints).
    Ebpf(EbpfHooks),
}

impl Candidate {
    pub fn kind(self) -> SourceKind {
        match self {
            Candidate::Fanotify => SourceKind::Fanotify,
            Candidate::Inotify => SourceKind::Inotify,
            Candidate::Ebpf(_) => SourceKind::Ebpf,
        }
    }

    /// The name of the reader thread.
    pub fn thread_name(self) -> &'static str {
        match self {
            Candidate::Fanotify => "fanotify",
            Candidate::Inotify => "inotify",
            Candidate::Ebpf(_) => "ebpf",
        }
    }
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Candidate::Fanotify => "fanotify",
            Candidate::Inotify => "inotify",
            Candidate::Ebpf(EbpfHooks::Fsnotify) => "ebpf (VFS-level hooks)",
            Candidate::Ebpf(EbpfHooks::Tracepoints) => "ebpf (syscall tracepoints)",
            Candidate::Ebpf(EbpfHooks::Auto) => "ebpf",
        })
    }
}

/// The candidates for `kind`, best first.
pub fn candidates(kind: SourceKind, hooks: EbpfHooks) -> Vec<Candidate> {
    match kind {
        SourceKind::Fanotify => vec![Candidate::Fanotify],
        SourceKind::Inotify => vec![Candidate::Inotify],
        SourceKind::Ebpf => vec![Candidate::Ebpf(hooks)],
        SourceKind::Auto => {
            let mut v = Vec::with_capacity(4);
            if hooks != EbpfHooks::Tracepoints {
                v.push(Candidate::Ebpf(EbpfHooks::Fsnotify));
            }
            v.push(Candidate::Fanotify);
            if hooks != EbpfHooks::Fsnotify {
                v.push(Candidate::Ebpf(EbpfHooks::Tracepoints));
            }
            v.push(Candidate::Inotify);
            v
        }
    }
}

/// [`candidates`] on a host where an in-kernel file server serves the source (`served`): under
/// `auto`, the syscall tracepoints, which cannot see its writes, move behind inotify.
pub fn candidates_served(kind: SourceKind, hooks: EbpfHooks, served: bool) -> Vec<Candidate> {
    let mut v = candidates(kind, hooks);
    let tracepoints = Candidate::Ebpf(EbpfHooks::Tracepoints);
    if served && kind == SourceKind::Auto {
        if let Some(i) = v.iter().position(|&c| c == tracepoints) {
            v.remove(i);
            v.push(tracepoints);
        }
    }
    v
}

/// Candidates that were tried and refused, with why.
pub type Refused<E> = Vec<(Candidate, E)>;

/// The first candidate `attempt` accepts, with what it gave and the refusals before it; or
/// every candidate's refusal.
pub fn choose<T, E>(
    candidates: &[Candidate],
    mut attempt: impl FnMut(Candidate) -> Result<T, E>,
) -> Result<(Candidate, T, Refused<E>), Refused<E>> {
    let mut refused = Vec::new();
    for &c in candidates {
        match attempt(c) {
            Ok(t) => return Ok((c, t, refused)),
            Err(e) => refused.push((c, e)),
        }
    }
    Err(refused)
}

/// Opens the source of `kind` on `cfg.root`; `kept`: a fanotify group handed over (see
/// [`super::open`]), which puts fanotify first under `auto`.
pub fn open(
    kind: SourceKind,
    cfg: &SourceConfig,
    stats: &Arc<SourceStats>,
    kept: Option<std::os::fd::OwnedFd>,
) -> Result<(Candidate, Box<dyn Source>), SourceError> {
    let servers = KernelServers::probe(&cfg.root);
    let mut list = candidates_served(kind, cfg.ebpf_hooks, servers.serve());
    if kept.is_some() && kind == SourceKind::Auto {
        list.retain(|&c| c != Candidate::Fanotify);
        list.insert(0, Candidate::Fanotify);
    }
    let mut kept = kept;
    let opened = choose(&list, |c| open_one(c, cfg, stats, &mut kept));
    match opened {
        Ok((c, source, refused)) => {
            let why: Vec<String> = refused.iter().map(|(c, e)| format!("{c}: {e}")).collect();
            if !refused.is_empty() {
                info!("auto: using {c} ({})", why.join("; "));
            }
            if let (false, Some(server)) = (source.sees_in_kernel_writers(), servers.describe()) {
                let because = if kind == SourceKind::Auto {
                    format!("auto had nothing else: {}", why.join("; "))
                } else {
                    format!("--source-kind {kind:?} (ebpf_hooks {:?})", cfg.ebpf_hooks)
                        .to_lowercase()
                };
                error!(
                    root = %cfg.root.display(),
                    "{server}, but the event source is the eBPF syscall tracepoints ({because}): \
                     they cannot see the server's writes, so changes made by its clients will NOT \
                     be replicated until a rescan; use --source-kind fanotify (or inotify), or a \
                     kernel that allows fentry programs"
                );
            }
            Ok((c, source))
        }
        Err(mut refused) if refused.len() == 1 => Err(refused.remove(0).1),
        Err(refused) => {
            let why: Vec<String> = refused.iter().map(|(c, e)| format!("{c}: {e}")).collect();
            Err(SourceError::Unsupported {
                kind: "any event source",
                why: why.join("; "),
            })
        }
    }
}

fn open_one(
    c: Candidate,
    cfg: &SourceConfig,
    stats: &Arc<SourceStats>,
    kept: &mut Option<std::os::fd::OwnedFd>,
) -> Result<Box<dyn Source>, SourceError> {
    Ok(match c {
        Candidate::Fanotify => Box::new(fanotify::open_source(cfg, stats.clone(), kept.take())?),
        Candidate::Inotify => Box::new(inotify::open_source(cfg, stats.clone())?),
        Candidate::Ebpf(hooks) => Box::new(ebpf::open_source(cfg, hooks, stats.clone())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Candidate::*;
    use EbpfHooks as H;

    #[test]
    fn candidates_best_first() {
        #[rustfmt::skip]
        // kind, ebpf_hooks, an in-kernel server serves the source, the candidates.
        let table: &[(SourceKind, EbpfHooks, bool, &[Candidate])] = &[
            (SourceKind::Auto, H::Auto, false, &[Ebpf(H::Fsnotify), Fanotify, Ebpf(H::Tracepoints), Inotify]),
            (SourceKind::Auto, H::Fsnotify, false, &[Ebpf(H::Fsnotify), Fanotify, Inotify]),
            (SourceKind::Auto, H::Tracepoints, false, &[Fanotify, Ebpf(H::Tracepoints), Inotify]),
            // Serving NFS: the tracepoints only when nothing else works, not even inotify.
            (SourceKind::Auto, H::Auto, true, &[Ebpf(H::Fsnotify), Fanotify, Inotify, Ebpf(H::Tracepoints)]),
            (SourceKind::Auto, H::Tracepoints, true, &[Fanotify, Inotify, Ebpf(H::Tracepoints)]),
            (SourceKind::Auto, H::Fsnotify, true, &[Ebpf(H::Fsnotify), Fanotify, Inotify]),
            // An explicit kind is what the operator asked for (announced as an error at start).
            (SourceKind::Ebpf, H::Auto, false, &[Ebpf(H::Auto)]),
            (SourceKind::Ebpf, H::Tracepoints, false, &[Ebpf(H::Tracepoints)]),
            (SourceKind::Ebpf, H::Tracepoints, true, &[Ebpf(H::Tracepoints)]),
            (SourceKind::Fanotify, H::Fsnotify, false, &[Fanotify]),
            (SourceKind::Inotify, H::Auto, true, &[Inotify]),
        ];
        for (kind, hooks, served, want) in table {
            assert_eq!(
                candidates_served(*kind, *hooks, *served),
                *want,
                "{kind:?} {hooks:?} served: {served}"
            );
        }
    }

    #[test]
    fn choose_takes_the_first_that_works() {
        let all = candidates(SourceKind::Auto, H::Auto);
        let (c, n, refused) = choose(&all, |c| {
            if c == Fanotify {
                Ok(1)
            } else {
                Err(c.to_string())
            }
        })
        .unwrap();
        assert_eq!((c, n), (Fanotify, 1));
        assert_eq!(
            refused,
            [(Ebpf(H::Fsnotify), "ebpf (VFS-level hooks)".to_string())]
        );
        let none = choose(&all, Err::<(), _>).unwrap_err();
        assert_eq!(none.len(), 4);
    }
}
