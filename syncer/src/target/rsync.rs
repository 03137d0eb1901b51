//! The rsync transport: how one batch becomes one rsync invocation, and what rsync's exit code
//! means.
//!
//! Every call is `rsync -a --from0 --files-from=- ... SOURCE/ DEST/` fed a NUL-separated list of
//! paths relative to the source root on stdin, so that any byte may appear in a name.
//! `--files-from` implies `--relative`, and rsync also sends the implied parent directories with
//! their attributes, which keeps directory modes and mtimes right on the target.
//! `--delete-missing-args` turns a listed path that no longer exists into a deletion on the
//! target, and `--force` lets that deletion remove a non-empty directory (without it rsync only
//! warns and still exits 0). Plain batches use `--ignore-times` (see [`args`]).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Invocation, Target, Transport};
use crate::change::{Change, ChangeKind};

/// How rsync is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncOptions {
    /// The rsync binary.
    pub program: PathBuf,
    /// Extra arguments appended to every call (e.g. `-H`, `-A`, `-X`, `--bwlimit=...`).
    pub extra_args: Vec<String>,
    /// rsync's I/O `--timeout` in seconds.
    pub io_timeout_s: u32,
}

/// rsync to a daemon, over ssh or to a local directory: the one transport of today.
#[derive(Debug, Clone)]
pub struct Rsync {
    source: PathBuf,
    target: Target,
    opts: RsyncOptions,
}

impl Rsync {
    pub fn new(source: &Path, target: &Target, opts: &RsyncOptions) -> Rsync {
        Rsync {
            source: source.to_path_buf(),
            target: target.clone(),
            opts: opts.clone(),
        }
    }
}

impl Transport for Rsync {
    fn sync(&self, kind: BatchKind, paths: &[&Path]) -> Invocation {
        let mut stdin = Vec::with_capacity(paths.len() * 32);
        for p in paths {
            push_entry(&mut stdin, p, kind);
        }
        if kind == BatchKind::Plain && touches_root_entries(paths) {
            push_entry(&mut stdin, Path::new(""), kind);
        }
        Invocation {
            program: self.opts.program.clone(),
            args: args(&self.opts, kind, &self.source, &self.target),
            stdin,
        }
    }

    fn outcome(&self, code: Option<i32>) -> Outcome {
        Outcome::from_exit(code)
    }

    fn probe_addr(&self) -> Option<(String, u16)> {
        self.target.probe_addr()
    }

    fn check(&self) -> Option<Invocation> {
        Some(Invocation {
            program: self.opts.program.clone(),
            args: check_args(&self.opts, &self.source, &self.target),
            stdin: Vec::new(),
        })
    }

    fn drift(&self, out: &[u8]) -> Vec<Change> {
        drift(out)
    }

    fn run_stats(&self, out: &[u8]) -> RunStats {
        run_stats(out)
    }

    fn reach(&self) -> Option<Invocation> {
        if matches!(self.target.kind, super::TargetKind::Local(_)) {
            return None;
        }
        Some(Invocation {
            program: self.opts.program.clone(),
            args: reach_args(&self.opts, &self.target),
            stdin: Vec::new(),
        })
    }
}

/// The argument vector of [`Transport::reach`]: a listing of the target's top directory
/// alone (`.`, its entries excluded), with the same connection, password and extra
/// arguments as every transfer.
pub fn reach_args(opts: &RsyncOptions, target: &Target) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["--list-only", "--dirs", "--exclude=*"]
        .iter()
        .map(OsString::from)
        .collect();
    connection(&mut a, opts, target);
    a.push(target.rsync_dest().into());
    a
}

/// rsync's reason, for the log: its first specific complaint (`@ERROR: ...`, `rsync: ...`:
/// the cause, where later ones are consequences such as a broken pipe) rather than the
/// summary line (`rsync error: ... (code 23)`), else the last line.
pub fn reason(stderr: &str) -> &str {
    let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| {
            l.starts_with("@ERROR") || (l.starts_with("rsync: ") && !l.starts_with("rsync error:"))
        })
        .or_else(|| lines().next_back())
        .unwrap_or("(no message)")
}

