//! NFS served from user space: nfs-ganesha (VFS FSAL) exports the source, a sub-tree of a
//! loop-mounted ext4 filesystem, with a second export beside it, and a libnfs client
//! (`libnfs_client.py`: Debian's libnfs.so.13 through ctypes, speaking NFS itself) runs the
//! workload of `nfs.rs` over NFSv3 and NFSv4: nested new directories, rewrites, appends,
//! truncates, chmod and set times, renames of files and directories, deletions and `rm -r` (a
//! directory filled and removed at once, so its handles go stale), odd names, a symlink, a hard
//! link, files in the other export, and a file kept open and written, each piece committed, for
//! 6 s. syncer watches the export on the server with each source kind (ganesha's changes are
//! its own system calls, so all three see them) and the export and both targets must end
//! identical, modes and mtimes included; no `.nfs*` name and nothing of the other export may
//! travel, and the long write is sent at most once per hold window. Then a stream of files is
//! written through NFS at 500/s for the report (`NFS-FIGURES ganesha ...` on stderr).
//!
//! ganesha and its rpcbind run in a private network namespace (rpcbind cannot be bound to
//! loopback only) with a private `/run` and `/var/lib/nfs`; the clients join that namespace
//! with `nsenter`. ganesha's file-descriptor cache is told to close what it holds within a
//! second, and NFSv4 runs without a grace period. Debian's libnfs 4.0 cannot chmod a directory
//! over NFSv4, so that step runs over NFSv3 only. One ganesha at a time (a lock).
//!
//! These run on the host (`cargo xtask test` installs nfs-ganesha, nfs-ganesha-vfs, libnfs13,
//! rpcbind and iproute2); in the VMs of `cargo xtask vm-test` they say `SKIP:` and why.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::nfs::{check_transfers, figures, start_syncer, workload, Client, LongWrite};
use crate::util::*;

/// The programs the scenarios run, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ganesha.nfsd", "nfs-ganesha"),
    ("rpcbind", "rpcbind"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("ip", "iproute2"),
    ("python3", "python3"),
];
/// Libraries they load, and their packages.
const LIBRARIES: &[(&str, &str)] = &[
    ("ganesha/libfsalvfs.so", "nfs-ganesha-vfs"),
    ("libnfs.so.13", "libnfs13"),
];
const LIBRARY_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];

/// One ganesha at a time on this host.
static SERVER: Mutex<()> = Mutex::new(());

/// Why the scenarios cannot run here, if they cannot.
fn missing() -> Option<String> {
    if std::env::var_os("SYNCER_VM_KERNEL").is_some() {
        return Some("the nfs-ganesha scenarios run on the host (`cargo xtask test`)".into());
    }
    for (t, pkg) in TOOLS {
        if !tool(t).is_file() {
            return Some(format!("`{t}` not found (Debian's {pkg})"));
        }
    }
    for (lib, pkg) in LIBRARIES {
        if !LIBRARY_DIRS
            .iter()
            .any(|d| Path::new(d).join(lib).is_file())
        {
            return Some(format!("{lib} not found (Debian's {pkg})"));
        }
    }
    None
}

/// [`skip`], then whether ganesha cannot run here (printing `SKIP:`); under
/// `SYNCER_E2E_REQUIRE=1` on the host, that is a failure.
fn ganesha_skip() -> bool {
    if skip() {
        return true;
    }
    let Some(reason) = missing() else {
        return false;
    };
    let required = std::env::var_os("SYNCER_E2E_REQUIRE").is_some_and(|v| v == "1");
    assert!(
        !required || std::env::var_os("SYNCER_VM_KERNEL").is_some(),
        "cannot run the nfs-ganesha scenarios: {reason}"
    );
    eprintln!("SKIP: {reason}");
    true
}

