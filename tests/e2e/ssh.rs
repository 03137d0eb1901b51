//! An ssh target through a real sshd on 127.0.0.1 (its own host key, a key for root, a free
//! port): a host key syncer does not know is refused at start with exit 2 and a message that
//! names it (ssh never prompts under syncer); with the key known and the port and identity
//! given as the target's `ssh_options`, changes replicate.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::*;

const SSHD: &str = "/usr/sbin/sshd";

/// A private sshd: `-D` in the foreground, killed on drop.
struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen {}", path.display());
}

impl Sshd {
    /// `None` (a skip, or a failure with `SYNCER_E2E_REQUIRE=1`) without openssh-server.
    fn start() -> Option<Sshd> {
        if !Path::new(SSHD).exists() {
            let msg = "no /usr/sbin/sshd (Debian's openssh-server; cargo xtask test installs it)";
            assert!(
                std::env::var_os("SYNCER_E2E_REQUIRE").is_none_or(|v| v != "1"),
                "{msg}"
            );
            eprintln!("SKIP: {msg}");
            return None;
        }
        let dir = temp_dir("sshd");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("client_key"));
        std::fs::copy(d.join("client_key.pub"), d.join("authorized_keys")).unwrap();
        // Privilege separation wants its empty directory.
        mkdirs(Path::new("/run/sshd"));
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile {d}/sshd.pid\nLogLevel ERROR\n",
            d = d.display()
        );
        write_file(&d.join("sshd_config"), config.as_bytes());
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .expect("sshd starts");
        let sshd = Sshd { dir, port, child };
        let t0 = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "sshd never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(sshd)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A known_hosts file holding this server's key (or nothing: `known = false`).
    fn known_hosts(&self, known: bool) -> PathBuf {
        let file = self.path(if known {
            "known_hosts"
        } else {
            "unknown_hosts"
        });
        let line = if known {
            let key = std::fs::read_to_string(self.path("host_key.pub")).unwrap();
            format!("[127.0.0.1]:{} {}", self.port, key.trim())
        } else {
            String::new()
        };
        write_file(&file, line.as_bytes());
        file
    }

    /// A `[[target]]` table for `dir` on this server, with its port, identity and `hosts`.
    fn target_table(&self, dir: &Path, hosts: &Path) -> String {
        format!(
            "[[target]]\nname = \"ssh-copy\"\nurl = \"root@127.0.0.1:{}\"\n\
             ssh_options = [\"-p\", \"{}\", \"-i\", \"{}\", \"-o\", \"UserKnownHostsFile={}\"]\n",
            dir.display(),
            self.port,
            self.path("client_key").display(),
            hosts.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_ssh_target_with_its_options_and_an_unknown_host_key_refused() {
    let Some(rig) = Rig::new() else { return };
    let Some(sshd) = Sshd::start() else { return };
    let src = &rig.src;
    make_tree(&src.join("t"), &TreeSpec::new(200));
    let copy = rig.scratch().join("ssh-copy");
    mkdirs(&copy);
    let config = rig.scratch().join("ssh.toml");
    let head = format!(
        "source = \"{}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\ndelay_ms = 50\n",
        src.display(),
        rig.state_dir().display(),
        rig.control_socket().display()
    );

    // An unknown host key: refused before anything runs, saying so.
    write_file(
        &config,
        format!(
            "{head}{}",
            sshd.target_table(&copy, &sshd.known_hosts(false))
        )
        .as_bytes(),
    );
    let done = run_syncer(["run", "--config", config.to_str().unwrap()], EXIT_TIMEOUT);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains("host key"),
        "the refusal names the host key:\n{}",
        done.stderr
    );

    // Known: the start-up pass and live changes replicate over ssh.
    write_file(
        &config,
        format!(
            "{head}{}",
            sshd.target_table(&copy, &sshd.known_hosts(true))
        )
        .as_bytes(),
    );
    let mut syncer = Syncer::spawn(["run", "--config", config.to_str().unwrap()]);
    syncer.wait_for_log(INITIAL_SYNC_FINISHED, MARKER_TIMEOUT);
    assert_converges(src, &copy, CONVERGE_TIMEOUT);
    for i in 0..50 {
        write_file(&src.join(format!("t/live-{i}")), b"over ssh");
    }
    std::fs::rename(src.join("t/live-0"), src.join("t/renamed")).unwrap();
    assert_converges(src, &copy, CONVERGE_TIMEOUT);
    syncer.stop();
}