/// Whether rsync's message says it could not reach the target at all (rather than being
/// turned away by it): then a TCP probe tells when it is back.
pub fn unreachable(stderr: &str) -> bool {
    [
        "failed to connect",
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "Network is unreachable",
        "Name or service not known",
        "Temporary failure in name resolution",
        "Connection reset by peer",
        "connection unexpectedly closed",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Why the target turned syncer away, when rsync's message says so: a configuration to fix
/// (a password, a module name, a key), not an outage. `None`: not a refusal.
pub fn refusal(stderr: &str) -> Option<&'static str> {
    [
        (
            "auth failed",
            "authentication failed (the password file's password or user)",
        ),
        ("Unknown module", "the daemon has no such module"),
        ("password file must", "rsync refuses the password file"),
        ("ERROR: password file", "rsync refuses the password file"),
        (
            "Host key verification failed",
            "the ssh host key is not known or has changed",
        ),
        ("Permission denied (publickey", "ssh authentication failed"),
        ("access denied", "the daemon denies this host"),
    ]
    .iter()
    .find(|(m, _)| stderr.contains(m))
    .map(|(_, why)| *why)
}

/// Whether a plain batch writes entries directly in the source root. rsync writes a file by
/// renaming a temporary file into place, which moves the mtime of the target's directory;
/// it restores the mtimes of the directories in its file list at the end, and `--relative`
/// puts every parent directory of a listed path in that list, except the root itself. So the
/// root goes in explicitly.
fn touches_root_entries(paths: &[&Path]) -> bool {
    let mut root_listed = false;
    let mut root_child = false;
    for p in paths {
        match p.parent() {
            None => root_listed = true,
            Some(p) if p.as_os_str().is_empty() => root_child = true,
            Some(_) => {}
        }
    }
    root_child && !root_listed
}

/// Which kind of rsync call a batch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchKind {
    /// Entries without recursion: files, symlinks, a directory's own attributes, deletions.
    Plain,
    /// Whole subtrees, with deletion of extraneous files.
    Tree,
    /// Directories with their immediate entries, with deletion of extraneous entries.
    Shallow,
}

/// The argument vector (without the program) for a batch of `kind` from `source` to `target`.
pub fn args(opts: &RsyncOptions, kind: BatchKind, source: &Path, target: &Target) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "-a",
        "--numeric-ids",
        "--from0",
        "--files-from=-",
        "--delete-missing-args",
        "--force",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    // rsync compares mtimes in whole seconds by default, also when it decides whether to set a
    // directory's mtime: a directory created on the target in the same second as on the source
    // would keep its own nanoseconds. Compare nanoseconds everywhere.
    a.push("--modify-window=-1".into());
    match kind {
        // These paths are known to have changed: rsync's quick check (size + mtime) must not
        // skip them. File timestamps are coarse (one clock tick), so a same-size rewrite
        // within one tick, or a rewrite while a previous rsync was reading the file, would
        // otherwise leave the target with stale bytes or a stale mtime.
        BatchKind::Plain => a.push("--ignore-times".into()),
        // Whole subtrees are mostly unchanged: keep the (nanosecond) quick check.
        BatchKind::Tree => {
            a.push("-r".into());
            a.push("--delete".into());
        }
        BatchKind::Shallow => {
            a.push("-d".into());
            a.push("--delete".into());
        }
    }
    skip_silly_renames(&mut a);
    // The totals at the end, for the byte and file counters (plain digits, whatever the
    // locale; the operator's own arguments come later and may override it).
    a.push("--info=stats2".into());
    a.push("--no-human-readable".into());
    connection_and_ends(&mut a, opts, source, target);
    a
}

