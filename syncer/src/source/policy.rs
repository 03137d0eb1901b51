//! Which source to open: the one policy behind `--source-kind auto`, used both to start the
//! daemon and by `syncer check` to say what `auto` would pick.
//!
//! `auto` tries, best first: the eBPF VFS-level hooks (they see what fanotify sees, nfsd
//! included, and filter and coalesce in the kernel), fanotify (needs no BPF), the eBPF syscall
//! tracepoints (miss in-kernel writers but need no file-handle support from the filesystem),
//! inotify (a watch per directory). `ebpf_hooks` narrows which eBPF candidates take part.

use std::sync::Arc;

use tracing::info;

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
    let mut list = candidates(kind, cfg.ebpf_hooks);
    if kept.is_some() && kind == SourceKind::Auto {
        list.retain(|&c| c != Candidate::Fanotify);
        list.insert(0, Candidate::Fanotify);
    }
    let mut kept = kept;
    let opened = choose(&list, |c| open_one(c, cfg, stats, &mut kept));
    match opened {
        Ok((c, source, refused)) => {
            if !refused.is_empty() {
                let why: Vec<String> = refused.iter().map(|(c, e)| format!("{c}: {e}")).collect();
                info!("auto: using {c} ({})", why.join("; "));
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
        let table: &[(SourceKind, EbpfHooks, &[Candidate])] = &[
            (SourceKind::Auto, H::Auto, &[Ebpf(H::Fsnotify), Fanotify, Ebpf(H::Tracepoints), Inotify]),
            (SourceKind::Auto, H::Fsnotify, &[Ebpf(H::Fsnotify), Fanotify, Inotify]),
            (SourceKind::Auto, H::Tracepoints, &[Fanotify, Ebpf(H::Tracepoints), Inotify]),
            (SourceKind::Ebpf, H::Auto, &[Ebpf(H::Auto)]),
            (SourceKind::Ebpf, H::Tracepoints, &[Ebpf(H::Tracepoints)]),
            (SourceKind::Fanotify, H::Fsnotify, &[Fanotify]),
            (SourceKind::Inotify, H::Auto, &[Inotify]),
        ];
        for (kind, hooks, want) in table {
            assert_eq!(candidates(*kind, *hooks), *want, "{kind:?} {hooks:?}");
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
