//! The control socket through the real client commands, against a running `syncer run`
//! (fanotify, the rig's daemon and local targets):
//! - `status --json` under a load: queue depths that go to zero once the writer stops;
//!   the rsync daemon stopped: its target reported `down`, and `status --check` exits 1;
//! - `checkpoint --wait` returns only once both targets hold the files written before it
//!   (checked on the targets the moment it returns);
//! - `pause` keeps a target's changes queued (and it reported `paused`), `resume` sends them;
//! - `rescan PATH` repairs drift made behind syncer's back; `failures --json` answers;
//! - a client pointed at no daemon says so and exits 1.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::util::*;

/// Runs a client command against `socket`: exit code, stdout, stderr.
fn client(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    all.extend(["--control-socket".into(), socket.as_os_str().to_owned()]);
    let f = run_syncer(all, Duration::from_secs(120));
    (f.status.code().unwrap_or(-1), f.stdout, f.stderr)
}

fn status(socket: &Path) -> serde_json::Value {
    let (code, out, err) = client(socket, &["status", "--json"]);
    assert_eq!(code, 0, "status --json: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status --json is JSON ({e}): {out}"))
}

/// The target at `i` of a status.
fn target(s: &serde_json::Value, i: usize) -> &serde_json::Value {
    &s["targets"][i]
}

fn wait_status(
    socket: &Path,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let s = status(socket);
        if ok(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < CONVERGE_TIMEOUT,
            "{what}: never; last status {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_client_commands_against_a_running_syncer() {
    let Some(mut rig) = Rig::new() else { return };
    let src = &rig.src.clone();
    make_tree(&src.join("t"), &TreeSpec::new(100));
    let mut syncer = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut syncer);
    let socket = rig.control_socket();

    let s = status(&socket);
    assert_eq!(s["source"]["kind"], "fanotify", "{s:#}");
    assert_eq!(s["targets"].as_array().map(Vec::len), Some(2), "{s:#}");
    for i in 0..2 {
        assert_eq!(target(&s, i)["state"], "live", "{s:#}");
        assert_eq!(target(&s, i)["pending"], 0, "{s:#}");
    }
    let (code, out, _) = client(&socket, &["status"]);
    assert!(
        code == 0 && out.contains("PENDING") && out.contains("live"),
        "{out}"
    );

    // Under a load the queues fill, and empty once it stops.
    let writer = Writer::spawn(src.join("t/load"), Duration::from_millis(1));
    let t0 = Instant::now();
    let mut most = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        let s = status(&socket);
        most = most.max(target(&s, 0)["pending"].as_u64().unwrap_or(0));
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = writer.stop();
    assert!(
        most > 0,
        "{written} files written, the daemon target never had a queue"
    );
    wait_status(&socket, "the queues empty", |s| {
        (0..2).all(|i| target(s, i)["pending"] == 0 && target(s, i)["oldest_pending_s"].is_null())
    });
    rig.assert_converges(&mut syncer);
    // What rsync said it sent: the load's files at least, and more bytes than their names.
    let s = status(&socket);
    for i in 0..2 {
        let files = target(&s, i)["files_sent"].as_u64().unwrap_or(0);
        let bytes = target(&s, i)["bytes_sent"].as_u64().unwrap_or(0);
        assert!(
            files >= written as u64 && bytes > files,
            "{written} files written: {s:#}"
        );
    }

    // A checkpoint returns once the targets hold what was written before it.
    let burst = src.join("t/burst");
    mkdirs(&burst);
    for i in 0..200 {
        write_file(
            &burst.join(format!("f{i}")),
            format!("before the checkpoint {i}").as_bytes(),
        );
    }
    let (code, out, err) = client(&socket, &["checkpoint", "--wait", "--timeout", "100"]);
    assert_eq!(code, 0, "checkpoint --wait: {out}{err}");
    for t in rig.target_dirs() {
        for i in 0..200 {
            let got = std::fs::read(t.join(format!("t/burst/f{i}"))).unwrap_or_default();
            assert_eq!(
                got,
                format!("before the checkpoint {i}").into_bytes(),
                "checkpoint reached, yet {} lacks t/burst/f{i}",
                t.display()
            );
        }
    }

    // Pause the local target: its changes wait (and it says so), then go on resume.
    let local = rig.target_dirs()[1].display().to_string();
    let (code, out, err) = client(&socket, &["pause", "2"]);
    assert!(code == 0 && out.contains("paused"), "pause: {out}{err}");
    write_file(&src.join("t/while-paused"), b"held back");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !rig.target_dirs()[1].join("t/while-paused").exists(),
        "a paused target received a change"
    );
    let s = status(&socket);
    assert_eq!(target(&s, 1)["url"], local.as_str(), "{s:#}");
    assert_eq!(target(&s, 1)["name"], "local-target", "{s:#}");
    assert_eq!(target(&s, 1)["state"], "paused", "{s:#}");
    assert!(target(&s, 1)["pending"].as_u64() >= Some(1), "{s:#}");
    let (code, out, _) = client(&socket, &["status", "--check", "--max-lag", "600"]);
    assert!(
        code == 1 && out.contains("paused"),
        "a paused target fails the check: {out}"
    );
    let (code, _, err) = client(&socket, &["resume", &local]);
    assert_eq!(code, 0, "resume by URL: {err}");
    rig.assert_converges(&mut syncer);

    // Drift behind syncer's back, repaired by a rescan of its directory.
    std::fs::remove_file(rig.target_dirs()[1].join("t/burst/f7")).unwrap();
    let (code, out, err) = client(
        &socket,
        &["rescan", &src.join("t/burst").display().to_string()],
    );
    assert!(code == 0 && out.contains("t/burst"), "rescan: {out}{err}");
    rig.assert_converges(&mut syncer);
    let (code, _, err) = client(&socket, &["rescan", "/elsewhere"]);
    assert!(code == 1 && err.contains("not inside the source"), "{err}");

    let (code, out, _) = client(&socket, &["failures", "--json"]);
    assert_eq!(code, 0);
    assert!(
        serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| v.is_array()),
        "{out}"
    );

    // The daemon goes away: its target is reported down, and the check fails.
    rig.daemon.stop();
    write_file(&src.join("t/while-down"), b"waits");
    let s = wait_status(&socket, "the daemon target reported down", |s| {
        target(s, 0)["state"] == "down"
    });
    assert_eq!(target(&s, 1)["state"], "live", "{s:#}");
    let (code, out, _) = client(&socket, &["status", "--check", "--max-lag", "600"]);
    assert!(
        code == 1 && out.contains("down"),
        "a down target fails the check: {out}"
    );
    rig.daemon.start();
    rig.assert_converges(&mut syncer);
    wait_status(&socket, "the daemon target back up", |s| {
        target(s, 0)["state"] == "live"
    });
    let (code, out, _) = client(&socket, &["status", "--check", "--max-lag", "600"]);
    assert!(code == 0 && out.starts_with("OK"), "{out}");
    syncer.stop();

    // Nothing listens any more.
    let (code, _, err) = client(&socket, &["status"]);
    assert!(code == 1 && err.contains("cannot reach syncer"), "{err}");
}