/// What one rsync run reports of itself (`--info=stats2`); zero where it said nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Entries rsync looked at ("Number of files").
    pub files_seen: u64,
    /// Regular files whose contents it sent ("Number of regular files transferred").
    pub files_sent: u64,
    /// Their size ("Total transferred file size").
    pub file_bytes: u64,
    /// Bytes on the wire, after delta encoding ("Total bytes sent").
    pub bytes_sent: u64,
}

/// Reads [`RunStats`] from the end of rsync's standard output. Numbers may carry digit
/// separators (`1,234`); a number printed with units (`-h`) is not counted.
pub fn run_stats(out: &[u8]) -> RunStats {
    let text = String::from_utf8_lossy(out);
    let mut s = RunStats::default();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(": ") else {
            continue;
        };
        let field = match key.trim() {
            "Number of files" => &mut s.files_seen,
            "Number of regular files transferred" => &mut s.files_sent,
            "Total transferred file size" => &mut s.file_bytes,
            "Total bytes sent" => &mut s.bytes_sent,
            _ => continue,
        };
        let word = rest.split_whitespace().next().unwrap_or_default();
        if let Ok(n) = word.replace([',', '.', '\''], "").parse::<u64>() {
            *field = n;
        }
    }
    s
}

/// What every transfer ends with: [`connection`], then `SOURCE/ DEST`.
fn connection_and_ends(a: &mut Vec<OsString>, opts: &RsyncOptions, source: &Path, target: &Target) {
    connection(a, opts, target);
    let mut src = source.as_os_str().to_os_string();
    src.push("/");
    a.push(src);
    a.push(target.rsync_dest().into());
}

/// The remote shell of an ssh target: ssh that never prompts (a service has nobody to type
/// a password or accept a host key: it fails at once, and the failure says why), gives up on
/// a host that does not answer within 10 s, then the operator's `ssh_options`. Arguments are
/// quoted the way rsync splits `-e` (spaces kept inside single or double quotes).
pub fn ssh_command(options: &[String]) -> String {
    let mut cmd = String::from("ssh -o BatchMode=yes -o ConnectTimeout=10");
    for o in options {
        cmd.push(' ');
        if o.is_empty() || o.contains([' ', '\'', '"']) {
            let q = if o.contains('\'') { '"' } else { '\'' };
            cmd.push(q);
            cmd.push_str(o);
            cmd.push(q);
        } else {
            cmd.push_str(o);
        }
    }
    cmd
}

/// How every rsync call reaches the target: the I/O timeout, the daemon's socket options,
/// the password file, ssh's command, the operator's extra arguments (an `-e` among them wins).
fn connection(a: &mut Vec<OsString>, opts: &RsyncOptions, target: &Target) {
    a.push(format!("--timeout={}", opts.io_timeout_s).into());
    if matches!(target.kind, super::TargetKind::Ssh { .. }) {
        a.push("-e".into());
        a.push(ssh_command(&target.ssh_options).into());
    }
    if target.is_daemon() {
        // Without TCP_NODELAY the client waits on delayed ACKs several times per session.
        a.push("--sockopts=TCP_NODELAY".into());
        a.push("--contimeout=10".into());
    }
    if let Some(pw) = &target.password_file {
        let mut o = OsString::from("--password-file=");
        o.push(pw);
        a.push(o);
    }
    a.extend(opts.extra_args.iter().map(OsString::from));
}

/// The argument vector of the contents check: a dry run of the whole tree with `--checksum`
/// (every file read on both hosts) and `--delete`, itemizing what would change, one line each.
pub fn check_args(opts: &RsyncOptions, source: &Path, target: &Target) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "-a",
        "--numeric-ids",
        "-r",
        "--delete",
        "--force",
        "--checksum",
        "--dry-run",
        "--modify-window=-1",
        "--out-format=%i %n",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    skip_silly_renames(&mut a);
    connection_and_ends(&mut a, opts, source, target);
    a
}

