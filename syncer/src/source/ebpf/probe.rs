//! `BPF_PROG_LOAD` of a trivial program of each type: whether this kernel lets the eBPF
//! source's program types load at all (for `syncer check` and the tests that must know whether
//! fentry is allowed here). fentry and LSM probes give no attach target, so the kernel answers
//! EPERM when the type itself is refused and another error (EINVAL, ESRCH, ...) when allowed.

const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_PROG_TYPE_LSM: u32 = 29;
const BPF_TRACE_FENTRY: u32 = 24;
const BPF_LSM_MAC: u32 = 27;

pub const BPF_TYPES: &[(&str, u32, u32)] = &[
    ("eBPF socket_filter", BPF_PROG_TYPE_SOCKET_FILTER, 0),
    ("eBPF tracepoint", BPF_PROG_TYPE_TRACEPOINT, 0),
    ("eBPF raw_tracepoint", BPF_PROG_TYPE_RAW_TRACEPOINT, 0),
    (
        "eBPF fentry (tracing)",
        BPF_PROG_TYPE_TRACING,
        BPF_TRACE_FENTRY,
    ),
    ("eBPF lsm", BPF_PROG_TYPE_LSM, BPF_LSM_MAC),
];

/// Tries `BPF_PROG_LOAD` of `r0 = 0; exit`. fentry and LSM programs need a BTF attach target,
/// which this probe does not give: the kernel answers EPERM when the type itself is refused,
/// and an error from the verifier or the BTF lookup (EINVAL, ESRCH, ...) when it is allowed.
pub fn bpf_load(prog_type: u32, attach: u32) -> Result<String, String> {
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&prog_type.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[68..72].copy_from_slice(&attach.to_ne_bytes());
    // SAFETY: attr is a valid bpf_attr prefix; the pointers it holds outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5, /* BPF_PROG_LOAD */
            attr.as_mut_ptr(),
            attr.len() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: we own the new program descriptor.
        unsafe { libc::close(fd as i32) };
        return Ok("loads".into());
    }
    let e = std::io::Error::last_os_error();
    match (e.raw_os_error(), attach) {
        (Some(libc::EPERM), _) => Err(format!("refused ({e})")),
        (_, a) if a != 0 => Ok(format!(
            "type allowed (a bare probe without an attach target fails with: {e})"
        )),
        _ => Err(e.to_string()),
    }
}

/// Whether fentry programs (`BPF_PROG_TYPE_TRACING`) are allowed here.
pub fn fentry_allowed() -> bool {
    bpf_load(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY).is_ok()
}