/// Mistakes an operator makes with an rsync daemon target, each told apart from an outage:
/// a module the daemon does not have, a wrong password and a password file others can read
/// stop the start with exit 2 and rsync's reason; a password rotated on the backup host while
/// syncer runs is reported as `refused` (in the log and in status, with rsync's reason), its
/// changes stay queued, and go once the password is right again.
#[test]
fn a_target_that_refuses_syncer_is_told_apart_from_one_that_is_down() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(20));
    let run = |target: &str, pw: &Path| {
        let args: Vec<std::ffi::OsString> = vec![
            "run".into(),
            "--source".into(),
            src.into(),
            "--target".into(),
            target.into(),
            "--password-file".into(),
            pw.into(),
            "--source-kind".into(),
            "fanotify".into(),
            "--delay".into(),
            "50".into(),
            "--state-dir".into(),
            rig.state_dir().into(),
            "--control-socket".into(),
            rig.control_socket().into(),
        ];
        Syncer::spawn(args)
    };
    let right = rig.write_config("right.pass", &format!("{AUTH_PASSWORD}\n"));
    chmod(&right, 0o600);
    let refused_at_start = |target: &str, pw: &Path, says: &[&str]| {
        let f = run(target, pw).finish(Duration::from_secs(60));
        assert_eq!(f.status.code(), Some(2), "{}", f.stderr);
        for s in says {
            assert!(f.stderr.contains(s), "{s:?} in: {}", f.stderr);
        }
    };
    refused_at_start(
        &rig.daemon.auth_url().replace("/auth", "/nope"),
        &right,
        &["no such module", "Unknown module 'nope'"],
    );
    let wrong = rig.write_config("wrong.pass", "wrong\n");
    chmod(&wrong, 0o600);
    refused_at_start(
        &rig.daemon.auth_url(),
        &wrong,
        &[
            "authentication failed",
            "@ERROR: auth failed on module auth",
        ],
    );
    // A password file others can read: rsync would refuse it at the first batch.
    let open = rig.write_config("open.pass", &format!("{AUTH_PASSWORD}\n"));
    chmod(&open, 0o644);
    refused_at_start(
        &rig.daemon.auth_url(),
        &open,
        &["password_file", "chmod 600"],
    );

    // Right: it runs. Then the backup host rotates the password.
    let mut syncer = run(&rig.daemon.auth_url(), &right);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    assert_converges(src, &rig.daemon.auth_path(), CONVERGE_TIMEOUT);
    rig.daemon.set_auth_password("rotated");
    write_file(
        &src.join("t/after-the-rotation"),
        b"kept until the password is right",
    );
    syncer.wait_for_log(
        "target refuses syncer: authentication failed",
        MARKER_TIMEOUT,
    );
    assert!(
        syncer.log_contains("@ERROR: auth failed on module auth"),
        "{}",
        syncer.log()
    );
    let s = wait_status(&rig.control_socket(), "the target reported refused", |s| {
        target(s, 0)["state"] == "refused"
    });
    assert!(
        target(&s, 0)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("auth failed")),
        "{s:#}"
    );
    assert!(target(&s, 0)["pending"].as_u64() >= Some(1), "{s:#}");
    let (code, out, _) = client(&rig.control_socket(), &["status"]);
    assert!(
        code == 0 && out.contains("refused") && out.contains("auth failed"),
        "{out}"
    );
    let (code, out, _) = client(&rig.control_socket(), &["status", "--check"]);
    assert!(code == 1 && out.contains("refused"), "{out}");
    // Back to the right password: the queued change goes (at the end of the pause, <= 30 s).
    rig.daemon.set_auth_password(AUTH_PASSWORD);
    assert_converges(src, &rig.daemon.auth_path(), CONVERGE_TIMEOUT);
    wait_status(&rig.control_socket(), "the target live again", |s| {
        target(s, 0)["state"] == "live" && target(s, 0)["last_error"].is_null()
    });
    syncer.stop();
}

