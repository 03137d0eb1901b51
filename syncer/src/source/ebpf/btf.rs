//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The BPF program is plain Rust without CO-RE relocations, so the loader looks up where the
//! fields it reads lie in this kernel and hands them over in [`Offsets`]. aya parses BTF but
//! keeps struct members private, so this is a small reader of its own: the type section is a
//! flat list whose entries have a fixed-size tail per kind.

use std::collections::HashMap;

use syncer_ebpf_abi::Offsets;

/// Why offsets could not be found.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no member {0}")]
    Missing(String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
}

struct Type {
    name: u32,
    kind: u32,
    /// For modifiers and typedefs: the type they refer to.
    ty: u32,
    members: Vec<Member>,
}

/// The parsed type section of one BTF blob.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn from_sys_fs() -> Result<Btf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Btf::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let u32_at = |off: usize| -> Result<u32, BtfError> {
            data.get(off..off + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Malformed("truncated"))
        };
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        let mut types = vec![Type {
            name: 0,
            kind: 0,
            ty: 0,
            members: Vec::new(),
        }];
        let mut off = hdr_len + type_off;
        let end = off + type_len;
        while off < end {
            let name = u32_at(off)?;
            let info = u32_at(off + 4)?;
            let size_or_type = u32_at(off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            off += match kind {
                1 | 14 | 17 => 4, // int, var, decl_tag
                3 => 12,          // array
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw = u32_at(m + 8)?;
                        members.push(Member {
                            name: u32_at(m)?,
                            ty: u32_at(m + 4)?,
                            bit_offset: if kind_flag { raw & 0x00ff_ffff } else { raw },
                        });
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,        // enum, func_proto
                15 | 19 => vlen * 12,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, modifiers, func, float, type_tag
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            types.push(Type {
                name,
                kind,
                ty: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        let mut structs = HashMap::new();
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && !t.members.is_empty() {
                structs
                    .entry(btf.name(t.name).to_string())
                    .or_insert(id as u32);
            }
        }
        btf.structs = structs;
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.ty
                }
                _ => break,
            }
        }
        id
    }

    /// Byte offset and type of member `name` of struct/union `id`, looking inside anonymous
    /// structs and unions.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let t = self.types.get(self.resolve(id) as usize)?;
        for m in &t.members {
            let mname = self.name(m.name);
            if mname == name {
                return Some((m.bit_offset / 8, m.ty));
            }
            if mname.is_empty() {
                if let Some((off, ty)) = self.member(m.ty, name) {
                    return Some((m.bit_offset / 8 + off, ty));
                }
            }
        }
        None
    }

    /// Byte offset of `path` (`"field"` or `"field.sub"`) in `struct name`.
    pub fn offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{name}.{path}"));
        let mut id = *self.structs.get(name).ok_or_else(missing)?;
        let mut total = 0;
        for part in path.split('.') {
            let (off, ty) = self.member(id, part).ok_or_else(missing)?;
            total += off;
            id = ty;
        }
        Ok(total)
    }

    /// The first of several spellings of a member that this kernel has.
    fn offset_any(&self, name: &str, paths: &[&str]) -> Result<u32, BtfError> {
        let mut last = None;
        for p in paths {
            match self.offset(name, p) {
                Ok(o) => return Ok(o),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one spelling"))
    }

    /// Where `struct pt_regs` keeps the six system call arguments.
    fn syscall_arg_offsets(&self) -> Result<[u32; 6], BtfError> {
        #[cfg(target_arch = "x86_64")]
        let regs = ["di", "si", "dx", "r10", "r8", "r9"];
        #[cfg(not(target_arch = "x86_64"))]
        let regs: [&str; 6] = [""; 6];
        let mut out = [0; 6];
        for (o, r) in out.iter_mut().zip(regs) {
            *o = self.offset("pt_regs", r)?;
        }
        Ok(out)
    }

    /// Everything the BPF program reads.
    pub fn offsets(&self) -> Result<Offsets, BtfError> {
        Ok(Offsets {
            task_fs: self.offset("task_struct", "fs")?,
            task_files: self.offset("task_struct", "files")?,
            fs_root: self.offset("fs_struct", "root")?,
            fs_pwd: self.offset("fs_struct", "pwd")?,
            path_dentry: self.offset("path", "dentry")?,
            files_fdt: self.offset("files_struct", "fdt")?,
            fdt_max_fds: self.offset("fdtable", "max_fds")?,
            fdt_fd: self.offset("fdtable", "fd")?,
            file_path: self.offset_any("file", &["f_path", "__f_path"])?,
            file_inode: self.offset("file", "f_inode")?,
            file_mode: self.offset("file", "f_mode")?,
            dentry_parent: self.offset("dentry", "d_parent")?,
            dentry_name: self.offset("dentry", "d_name")?,
            dentry_inode: self.offset("dentry", "d_inode")?,
            dentry_sb: self.offset("dentry", "d_sb")?,
            qstr_len: self.offset("qstr", "len")?,
            qstr_name: self.offset("qstr", "name")?,
            inode_sb: self.offset("inode", "i_sb")?,
            inode_mode: self.offset("inode", "i_mode")?,
            inode_dentry: self.offset("inode", "i_dentry")?,
            dentry_alias: self.offset_any("dentry", &["d_u.d_alias", "d_alias"])?,
            sb_dev: self.offset("super_block", "s_dev")?,
            // Only the VFS hooks need these (struct renamedata: Linux 5.12+).
            rd_old_dentry: self.offset("renamedata", "old_dentry").unwrap_or(u32::MAX),
            rd_new_dentry: self.offset("renamedata", "new_dentry").unwrap_or(u32::MAX),
            rd_flags: self.offset("renamedata", "flags").unwrap_or(u32::MAX),
            regs_arg: self.syscall_arg_offsets()?,
            fork_child_pid: 0,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the running kernel's own BTF: the offsets every kernel of the last decade has.
    #[test]
    fn offsets_from_this_kernel() {
        let Ok(btf) = Btf::from_sys_fs() else {
            crate::skip_or_fail("/sys/kernel/btf/vmlinux is not readable here");
            return;
        };
        let o = btf.offsets().expect("all members found");
        // struct path { struct vfsmount *mnt; struct dentry *dentry; }
        assert_eq!(o.path_dentry, 8);
        // struct qstr { union { struct { u32 hash; u32 len; }; u64 hash_len; }; const char *name; }
        assert_eq!(o.qstr_len, 4);
        assert_eq!(o.qstr_name, 8);
        assert_eq!(o.fs_pwd, o.fs_root + 16);
        assert!(o.task_files > 0 && o.dentry_parent > 0 && o.sb_dev > 0);
        // x86_64: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di ...
        #[cfg(target_arch = "x86_64")]
        assert_eq!(o.regs_arg, [112, 104, 96, 56, 72, 64]);
        assert!(btf.offset("dentry", "no_such_member").is_err());
    }
}