/// Excludes NFS silly-renames (`.nfs` and 24 hex digits, [`crate::change::is_silly_rename`])
/// from a transfer: never sent, and (being excluded) never deleted on the target either.
fn skip_silly_renames(a: &mut Vec<OsString>) {
    let mut pattern = String::from("--exclude=.nfs");
    for _ in 0..crate::change::SILLY_RENAME_HEX {
        pattern.push_str("[0-9a-fA-F]");
    }
    a.push(pattern.into());
}

/// The changes that make the target match the source, from the output of [`check_args`]:
/// `*deleting   name` is a removal, any other item (`>fc........ name`, `.d..t...... dir/`,
/// `cL+++++++++ link`) an entry to send. Names come escaped (`\#ooo` for a byte rsync will
/// not print); a directory's ends with `/`, the root is `./`. Lines that are not items are
/// skipped.
pub fn drift(out: &[u8]) -> Vec<Change> {
    let mut v = Vec::new();
    for line in out.split(|&b| b == b'\n') {
        // An item is 11 characters, a space, the name.
        if line.len() < 13 || line[11] != b' ' {
            continue;
        }
        let (item, name) = (&line[..11], unescape(&line[12..]));
        let dir = name.ends_with(b"/");
        let name = name.strip_suffix(b"/").unwrap_or(&name);
        let name: &[u8] = if name == b"." { b"" } else { name };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(name));
        if item.starts_with(b"*deleting") {
            v.push(Change::new(path, ChangeKind::Removed, dir));
        } else if matches!(item[0], b'<' | b'>' | b'c' | b'h' | b'.')
            && matches!(item[1], b'f' | b'd' | b'L' | b'D' | b'S')
        {
            v.push(Change::new(path, ChangeKind::Modified, item[1] == b'd'));
        }
    }
    v
}

/// rsync's escapes in printed names: `\#` and three octal digits for one byte.
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let oct = s
            .get(i + 2..i + 5)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (s[i], s.get(i + 1), oct) {
            (b'\\', Some(b'#'), Some(d)) => {
                let n = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                out.push(n as u8);
                i += 5;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Appends one path to a `--from0` list. The source root is written as `.`; a `Shallow` entry
/// gets a trailing `/` so that rsync sends its immediate contents; a name that rsync would take
/// for a comment gets a `./` in front.
pub fn push_entry(list: &mut Vec<u8>, path: &Path, kind: BatchKind) {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        list.push(b'.');
    } else {
        // rsync reads a --files-from line starting with '#' or ';' as a comment, even with
        // --from0: such names are written as "./#name".
        if matches!(bytes[0], b'#' | b';') {
            list.extend_from_slice(b"./");
        }
        list.extend_from_slice(bytes);
    }
    if kind == BatchKind::Shallow {
        list.push(b'/');
    }
    list.push(0);
}

/// What an rsync exit status means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything listed is on the target.
    Done,
    /// Some files vanished while being sent (exit 24): their removal events follow, so the
    /// batch counts as done.
    Vanished,
    /// Some files could not be transferred (exit 23, 25): retry the batch, in smaller pieces.
    Partial,
    /// The target could not be reached or the connection broke: the target is down; retry the
    /// same batch once it is back.
    TargetDown,
    /// rsync refused the call (usage, protocol, unsupported option) or could not run: retried
    /// with the partial-failure backoff (2 s doubling to 60 s), logged as an error.
    Fatal,
}

impl Outcome {
    /// Classifies an exit code (None: killed by a signal).
    pub fn from_exit(code: Option<i32>) -> Outcome {
        match code {
            Some(0) => Outcome::Done,
            Some(24) => Outcome::Vanished,
            Some(23 | 25) => Outcome::Partial,
            // 5: error starting client-server protocol (includes "unknown module" and auth),
            // 10: socket I/O, 11: file I/O, 12: protocol data stream, 14: IPC, 20: signal,
            // 21: waitpid, 22: memory, 30: timeout, 35: connect timeout, 255: ssh failed.
            Some(5 | 10 | 11 | 12 | 14 | 20 | 21 | 22 | 30 | 35 | 255) | None => {
                Outcome::TargetDown
            }
            // 1: syntax, 2: protocol incompatibility, 3: file selection errors, 4: unsupported
            // action, 6: daemon unable to append to log, 13: program diagnostics.
            Some(_) => Outcome::Fatal,
        }
    }