/// Scrapes `http://addr/metrics`; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    body.to_string()
}

/// The samples of an OpenMetrics text as a real parser reads them (Debian's
/// python3-prometheus-client, its strict OpenMetrics parser): `name{labels} value` lines.
fn parse_metrics(text: &str, scratch: &Path) -> Vec<String> {
    let file = scratch.join("scrape.txt");
    write_file(&file, text.as_bytes());
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        for f in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value}')\n";
    let out = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("run /usr/bin/python3 (Debian's python3 with python3-prometheus-client)");
    assert!(
        out.status.success(),
        "the OpenMetrics parser refuses the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn sample(samples: &[String], prefix: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| s.strip_prefix(prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {prefix}: {samples:#?}"))
}

#[test]
fn metrics_scrapes_parse_and_move_with_replication() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(30));
    let addr = format!("127.0.0.1:{}", free_port());
    let mut syncer = rig.spawn(SourceKind::Fanotify, &["--metrics-listen", &addr]);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    let daemon = "target=127.0.0.1/mod}";
    let before = parse_metrics(&scrape(&addr), rig.scratch());
    let sent = |s: &[String]| sample(s, &format!("syncer_paths_sent_total{{{daemon}"));
    let sent_before = sent(&before);
    assert_eq!(
        sample(
            &before,
            &format!("syncer_target_state{{state=live,{daemon}")
        ),
        1.0
    );
    assert_eq!(
        sample(&before, &format!("syncer_target_pending{{{daemon}")),
        0.0
    );
    assert!(sample(&before, "syncer_source_info{kind=fanotify}") == 1.0);

    let by = |s: &[String], name: &str| sample(s, &format!("{name}{{{daemon}"));
    let created = |s: &[String]| sample(s, "syncer_source_changes_total{kind=created}");
    for i in 0..25 {
        write_file(&src.join(format!("t/new-{i}")), b"counted");
    }
    // One file rewritten every few milliseconds, well inside the coalescing delay: its
    // changes fold into one pending entry.
    for i in 0..40 {
        write_file(&src.join("t/busy"), format!("rewrite {i}").as_bytes());
        std::thread::sleep(Duration::from_millis(5));
    }
    rig.assert_converges(&mut syncer);
    // The counters move once the batches are settled.
    let t0 = Instant::now();
    let after = loop {
        let after = parse_metrics(&scrape(&addr), rig.scratch());
        if sent(&after) >= sent_before + 25.0 {
            break after;
        }
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "paths sent never moved by 25: {after:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sample(&after, "syncer_source_events_total{}") > 0.0);
    assert!(
        created(&after) >= created(&before) + 25.0,
        "25 files created: {after:#?}"
    );
    // What rsync said it sent: the 25 new files and the busy one, at least their bytes.
    assert!(
        by(&after, "syncer_files_sent_total") >= by(&before, "syncer_files_sent_total") + 26.0,
        "{after:#?}"
    );
    assert!(
        by(&after, "syncer_file_bytes_sent_total")
            >= by(&before, "syncer_file_bytes_sent_total") + 25.0 * 7.0,
        "{after:#?}"
    );
    assert!(
        by(&after, "syncer_bytes_sent_total") > by(&before, "syncer_bytes_sent_total"),
        "{after:#?}"
    );
    assert!(
        by(&after, "syncer_coalesced_total") >= by(&before, "syncer_coalesced_total") + 10.0,
        "40 rewrites of one file inside the delay: {after:#?}"
    );
    // The start-up pass compared the tree (30 files and their directories).
    assert!(by(&after, "syncer_pass_entries") >= 30.0, "{after:#?}");
    assert!(
        sample(
            &after,
            &format!("syncer_rsync_exits_total{{code=0,{daemon}")
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            &format!("syncer_batch_duration_seconds_count{{{daemon}")
        ) >= 1.0
    );
    assert!(
        sample(
            &after,
            &format!("syncer_target_last_synced_timestamp_seconds{{{daemon}")
        ) > 1.7e9
    );
    syncer.stop();
}

