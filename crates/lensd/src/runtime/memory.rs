//! The process's memory as the operating system and the C allocator see it, and the
//! allocator settings that give freed weights back.

use std::path::Path;

use lensd_core::engine::{HeapUsage, MemoryProbe};

/// Returns freed heap memory to the operating system. glibc keeps freed blocks in its arenas,
/// so without this an unloaded base would stay in the process's resident memory.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of 1 MiB and more (activations, logits, tensors) are mapped on their own and
/// unmapped when freed. glibc by default raises that threshold, up to 32 MiB, each time such a
/// block is freed; blocks under it then come from arenas that keep them once freed, and under
/// a long mixed load the freed bytes they keep grow with nothing leaked
/// (`docs/reliability.md`). A threshold set in `GLIBC_TUNABLES` is left as it is.
pub fn map_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("mmap_threshold")) {
        // SAFETY: mallopt sets one of the allocator's parameters under its own lock.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        }
    }
}

/// Resident memory from `/proc/self/statm`.
pub struct ProcMemory;

impl MemoryProbe for ProcMemory {
    fn resident_bytes(&self) -> Option<u64> {
        resident_bytes()
    }

    fn heap(&self) -> Option<HeapUsage> {
        heap_usage()
    }

    fn mapped_weight_bytes(&self) -> Option<u64> {
        Some(lensd_engine::weights::mapped::held_bytes())
    }
}

/// glibc's count over all its arenas: blocks in use (from the arenas and mapped on their own)
/// and free blocks it keeps. `None` on other C libraries.
pub fn heap_usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 reads the allocator's statistics under its own locks.
        let m = unsafe { libc::mallinfo2() };
        Some(HeapUsage {
            in_use_bytes: (m.uordblks + m.hblkhd) as u64,
            free_bytes: m.fordblks as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string(Path::new("/proc/self/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(4096) as u64)
}
