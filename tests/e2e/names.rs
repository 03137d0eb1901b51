//! Scenario 4, everything unusual about names and metadata, created while syncer runs: names with
//! spaces, newlines and other control characters, leading `-`, rsync rule/comment prefixes,
//! wildcards, `:`, non-UTF-8 bytes, 255-byte names; symlinks (absolute, dangling, looping,
//! non-UTF-8 targets); empty files and directories; setuid/setgid/sticky and read-only modes;
//! foreign owners; far-past and far-future mtimes with nanoseconds. Then attribute-only changes
//! (chmod, chown, touch -d on files and directories, symlink retargeting), then renames and
//! deletions among the odd names.

use crate::util::*;

per_source_kind!(odd_names_links_modes_times);

fn odd_names_links_modes_times(kind: SourceKind) {
    let Some(rig) = Rig::new() else { return };
    let src = &rig.src;
    let mut syncer = rig.start(kind);

    make_variety(src);
    rig.assert_converges(&mut syncer);

    // Attribute-only changes: contents stay the same.
    chmod(&src.join("modes/m0600"), 0o640);
    chmod(&src.join("modes/m4755"), 0o755);
    chmod(&src.join("modes/d0700"), 0o750);
    chmod(&src.join(os(b"\xff\xfe")), 0o700);
    chmod(&src.join(os(b"odd dirs/new\nline")), 0o711);
    lchown(&src.join("owners/u1234"), 4321, 1234);
    lchown(&src.join("owners/link"), 2222, 1111);
    set_mtime(&src.join("times/old"), 1_012_345_678, 1);
    set_mtime(&src.join(os(b"caf\xc3\xa9")), 1_600_000_000, 999_999_999);
    set_mtime(&src.join(os(&[b'a'; 255])), 1_500_000_000, 5);
    set_mtime(&src.join("times/dir"), 1_300_000_000, 700_000_000);
    set_mtime(&src.join("empty-dir"), 1_200_000_000, 0);
    remove(&src.join("links/dangling"));
    symlink(os(b"still/dangling \xff"), &src.join("links/dangling"));
    rig.assert_converges(&mut syncer);

    // Renames among odd names, deletions, new odd entries, new contents.
    rename(
        &src.join(os(b"new\nline")),
        &src.join("-leading-dash renamed"),
    );
    rename(
        &src.join(os(b"\xff\xfe")),
        &src.join(os(b"\xfe\xff renamed")),
    );
    rename(
        &src.join(os(b"odd dirs/#hash")),
        &src.join(os(b"odd dirs/;semicolon/#hash moved")),
    );
    remove(&src.join("#hash"));
    remove(&src.join("[brackets]"));
    remove(&src.join("odd dirs/ leading space"));
    let fresh = src.join(os(b"new dir \xff\n"));
    mkdirs(&fresh);
    for name in odd_names() {
        write_file(&fresh.join(os(&name)), b"");
    }
    write_file(&src.join("--help"), b"different contents for --help\n");
    rig.assert_converges(&mut syncer);
    syncer.stop();
}