/// nfs-ganesha and its rpcbind in a private network and mount namespace, exporting some
/// directories (each under its own path, for NFSv3 and NFSv4 alike). Drop stops them.
struct Ganesha {
    server: Child,
    dir: TempDir,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl Ganesha {
    fn start(exports: &[&Path]) -> Ganesha {
        let guard = SERVER.lock().unwrap_or_else(|e| e.into_inner());
        let dir = temp_dir("ganesha");
        let mut conf = String::from(
            "NFS_CORE_PARAM { Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }\n\
             NFSv4 { Graceless = true; }\n\
             MDCACHE { FD_LWMark_Percent = 0; LRU_Run_Interval = 1; }\n\
             EXPORT_DEFAULTS { Access_Type = RW; Squash = No_Root_Squash; SecType = sys; }\n",
        );
        for (i, e) in exports.iter().enumerate() {
            conf.push_str(&format!(
                "EXPORT {{ Export_Id = {id}; Path = \"{p}\"; Pseudo = \"{p}\"; \
                 Protocols = 3, 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n",
                id = i + 1,
                p = e.display()
            ));
        }
        let conf_path = dir.path().join("ganesha.conf");
        write_file(&conf_path, conf.as_bytes());
        // In the new mount namespace: private /run (rpcbind's socket) and /var/lib/nfs
        // (ganesha's recovery state); the copies of other tests' loop mounts let go, so that
        // their filesystems go away when those tests unmount them; loopback up.
        let keep: Vec<String> = exports
            .iter()
            .filter_map(|e| mount_point_of(e))
            .map(|m| m.display().to_string())
            .collect();
        let script = format!(
            "set -e\n\
             mount -t tmpfs tmpfs /run\n\
             mount -t tmpfs tmpfs /var/lib/nfs\n\
             findmnt -rn -o TARGET,SOURCE | while read -r t s; do\n\
               case \"$s\" in /dev/loop*) case \" {keep} \" in *\" $t \"*) ;; *) umount -l \"$t\" || true;; esac;; esac\n\
             done\n\
             ip link set lo up\n\
             mkdir -p /run/rpcbind\n\
             rpcbind -f -w &\n\
             for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done\n\
             exec ganesha.nfsd -F -f {conf} -L {log} -p /run/ganesha.pid -N NIV_EVENT\n",
            keep = keep.join(" "),
            conf = conf_path.display(),
            log = dir.path().join("ganesha.log").display(),
        );
        let out = fs::File::create(dir.path().join("ganesha.out")).unwrap();
        let server = Command::new(tool("unshare"))
            .args(["--net", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("cannot start unshare");
        Ganesha {
            server,
            dir,
            _one_at_a_time: guard,
        }
    }

    /// What the server printed and logged, for failure messages.
    fn log(&self) -> String {
        let read = |n: &str| fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("ganesha.out"), read("ganesha.log"))
    }

    /// A libnfs client of `export` over NFS `version` (3 or 4), once ganesha serves it.
    fn client(&mut self, export: &Path, version: u8) -> LibNfs {
        let deadline = Instant::now() + MARKER_TIMEOUT;
        loop {
            if let Ok(Some(st)) = self.server.try_wait() {
                panic!("ganesha exited ({st}):\n{}", self.log());
            }
            match LibNfs::connect(self.server.id(), export, version) {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => {
                    panic!(
                        "cannot mount {} over NFSv{version}: {e}\n{}",
                        export.display(),
                        self.log()
                    )
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("ganesha's log, last lines:");
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
        }
        let group = Pid::from_raw(self.server.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.server.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // rpcbind, and ganesha if it did not stop.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.server.wait();
    }
}

/// The mount point of the filesystem holding `path` (the longest mount point above it).
fn mount_point_of(path: &Path) -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1).map(PathBuf::from))
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_path(p: &Path) -> String {
    hex(p.as_os_str().as_bytes())
}

/// `libnfs_client.py` in ganesha's network namespace: every [`Client`] call is one request,
/// carried out with libnfs over NFS.
struct LibNfs {
    child: Child,
    requests: ChildStdin,
    replies: BufReader<ChildStdout>,
    version: u8,
}

impl LibNfs {
    fn connect(netns_of: u32, export: &Path, version: u8) -> Result<LibNfs, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/libnfs_client.py");
        let mut child = Command::new(tool("nsenter"))
            .arg(format!("--net=/proc/{netns_of}/ns/net"))
            .arg(tool("python3"))
            .arg(script)
            .arg("127.0.0.1")
            .arg(export)
            .arg(version.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the libnfs client: {e}"))?;
        let requests = child.stdin.take().unwrap();
        let mut replies = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        let _ = replies.read_line(&mut first);
        if first.trim() != "ok mounted" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(first);
        }
        Ok(LibNfs {
            child,
            requests,
            replies,
            version,
        })
    }

    fn call(&mut self, words: &[&str]) {
        let line = words.join(" ");
        writeln!(self.requests, "{line}").expect("the libnfs client is gone");
        let mut reply = String::new();
        self.replies.read_line(&mut reply).unwrap();
        assert!(
            reply.trim_end() == "ok",
            "NFSv{}: {} failed: {}",
            self.version,
            words[0],
            if reply.is_empty() {
                "the client exited"
            } else {
                reply.trim_end()
            }
        );
    }
}

impl Drop for LibNfs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Client for LibNfs {
    fn mkdirs(&mut self, rel: &Path) {
        self.call(&["mkdirs", &hex_path(rel)]);
    }
    fn write(&mut self, rel: &Path, data: &[u8]) {
        self.call(&["write", &hex_path(rel), "644", &hex(data)]);
    }
    fn append(&mut self, rel: &Path, data: &[u8]) {
        self.call(&["append", &hex_path(rel), &hex(data)]);
    }
    fn truncate(&mut self, rel: &Path, len: u64) {
        self.call(&["truncate", &hex_path(rel), &len.to_string()]);
    }
    fn chmod(&mut self, rel: &Path, mode: u32) {
        self.call(&["chmod", &hex_path(rel), &format!("{mode:o}")]);
    }
    fn set_mtime(&mut self, rel: &Path, secs: i64, nsec: i64) {
        let usec = (nsec / 1000).to_string();
        self.call(&["mtime", &hex_path(rel), &secs.to_string(), &usec]);
    }
    fn rename(&mut self, from: &Path, to: &Path) {
        self.call(&["rename", &hex_path(from), &hex_path(to)]);
    }
    fn remove_file(&mut self, rel: &Path) {
        self.call(&["unlink", &hex_path(rel)]);
    }
    fn remove_dir(&mut self, rel: &Path) {
        self.call(&["rmdir", &hex_path(rel)]);
    }
    fn symlink(&mut self, target: &str, rel: &Path) {
        self.call(&["symlink", &hex(target.as_bytes()), &hex_path(rel)]);
    }
    fn hard_link(&mut self, from: &Path, to: &Path) {
        self.call(&["link", &hex_path(from), &hex_path(to)]);
    }
    fn open_long(&mut self, rel: &Path) {
        self.call(&["open", &hex_path(rel), "644"]);
    }
    fn piece(&mut self, data: &[u8]) {
        self.call(&["piece", &hex(data)]);
    }
    fn close_long(&mut self) {
        self.call(&["close"]);
    }
    fn chmods_directories(&self) -> bool {
        self.version == 3
    }
}

fn scenario(version: u8, kind: SourceKind) {
    if ganesha_skip() {
        return;
    }
    let Some(rig) = Rig::new() else { return };
    let beside = rig.fs.mkdir("other-export");
    make_tree(&rig.src.join("before"), &TreeSpec::new(200));
    let mut server = Ganesha::start(&[&rig.src, &beside]);
    let mut client = server.client(&rig.src, version);
    let mut client_beside = server.client(&beside, version);

    let mut syncer = start_syncer(&rig, kind);
    let long: LongWrite = workload(&mut client, &mut client_beside, &rig.src);
    rig.assert_converges(&mut syncer);
    check_transfers(&rig, &long);
    let label = format!("ganesha NFSv{version} source {}", kind.arg());
    // One libnfs client reaches some 300 files a second (each file is four round trips from
    // Python): two more share the stream, as many clients do on a real server.
    let mut more = [
        server.client(&rig.src, version),
        server.client(&rig.src, version),
    ];
    let [a, b] = &mut more;
    figures(
        &rig,
        syncer,
        kind,
        &mut [&mut client, a, b],
        3000,
        &label,
        &long,
    );
}

mod v3 {
    #[test]
    fn fanotify() {
        super::scenario(3, crate::util::SourceKind::Fanotify);
    }

    #[test]
    fn inotify() {
        super::scenario(3, crate::util::SourceKind::Inotify);
    }

    #[test]
    fn ebpf() {
        super::scenario(3, crate::util::SourceKind::Ebpf);
    }
}

mod v4 {
    #[test]
    fn fanotify() {
        super::scenario(4, crate::util::SourceKind::Fanotify);
    }

    #[test]
    fn inotify() {
        super::scenario(4, crate::util::SourceKind::Inotify);
    }

    #[test]
    fn ebpf() {
        super::scenario(4, crate::util::SourceKind::Ebpf);
    }
}