/// Targets as `[[target]]` tables, each with its own name and settings: status and pause know
/// them by name, and both replicate.
#[test]
fn targets_from_tables_have_their_names_and_settings() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(40));
    let config = rig.write_config(
        "tables.toml",
        &format!(
            "source = {src:?}\nsource_kind = \"fanotify\"\n\n\
             [[target]]\nname = \"primary\"\nurl = {daemon:?}\nshards = 1\ndelay_ms = 20\n\n\
             [[target]]\nname = \"copy\"\nurl = {local:?}\ndelay_ms = 300\nrsync_args = [\"--checksum\"]\n",
            src = src.display().to_string(),
            daemon = rig.daemon.url(),
            local = rig.target_dirs()[1].display().to_string(),
        ),
    );
    let mut syncer = Syncer::spawn([
        "run".into(),
        "--config".into(),
        config.into_os_string(),
        "--state-dir".into(),
        rig.state_dir().into_os_string(),
        "--control-socket".into(),
        rig.control_socket().into_os_string(),
    ] as [std::ffi::OsString; 7]);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    rig.assert_converges(&mut syncer);
    let s = status(&rig.control_socket());
    assert_eq!(target(&s, 0)["name"], "primary", "{s:#}");
    assert_eq!(target(&s, 1)["name"], "copy", "{s:#}");
    let (code, out, err) = client(&rig.control_socket(), &["pause", "copy"]);
    assert!(code == 0 && out.contains("copy: paused"), "{out}{err}");
    write_file(&src.join("t/only-primary-now"), b"x");
    assert_converges(src, rig.target_dirs()[0], CONVERGE_TIMEOUT);
    assert!(!rig.target_dirs()[1].join("t/only-primary-now").exists());
    client(&rig.control_socket(), &["resume", "copy"]);
    rig.assert_converges(&mut syncer);
    syncer.stop();
}