    pub fn succeeded(self) -> bool {
        matches!(self, Outcome::Done | Outcome::Vanished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let table = [
            (Some(0), Outcome::Done),
            (Some(24), Outcome::Vanished),
            (Some(23), Outcome::Partial),
            (Some(10), Outcome::TargetDown),
            (Some(5), Outcome::TargetDown),
            (Some(255), Outcome::TargetDown),
            (None, Outcome::TargetDown),
            (Some(1), Outcome::Fatal),
            (Some(2), Outcome::Fatal),
        ];
        for (code, want) in table {
            assert_eq!(Outcome::from_exit(code), want, "{code:?}");
        }
    }

    #[test]
    fn lists_are_nul_separated_and_root_is_dot() {
        let mut l = Vec::new();
        push_entry(&mut l, Path::new(""), BatchKind::Plain);
        push_entry(&mut l, Path::new("a\nb"), BatchKind::Plain);
        push_entry(&mut l, Path::new("d"), BatchKind::Shallow);
        push_entry(&mut l, Path::new("#x"), BatchKind::Plain);
        push_entry(&mut l, Path::new(";y/#z"), BatchKind::Plain);
        assert_eq!(l, b".\0a\nb\0d/\0./#x\0./;y/#z\0");
    }

    #[test]
    fn daemon_targets_get_nodelay_and_password() {
        let opts = RsyncOptions {
            program: PathBuf::from("rsync"),
            extra_args: vec!["-H".into()],
            io_timeout_s: 60,
        };
        let t = Target::parse("rsync://h:1/m", Some(Path::new("/pw"))).unwrap();
        let a = args(&opts, BatchKind::Tree, Path::new("/src"), &t);
        let s: Vec<_> = a.iter().map(|x| x.to_string_lossy().into_owned()).collect();
        for want in [
            "-r",
            "--delete",
            "--sockopts=TCP_NODELAY",
            "--password-file=/pw",
            "-H",
            "/src/",
            "rsync://h:1/m/",
        ] {
            assert!(s.iter().any(|x| x == want), "{want} missing from {s:?}");
        }
        assert_eq!(s.last().unwrap(), "rsync://h:1/m/");
        assert!(s.iter().any(|x| x == "--modify-window=-1"));
        let plain = args(&opts, BatchKind::Plain, Path::new("/src"), &t);
        assert!(
            plain.iter().any(|x| x == "--ignore-times"),
            "changed files must not be quick-checked"
        );
        assert!(!plain.iter().any(|x| x == "-r" || x == "--delete"));
    }

    #[test]
    fn ssh_commands() {
        let base = "ssh -o BatchMode=yes -o ConnectTimeout=10";
        #[rustfmt::skip]
        let table: &[(&[&str], &str)] = &[
            (&[], ""),
            (&["-p", "2222", "-i", "/etc/syncer/id"], " -p 2222 -i /etc/syncer/id"),
            (&["-o", "ProxyCommand=ssh -W %h:%p bastion"], " -o 'ProxyCommand=ssh -W %h:%p bastion'"),
            (&["-o", "x='a b'"], " -o \"x='a b'\""),
            (&[""], " ''"),
        ];
        for (opts, tail) in table {
            let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
            assert_eq!(ssh_command(&opts), format!("{base}{tail}"), "{opts:?}");
        }
    }

    #[test]
    fn run_stats_from_rsync_output() {
        let full =
            "\nNumber of files: 3 (reg: 2, dir: 1)\nNumber of created files: 3 (reg: 2, dir: 1)\n\
Number of deleted files: 0\nNumber of regular files transferred: 2\nTotal file size: 11 bytes\n\
Total transferred file size: 11 bytes\nLiteral data: 11 bytes\nMatched data: 0 bytes\n\
File list size: 0\nTotal bytes sent: 185\nTotal bytes received: 57\n\n\
sent 185 bytes  received 57 bytes  484.00 bytes/sec\ntotal size is 11  speedup is 0.05\n";
        #[rustfmt::skip]
        let table: &[(&str, RunStats)] = &[
            (full, RunStats { files_seen: 3, files_sent: 2, file_bytes: 11, bytes_sent: 185 }),
            // Digit separators (rsync's default human-readable level 1).
            ("Number of files: 1,234,567 (reg: 1,000,000)\nTotal bytes sent: 9,876,543\n",
             RunStats { files_seen: 1_234_567, bytes_sent: 9_876_543, ..RunStats::default() }),
            // Units (-h given by the operator): not a count; the others still are.
            ("Number of regular files transferred: 4\nTotal bytes sent: 1.23K\n",
             RunStats { files_sent: 4, ..RunStats::default() }),
            // Nothing (rsync failed before the totals, or -q).
            ("rsync: [sender] change_dir failed\n", RunStats::default()),
            ("", RunStats::default()),
        ];
        for (out, want) in table {
            assert_eq!(run_stats(out.as_bytes()), *want, "{out:?}");
        }
    }

    #[test]
    fn drift_from_itemized_output() {
        // Real output of the check (rsync 3.2+), and what each line asks for.
        let out = b"*deleting   xd/y/z\n*deleting   xd/\n.d..t...... ./\n.L..t...... l\n\
                    >fc........ d1/g\n>fc........ d1/new\\#012line\n>f+++++++++ d1/back\\slash #1\n\
                    .d..tp..... d2/\ncd+++++++++ nd/\nskipping non-regular file \"x\"\n\n";
        let got: Vec<(String, ChangeKind, bool)> = drift(out)
            .into_iter()
            .map(|c| (c.path.to_string_lossy().into_owned(), c.kind, c.is_dir))
            .collect();
        use ChangeKind::*;
        #[rustfmt::skip]
        let want: Vec<(String, ChangeKind, bool)> = [
            ("xd/y/z", Removed, false), ("xd", Removed, true), ("", Modified, true),
            ("l", Modified, false), ("d1/g", Modified, false), ("d1/new\nline", Modified, false),
            ("d1/back\\slash #1", Modified, false), ("d2", Modified, true), ("nd", Modified, true),
        ]
        .iter()
        .map(|(p, k, d)| (p.to_string(), *k, *d))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_check_is_a_dry_run_comparing_contents() {
        let opts = RsyncOptions {
            program: PathBuf::from("rsync"),
            extra_args: vec![],
            io_timeout_s: 60,
        };
        let t = Target::parse("/dst", None).unwrap();
        let a = check_args(&opts, Path::new("/src"), &t);
        for want in [
            "--checksum",
            "--dry-run",
            "--delete",
            "-r",
            "--out-format=%i %n",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(!a.iter().any(|x| x == "--files-from=-"));
    }

    #[test]
    fn every_transfer_skips_nfs_silly_renames() {
        let opts = RsyncOptions {
            program: PathBuf::from("rsync"),
            extra_args: vec![],
            io_timeout_s: 60,
        };
        let t = Target::parse("rsync://h/m", None).unwrap();
        let want = format!("--exclude=.nfs{}", "[0-9a-fA-F]".repeat(24));
        let src = Path::new("/src");
        for a in [
            args(&opts, BatchKind::Plain, src, &t),
            args(&opts, BatchKind::Tree, src, &t),
            args(&opts, BatchKind::Shallow, src, &t),
            check_args(&opts, src, &t),
        ] {
            let at = a.iter().position(|x| x == want.as_str());
            let ends = a.iter().position(|x| x == "/src/");
            assert!(
                at.is_some() && at < ends,
                "{want} missing before the ends: {a:?}"
            );
        }
    }
}
