//! The rescan planner: splits "make this subtree identical" into pieces that the pool can run
//! in parallel. It walks down a few directory levels until it has enough subtrees; each of
//! those becomes a `Tree` transfer, and every directory above them a `Shallow` transfer (its
//! own entries and the deletion of extraneous ones on the target), run after the subtrees.
//! Used by the initial sync and by full rescans after an overflow.

use std::path::{Path, PathBuf};

use crate::dedup::Op;

/// Deepest level the planner descends to.
const MAX_DEPTH: usize = 4;

/// Plans the rescan of `rel` (relative to `root`), aiming at `want` parallel subtrees.
pub fn plan(root: &Path, rel: &Path, want: usize) -> Vec<(PathBuf, Op)> {
    let mut out = Vec::new();
    let mut level = vec![rel.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        if level.len() >= want {
            break;
        }
        let mut next = Vec::new();
        for dir in &level {
            next.extend(subdirs(root, dir));
        }
        if next.is_empty() {
            break;
        }
        out.extend(level.into_iter().map(|d| (d, Op::Shallow)));
        level = next;
    }
    out.extend(level.into_iter().map(|d| (d, Op::Tree)));
    out
}

/// The subdirectories (not symlinks to directories) of `root/dir`, as paths relative to root.
/// An unreadable directory has none here: its own `Tree` transfer will report the error.
fn subdirs(root: &Path, dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_until_enough_subtrees() {
        let t = tempfile::tempdir().unwrap();
        for d in ["a/x", "a/y", "b/z", "c"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("file"), b"x").unwrap();
        let p = plan(t.path(), Path::new(""), 4);
        let show: Vec<String> = p
            .iter()
            .map(|(p, op)| format!("{op:?} {}", p.display()))
            .collect();
        assert_eq!(
            show,
            [
                "Shallow ",
                "Shallow a",
                "Shallow b",
                "Shallow c",
                "Tree a/x",
                "Tree a/y",
                "Tree b/z"
            ]
        );
        let small = plan(t.path(), Path::new(""), 2);
        assert_eq!(small.iter().filter(|(_, op)| *op == Op::Tree).count(), 3);
        let flat = plan(t.path(), Path::new("c"), 4);
        assert_eq!(flat, vec![(PathBuf::from("c"), Op::Tree)]);
    }
}
