//! Placeholder for the BPF program of syncer's eBPF event source (aya-ebpf). Its own issue
//! builds it: tracepoint and fentry/LSM probes that report tree changes on the source device
//! through a ring buffer. Nothing here is used by syncer yet.
#![no_std]