/// SIGHUP reads the config file again: a target added (it gets its full pass while the
/// other goes on), one changed (its queue kept), one removed (it gets nothing more); a
/// broken file leaves the running targets as they were, and says why in the log and in
/// status.
#[test]
fn a_reload_adds_changes_and_removes_targets_and_keeps_running_on_a_broken_config() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(60));
    let [daemon, local] = rig.target_dirs();
    let table = |name: &str, url: &str, delay: u32| {
        format!("[[target]]\nname = {name:?}\nurl = {url:?}\ndelay_ms = {delay}\n")
    };
    let head = format!(
        "source = {:?}\nsource_kind = \"fanotify\"\n",
        src.display().to_string()
    );
    let primary = |delay| table("primary", &rig.daemon.url(), delay);
    let copy = table("copy", &local.display().to_string(), 50);
    let config = rig.write_config("reload.toml", &format!("{head}{}", primary(50)));
    let mut syncer = Syncer::spawn([
        "run".into(),
        "--config".into(),
        config.clone().into_os_string(),
        "--state-dir".into(),
        rig.state_dir().into_os_string(),
        "--control-socket".into(),
        rig.control_socket().into_os_string(),
    ] as [std::ffi::OsString; 7]);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    assert_converges(src, daemon, CONVERGE_TIMEOUT);
    let names = |s: &serde_json::Value| -> Vec<String> {
        s["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };

    // Add `copy`, change `primary`'s delay.
    write_file(&config, format!("{head}{}{copy}", primary(120)).as_bytes());
    write_file(&src.join("t/before-the-reload"), b"queued for primary");
    syncer.signal(nix::sys::signal::Signal::SIGHUP);
    syncer.wait_for_log(
        "targets added: copy; removed: none; changed: primary",
        MARKER_TIMEOUT,
    );
    wait_status(&rig.control_socket(), "both targets", |s| {
        names(s) == ["primary", "copy"]
    });
    rig.assert_converges(&mut syncer);
    write_file(&src.join("t/after-the-reload"), b"for both");
    rig.assert_converges(&mut syncer);

    // Remove `primary`.
    write_file(&config, format!("{head}{copy}").as_bytes());
    syncer.signal(nix::sys::signal::Signal::SIGHUP);
    syncer.wait_for_log("removed: primary", MARKER_TIMEOUT);
    wait_status(&rig.control_socket(), "copy alone", |s| {
        names(s) == ["copy"]
    });
    write_file(&src.join("t/copy-only"), b"x");
    assert_converges(src, local, CONVERGE_TIMEOUT);
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !daemon.join("t/copy-only").exists(),
        "a removed target got a change"
    );

    // A broken file: the running targets stay, the status says why.
    write_file(&config, format!("{head}[[target]\nurl = ").as_bytes());
    syncer.signal(nix::sys::signal::Signal::SIGHUP);
    syncer.wait_for_log(
        "reload failed, the running configuration stays",
        MARKER_TIMEOUT,
    );
    let s = status(&rig.control_socket());
    assert!(
        s["reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("reload.toml, line 3")),
        "{s:#}"
    );
    assert_eq!(names(&s), ["copy"]);
    write_file(&src.join("t/still-running"), b"x");
    assert_converges(src, local, CONVERGE_TIMEOUT);
    syncer.stop();
}

/// A pause outlives a restart (an operator pauses a target for its maintenance, and a restart
/// of syncer meanwhile must not start sending to it); what it held stays queued, and a resume
/// sends it.
#[test]
fn a_pause_outlives_a_restart() {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(20));
    let mut syncer = rig.start(SourceKind::Fanotify);
    rig.assert_converges(&mut syncer);
    let socket = rig.control_socket();
    let (code, out, err) = client(&socket, &["pause", "2"]);
    assert!(code == 0 && out.contains("paused"), "pause: {out}{err}");
    write_file(&src.join("t/held"), b"held over a restart");
    let daemon_copy = rig.target_dirs()[0].join("t/held");
    let t0 = Instant::now();
    while !daemon_copy.exists() {
        assert!(
            t0.elapsed() < MARKER_TIMEOUT,
            "the daemon target never got t/held"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = syncer.stop();
    assert!(
        log.contains("paused"),
        "the drain says it left the paused target:\n{log}"
    );

    let mut syncer = rig.spawn(SourceKind::Fanotify, &[]);
    syncer.wait_for_log("paused by the operator before this start", MARKER_TIMEOUT);
    let s = wait_status(&socket, "the restarted syncer answers", |s| {
        target(s, 1)["state"] == "paused"
    });
    assert!(target(&s, 1)["pending"].as_u64() >= Some(1), "{s:#}");
    std::thread::sleep(Duration::from_millis(1500));
    let local_copy = rig.target_dirs()[1].join("t/held");
    assert!(
        !local_copy.exists(),
        "a target paused before the restart received a change"
    );

    let (code, _, err) = client(&socket, &["resume", "2"]);
    assert_eq!(code, 0, "resume: {err}");
    rig.assert_converges(&mut syncer);
    syncer.stop();
    // Resumed for good: the next start sends at once.
    let mut syncer = rig.start(SourceKind::Fanotify);
    write_file(&src.join("t/after"), b"after the resume");
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
