//! Scenario 8, bad input (data-driven tables): a missing source directory, bad flags and missing
//! required ones (exit 2 naming the flag), unreadable and invalid config files (exit 2 naming the
//! file and, when there is one, the line); and running without root: `--source-kind fanotify`
//! must fail with a hint to use `--source-kind inotify`, while inotify works unprivileged.
//! (An unreachable target at start is in `outage.rs`.)

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long a rejected invocation may take to exit.
const REJECT_TIMEOUT: Duration = Duration::from_secs(30);

/// One invocation that must fail.
struct Case {
    name: &'static str,
    args: Vec<OsString>,
    /// The exit code, or `None` for "any non-zero".
    code: Option<i32>,
    /// Substrings stderr must contain.
    mentions: Vec<String>,
}

/// Runs every case (all at once, each may take up to [`REJECT_TIMEOUT`]) and reports all
/// mismatches together.
fn check_cases(cases: Vec<Case>) {
    let running: Vec<Syncer> = cases.iter().map(|c| Syncer::spawn(&c.args)).collect();
    let deadline = Instant::now() + REJECT_TIMEOUT;
    let mut failures = Vec::new();
    for (case, syncer) in cases.iter().zip(running) {
        let done = match syncer.try_finish(deadline.saturating_duration_since(Instant::now())) {
            Ok(done) => done,
            Err(e) => {
                let tail = e.split_once('\n').map_or("", |(_, tail)| tail);
                failures.push(format!(
                    "{}: still running {REJECT_TIMEOUT:?} after it started (the input was \
                     accepted?)\n{tail}",
                    case.name
                ));
                continue;
            }
        };
        let mut problems = Vec::new();
        let code_ok = match case.code {
            Some(code) => done.code() == Some(code),
            None => !done.status.success(),
        };
        if !code_ok {
            let expected = case.code.map_or("non-zero".to_string(), |c| c.to_string());
            problems.push(format!("exit code {:?}, expected {expected}", done.code()));
        }
        for m in &case.mentions {
            if !done.stderr.contains(m.as_str()) {
                problems.push(format!("stderr does not mention {m:?}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {:?}",
                case.name,
                problems.join("; "),
                done.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs were not handled as specified:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Splits `template` at whitespace and replaces each `{name}` by its path (temp paths have no
/// spaces).
fn words(template: &str, vars: &[(&str, &Path)]) -> Vec<OsString> {
    template
        .split_whitespace()
        .map(|w| expand(w, vars).into())
        .collect()
}

fn expand(word: &str, vars: &[(&str, &Path)]) -> String {
    vars.iter().fold(word.to_string(), |w, (name, path)| {
        w.replace(
            &format!("{{{name}}}"),
            path.to_str().expect("UTF-8 temp path"),
        )
    })
}

/// Bad command lines: (name, arguments, expected exit code or `None` for any non-zero, what stderr
/// must mention). `{src}` and `{dst}` are existing directories, `{missing}` does not exist.
const BAD_COMMAND_LINES: &[(&str, &str, Option<i32>, &[&str])] = &[
    (
        "run with a missing source directory",
        "run --source {missing} --target {dst} --source-kind inotify",
        None,
        &["{missing}"],
    ),
    (
        "sync with a missing source directory",
        "sync --source {missing} --target {dst}",
        None,
        &["{missing}"],
    ),
    (
        "unknown flag",
        "run --source {src} --target {dst} --frobnicate",
        Some(2),
        &["--frobnicate"],
    ),
    (
        "bad --source-kind",
        "run --source {src} --target {dst} --source-kind telepathy",
        Some(2),
        &["--source-kind"],
    ),
    (
        "bad --delay",
        "run --source {src} --target {dst} --delay soon",
        Some(2),
        &["--delay"],
    ),
    (
        "bad --shards",
        "run --source {src} --target {dst} --shards many",
        Some(2),
        &["--shards"],
    ),
    (
        "no target",
        "run --source {src} --source-kind inotify",
        Some(2),
        &["target"],
    ),
    (
        "no source",
        "run --target {dst} --source-kind inotify",
        Some(2),
        &["source"],
    ),
    ("unknown subcommand", "frobnicate", Some(2), &[]),
];

#[test]
fn bad_command_lines() {
    let dir = temp_dir("usage");
    let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
    mkdirs(&src);
    mkdirs(&dst);
    let missing = dir.path().join("no/such/source-dir");
    let vars: &[(&str, &Path)] = &[("src", &src), ("dst", &dst), ("missing", &missing)];
    check_cases(
        BAD_COMMAND_LINES
            .iter()
            .map(|(name, line, code, mentions)| Case {
                name,
                args: words(line, vars),
                code: *code,
                mentions: mentions.iter().map(|m| expand(m, vars)).collect(),
            })
            .collect(),
    );
}

/// Whether `text` names line `n` of a file: `line N` or `:N:` / `:N,` / `:N ` with `N` a whole
/// number.
fn names_line(text: &str, n: usize) -> bool {
    let n = n.to_string();
    ["line ", ":"].iter().any(|prefix| {
        let needle = format!("{prefix}{n}");
        text.match_indices(&needle)
            .any(|(i, _)| !text[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Invalid config files: (name, contents, the line at fault).
const INVALID_CONFIGS: &[(&str, &str, usize)] = &[
    (
        "syntax error",
        "source_kind = \"inotify\"\ndelay_ms = = 5\n",
        2,
    ),
    (
        "wrong type",
        "# comment\ndelay_ms = 50\nshards = \"many\"\n",
        3,
    ),
    ("unknown value", "\n\n\nfanotify_queue = \"sometimes\"\n", 4),
    (
        "unknown source_kind",
        "delay_ms = 5\nsource_kind = \"telepathy\"\n",
        2,
    ),
    (
        "unknown key",
        "delay_ms = 50\ninitial_sync = true\n\n# typo below\nbogus_key = 1\n",
        5,
    ),
    ("bool as a string", "initial_sync = \"yes\"\n", 1),
    (
        "negative delay",
        "# a\n# b\n# c\n# d\n# e\ndelay_ms = -5\n",
        6,
    ),
];

#[test]
fn bad_config_files() {
    let dir = temp_dir("config");
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    mkdirs(&src);
    mkdirs(&dst);
    let mut cases = Vec::new();
    let mut lines = Vec::new();
    for (i, (name, text, line)) in INVALID_CONFIGS.iter().enumerate() {
        let path = dir.path().join(format!("invalid-{i}.toml"));
        write_file(&path, text.as_bytes());
        cases.push(Case {
            name,
            args: run_with_config(&path, &src, &dst),
            code: Some(2),
            mentions: vec![path.display().to_string()],
        });
        lines.push((name, path, *line));
    }
    let missing = dir.path().join("missing.toml");
    let a_dir = dir.path().join("a-directory.toml");
    mkdirs(&a_dir);
    for (name, path) in [
        ("config file missing", &missing),
        ("config file is a directory", &a_dir),
    ] {
        cases.push(Case {
            name,
            args: run_with_config(path, &src, &dst),
            code: Some(2),
            mentions: vec![path.display().to_string()],
        });
    }
    check_cases(cases);

    // The line number, checked separately so that a failure says which one was expected.
    let running: Vec<_> = lines
        .into_iter()
        .map(|(name, path, line)| {
            (
                name,
                line,
                Syncer::spawn(run_with_config(&path, &src, &dst)),
            )
        })
        .collect();
    let deadline = Instant::now() + REJECT_TIMEOUT;
    let mut failures = Vec::new();
    for (name, line, syncer) in running {
        let done = syncer.finish(deadline.saturating_duration_since(Instant::now()));
        if !names_line(&done.stderr, line) {
            failures.push(format!(
                "{name}: stderr does not name line {line}: {:?}",
                done.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn run_with_config(config: &Path, src: &Path, dst: &Path) -> Vec<OsString> {
    let vars: &[(&str, &Path)] = &[("config", config), ("src", src), ("dst", dst)];
    words("run --config {config} --source {src} --target {dst}", vars)
}

/// A world-readable copy of the binary and a source readable by `nobody`, for running as nobody.
struct Unprivileged {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
}

const NOBODY: u32 = 65534;

impl Unprivileged {
    fn new() -> Option<Unprivileged> {
        if skip() {
            return None;
        }
        if !tool("setpriv").is_file() {
            eprintln!("SKIP: setpriv (util-linux) not found");
            return None;
        }
        let dir = temp_dir("nobody");
        chmod(dir.path(), 0o755);
        let bin = dir.path().join("syncer");
        std::fs::copy(syncer_bin(), &bin).expect("copy the syncer binary");
        chmod(&bin, 0o755);
        Some(Unprivileged { dir, bin })
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `setpriv --reuid=65534 ... <copy of syncer> ARGS`, `{src}` and `{dst}` in `args` being
    /// `<dir>/src` and `<dir>/dst`; the state directory is `<dir>/state`, owned by nobody (an
    /// unprivileged syncer keeps its state where it may write).
    fn command(&self, args: &str) -> Command {
        let (src, dst) = (self.path("src"), self.path("dst"));
        let state = self.path("state");
        mkdirs(&state);
        lchown(&state, NOBODY, NOBODY);
        let mut cmd = Command::new(tool("setpriv"));
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&self.bin)
        .args(words(args, &[("src", &src), ("dst", &dst)]))
        .env("SYNCER_STATE_DIR", &state);
        cmd
    }
}

#[test]
fn not_root_fanotify_fails_with_hint() {
    let Some(env) = Unprivileged::new() else {
        return;
    };
    let src = env.path("src");
    write_file(&src.join("file"), b"readable by nobody\n");
    let dst = env.path("dst");
    mkdirs(&dst);
    lchown(&dst, NOBODY, NOBODY);

    let cmd = env.command("run --source {src} --target {dst} --source-kind fanotify");
    let done = Syncer::spawn_command(cmd)
        .try_finish(REJECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("as nobody, --source-kind fanotify kept running: {e}"));
    assert!(
        !done.status.success(),
        "as nobody, --source-kind fanotify exited 0"
    );
    assert!(
        done.stderr.contains("--source-kind inotify"),
        "no hint to use --source-kind inotify in:\n{}",
        done.stderr
    );
}

#[test]
fn not_root_inotify_works() {
    let Some(env) = Unprivileged::new() else {
        return;
    };
    let src = env.path("src");
    make_tree(&src, &TreeSpec::new(100));
    let dst = env.path("dst");
    mkdirs(&dst);
    chown_tree(&src);
    lchown(&dst, NOBODY, NOBODY);

    let cmd = env.command(&format!(
        "run --source {{src}} --target {{dst}} --source-kind inotify --delay {DELAY_MS}"
    ));
    let mut syncer = Syncer::spawn_command(cmd);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    make_tree(
        &src.join("later"),
        &TreeSpec {
            seed: 4,
            ..TreeSpec::new(50)
        },
    );
    chown_tree(&src.join("later"));
    assert_converges(&src, &dst, CONVERGE_TIMEOUT);
    syncer.stop();
}

/// chown -R nobody:nogroup
fn chown_tree(root: &Path) {
    lchown(root, NOBODY, NOBODY);
    for entry in std::fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            chown_tree(&path);
        } else {
            lchown(&path, NOBODY, NOBODY);
        }
    }
}

#[test]
fn unreadable_file_is_retried_while_the_rest_flows() {
    let Some(env) = Unprivileged::new() else {
        return;
    };
    let src = env.path("src");
    make_tree(&src.join("before"), &TreeSpec::new(20));
    chown_tree(&src);
    let dst = env.path("dst");
    mkdirs(&dst);
    lchown(&dst, NOBODY, NOBODY);
    let cmd = env.command(&format!(
        "run --source {{src}} --target {{dst}} --source-kind inotify --delay {DELAY_MS}"
    ));
    let mut syncer = Syncer::spawn_command(cmd);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    // Root's file, mode 000: nobody cannot read it.
    let locked = src.join("before/locked");
    write_file(&locked, b"secret until later\n");
    chmod(&locked, 0o000);
    make_tree(
        &src.join("after"),
        &TreeSpec {
            seed: 9,
            ..TreeSpec::new(30)
        },
    );
    chown_tree(&src.join("after"));
    // The rest goes through while the locked file keeps failing.
    assert_converges(&src.join("after"), &dst.join("after"), CONVERGE_TIMEOUT);
    syncer.wait_for_log("Permission denied", MARKER_TIMEOUT);
    syncer.assert_running("with an unreadable file in the source");
    assert!(!dst.join("before/locked").exists());
    // Readable now: the next retry replicates it.
    lchown(&locked, NOBODY, NOBODY);
    chmod(&locked, 0o644);
    assert_converges(&src, &dst, CONVERGE_TIMEOUT);
    syncer.stop();
}
