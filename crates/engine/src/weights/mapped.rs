//! Weight files mapped from the page cache, held under a read lease.
//!
//! Reading a file into memory the process owns costs the read and, on top of it, fresh pages
//! for every byte: on a virtual machine whose memory is backed on first touch that doubled or
//! tripled a cold load. Mapping the file shares the page cache's copy of it, so a cold load
//! costs the read alone.
//!
//! A plain mapping would give up what [`super::file`] promises: a file truncated under a
//! mapping turns the next access into a bus error that ends the server, and a file written in
//! place would change the weights under a computation. So a file is mapped only under a read
//! lease (`F_SETLEASE`). While lensd holds it, Linux holds back any process that opens the file
//! for writing or truncates it, and tells lensd with a signal. lensd then copies the mapped
//! bytes into anonymous memory, puts the copy at the same addresses (`mremap`), and only then
//! gives the lease up; whatever reads the weights meanwhile sees the same bytes throughout.
//! Linux waits `/proc/sys/fs/lease-break-time` seconds (45 by default) for that, far longer
//! than a copy of weights that fit in memory takes.
//!
//! A disk that fails while the file is read in is an error for the load (reading in asks the
//! kernel to populate the mapping, which reports a failed read instead of raising a bus
//! error). Once loaded, the pages are the page cache's: under memory pressure the kernel may
//! drop them and read them again when they are next used, and a disk that fails at that moment
//! ends the process with a bus error. `LENSD_MAP_WEIGHTS=0` reads every file into owned memory
//! instead, for deployments that would rather pay the slower loads than take that chance.
//!
//! Where no lease is granted (the file is open for writing somewhere, belongs to another user
//! without `CAP_LEASE`, or lives on a file system without leases), or the signal is taken by
//! someone else, [`Mapping::open`] says so and the caller reads the file into owned memory.

#[cfg(target_os = "linux")]
pub use linux::{held_bytes, Mapping};

#[cfg(not(target_os = "linux"))]
pub use other::{held_bytes, Mapping};

#[cfg(not(target_os = "linux"))]
mod other {
    use std::path::Path;

    /// No mappings here: every file is read into owned memory.
    pub struct Mapping(std::convert::Infallible);

    pub fn held_bytes() -> u64 {
        0
    }

    impl Mapping {
        pub fn open(_file: &std::fs::File, _path: &Path) -> Option<Mapping> {
            None
        }

        pub fn populate(&self, _from: usize, _to: usize) -> std::io::Result<()> {
            match self.0 {}
        }

        pub fn bytes(&self) -> &[u8] {
            match self.0 {}
        }

        pub fn is_shared_with_the_file(&self) -> bool {
            match self.0 {}
        }

        pub fn huge_mapped_bytes(&self) -> Option<u64> {
            match self.0 {}
        }

        pub fn make_own(&self) -> bool {
            match self.0 {}
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::sync::{Mutex, MutexGuard, OnceLock};

    use libc::c_void;

    /// `F_SETSIG`: the signal a lease break sends, in place of `SIGIO` (whose default action
    /// ends the process). The same number on every Linux architecture.
    const F_SETSIG: libc::c_int = 10;

    /// Which real-time signal above `SIGRTMIN` lensd takes for lease breaks.
    const SIGNAL_ABOVE_RTMIN: libc::c_int = 6;

    /// What the lease watcher knows of one leased file, by its descriptor.
    struct Entry {
        path: PathBuf,
        /// The mapping's start and page-rounded length, once it exists.
        region: Option<(usize, usize)>,
        /// The lease was given up; `region`, if any, now holds a copy.
        released: bool,
        /// The bytes were copied into anonymous memory.
        copied: bool,
    }

    /// Bytes of every live mapping, shared with its file or copied after a lease break:
    /// weights held outside the heap allocator's count.
    pub fn held_bytes() -> u64 {
        entries()
            .values()
            .filter_map(|e| e.region.map(|(_, len)| len as u64))
            .sum()
    }

    fn entries() -> MutexGuard<'static, HashMap<RawFd, Entry>> {
        static ENTRIES: OnceLock<Mutex<HashMap<RawFd, Entry>>> = OnceLock::new();
        ENTRIES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The write end of the pipe that wakes the watcher; -1 until it runs.
    static WAKE: AtomicI32 = AtomicI32::new(-1);

    extern "C" fn on_lease_break(
        _sig: libc::c_int,
        _info: *mut libc::siginfo_t,
        _ctx: *mut c_void,
    ) {
        // Only async-signal-safe calls here: one write to a non-blocking pipe. A full pipe
        // already holds a wake-up, and the watcher looks at every lease when it wakes.
        // SAFETY: errno is this thread's; it is put back as it was.
        unsafe {
            let errno = *libc::__errno_location();
            let fd = WAKE.load(Ordering::Relaxed);
            if fd >= 0 {
                let b = 1u8;
                libc::write(fd, (&b as *const u8).cast(), 1);
            }
            *libc::__errno_location() = errno;
        }
    }

    /// Installs the signal handler and starts the watcher thread, once; `None` when the
    /// signal already has a handler or the thread cannot start.
    fn signal() -> Option<libc::c_int> {
        static SIGNAL: OnceLock<Option<libc::c_int>> = OnceLock::new();
        *SIGNAL.get_or_init(|| {
            let sig = libc::SIGRTMIN() + SIGNAL_ABOVE_RTMIN;
            if sig > libc::SIGRTMAX() {
                return None;
            }
            let mut fds = [0; 2];
            // SAFETY: plain system calls on descriptors this function owns; the handler is a
            // function that lives for the whole process.
            unsafe {
                if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                    return None;
                }
                let (read, write) = (OwnedFd::from_raw_fd(fds[0]), fds[1]);
                libc::fcntl(write, libc::F_SETFL, libc::O_NONBLOCK);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0
                    || old.sa_sigaction != libc::SIG_DFL
                {
                    libc::close(write);
                    return None;
                }
                let watcher = std::thread::Builder::new()
                    .name("lensd-lease-watch".into())
                    .spawn(move || watch(read));
                if watcher.is_err() {
                    libc::close(write);
                    return None;
                }
                WAKE.store(write, Ordering::Relaxed);
                let mut act: libc::sigaction = std::mem::zeroed();
                act.sa_sigaction = on_lease_break as *const () as usize;
                act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut act.sa_mask);
                if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                    return None;
                }
            }
            Some(sig)
        })
    }

    /// The watcher thread: on each wake-up, gives up every lease whose break is pending.
    fn watch(wake: OwnedFd) {
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reads into a local buffer from a descriptor this thread owns.
            let n = unsafe { libc::read(wake.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                return;
            }
            if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return;
            }
            let mut entries = entries();
            for (&fd, entry) in entries.iter_mut() {
                // SAFETY: `fd` stays open while its entry exists (the entry goes first).
                let lease = unsafe { libc::fcntl(fd, libc::F_GETLEASE) };
                if entry.released || lease == libc::F_RDLCK as libc::c_int {
                    continue;
                }
                if let Some((addr, len)) = entry.region {
                    entry.copied = copy_in_place(addr, len);
                    if !entry.copied {
                        eprintln!(
                            "lensd: {} is being changed, and its mapped bytes could not be \
                             copied for lack of memory: they read as zeros from now on; \
                             reload the model",
                            entry.path.display()
                        );
                    }
                }
                // SAFETY: gives up this descriptor's lease; the writer held back goes on.
                unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
                entry.released = true;
            }
        }
    }

    /// Replaces the file mapping at `addr` (`len` bytes, whole pages) by an anonymous copy of
    /// its bytes at the same addresses; if no memory can be had, by zeros (never a bus error).
    fn copy_in_place(addr: usize, len: usize) -> bool {
        if copy_only(addr, len) {
            return true;
        }
        // SAFETY: replaces the caller's mapping with zero pages at the same addresses.
        unsafe {
            libc::mmap(
                addr as *mut c_void,
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            );
        }
        false
    }

    /// Moves an anonymous copy of the mapping at `addr` (`len` bytes, whole pages) over it;
    /// `false`, changing nothing, if no memory can be had.
    fn copy_only(addr: usize, len: usize) -> bool {
        // SAFETY: `addr..addr + len` is a live read-only mapping of a file whose length the
        // lease has held still, so every byte of it reads; the new pages are this function's
        // until `mremap` moves them over the old ones in one step.
        unsafe {
            let copy = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if copy == libc::MAP_FAILED {
                return false;
            }
            super::super::advise_huge_pages(copy as *const u8, len);
            std::ptr::copy_nonoverlapping(addr as *const u8, copy as *mut u8, len);
            libc::mprotect(copy, len, libc::PROT_READ);
            let moved = libc::mremap(
                copy,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                addr as *mut c_void,
            );
            if moved == libc::MAP_FAILED {
                libc::munmap(copy, len);
                return false;
            }
            true
        }
    }

    /// Maps `len` bytes of the file `fd` read-only at an address that is a multiple of 2 MiB,
    /// so that the page cache's 2 MiB folios of it can be mapped whole, one page-table entry
    /// each: decoding streams every weight per token, and 4 KiB entries cost it a few percent
    /// in TLB misses.
    fn map_aligned(fd: RawFd, len: usize, map_len: usize) -> Option<usize> {
        const HUGE: usize = 2 << 20;
        // SAFETY: an inaccessible reservation, then the file mapped over an aligned part of
        // it (`MAP_FIXED` inside a range this function owns), then the rest given back.
        unsafe {
            let room = map_len + HUGE;
            let reserved = libc::mmap(
                std::ptr::null_mut(),
                room,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            );
            if reserved == libc::MAP_FAILED {
                return None;
            }
            let start = reserved as usize;
            let at = start.next_multiple_of(HUGE);
            let addr = libc::mmap(
                at as *mut c_void,
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                fd,
                0,
            );
            if addr == libc::MAP_FAILED {
                libc::munmap(reserved, room);
                return None;
            }
            if at > start {
                libc::munmap(reserved, at - start);
            }
            let end = at + map_len;
            if start + room > end {
                libc::munmap(end as *mut c_void, start + room - end);
            }
            libc::madvise(addr, map_len, libc::MADV_HUGEPAGE);
            Some(at)
        }
    }

    /// A whole regular file mapped read-only under a read lease (see the module's text).
    pub struct Mapping {
        /// A duplicate of the caller's descriptor: the lease lives as long as it is open.
        fd: OwnedFd,
        addr: usize,
        /// The file's length.
        len: usize,
        /// The mapping's length, in whole pages.
        map_len: usize,
    }

    // SAFETY: the mapping is read-only and its bytes never change while it lives (the lease
    // holds the file still, and after a break the copy holds the same bytes).
    unsafe impl Send for Mapping {}
    unsafe impl Sync for Mapping {}

    impl Mapping {
        /// Maps `file` (open for reading, at `path`) whole under a read lease, or `None` where
        /// that cannot be had (the caller reads the file instead). Nothing is read yet: see
        /// [`Mapping::populate`].
        pub fn open(file: &std::fs::File, path: &Path) -> Option<Mapping> {
            if std::env::var_os("LENSD_MAP_WEIGHTS").is_some_and(|v| v == "0") {
                return None;
            }
            let sig = signal()?;
            // SAFETY: duplicating a descriptor the caller keeps open.
            let dup = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            if dup < 0 {
                return None;
            }
            // SAFETY: `dup` is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(dup) };
            let raw = fd.as_raw_fd();
            entries().insert(
                raw,
                Entry {
                    path: path.to_path_buf(),
                    region: None,
                    released: false,
                    copied: false,
                },
            );
            let forget = |fd: OwnedFd| {
                entries().remove(&fd.as_raw_fd());
                drop(fd);
                None
            };
            // SAFETY: fcntl calls on an open descriptor; `sig` has lensd's handler.
            let leased = unsafe {
                libc::fcntl(raw, F_SETSIG, sig) == 0
                    && libc::fcntl(raw, libc::F_SETLEASE, libc::F_RDLCK) == 0
            };
            if !leased {
                return forget(fd);
            }
            // The length is read again under the lease: from here on nobody changes it unseen.
            let Ok(len) = file.metadata().map(|m| m.len() as usize) else {
                return forget(fd);
            };
            if len == 0 {
                return forget(fd);
            }
            // SAFETY: the page size is a constant of the system.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
            let map_len = len.next_multiple_of(page);
            let Some(addr) = map_aligned(raw, len, map_len) else {
                return forget(fd);
            };
            let mut all = entries();
            let entry = all.get_mut(&raw).expect("the entry was made above");
            if entry.released {
                // The lease broke before the mapping was known: someone is changing the file.
                all.remove(&raw);
                drop(all);
                // SAFETY: the mapping made above, used by nobody.
                unsafe { libc::munmap(addr as *mut c_void, map_len) };
                return None;
            }
            entry.region = Some((addr, map_len));
            drop(all);
            Some(Mapping {
                fd,
                addr,
                len,
                map_len,
            })
        }

        /// Reads bytes `from..to` of the file into the page cache and maps them, so that using
        /// them later waits for no disk. A disk that fails is an error here, never a bus
        /// error.
        pub fn populate(&self, from: usize, to: usize) -> std::io::Result<()> {
            // SAFETY: the page size is a constant of the system.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
            let start = from / page * page;
            let end = to.min(self.len);
            if end <= start {
                return Ok(());
            }
            let (at, n) = ((self.addr + start) as *mut c_void, end - start);
            // SAFETY: whole pages inside the mapping; the calls read them, never write.
            unsafe {
                if libc::madvise(at, n, libc::MADV_POPULATE_READ) == 0 {
                    return Ok(());
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
                // A kernel before 5.14 lacks the advice. Locking reads the pages in as well,
                // and also reports a failing disk as an error.
                if libc::mlock(at, n) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::munlock(at, n);
            }
            Ok(())
        }

        pub fn bytes(&self) -> &[u8] {
            // SAFETY: `len` bytes are mapped at `addr` for as long as `self` lives, and they
            // are never written (see the type's Sync).
            unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
        }

        /// Whether the bytes are still the page cache's (no lease break has come).
        pub fn is_shared_with_the_file(&self) -> bool {
            entries()
                .get(&self.fd.as_raw_fd())
                .is_some_and(|e| !e.released && !e.copied)
        }

        /// How many of the mapped bytes the page cache's 2 MiB folios cover, each mapped by
        /// one page-table entry (`FilePmdMapped` of this mapping in `/proc/self/smaps`);
        /// `None` where that cannot be read.
        pub fn huge_mapped_bytes(&self) -> Option<u64> {
            let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
            let head = format!("{:x}-", self.addr);
            let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head)).skip(1);
            lines
                .by_ref()
                .take_while(|l| {
                    l.split_whitespace()
                        .next()
                        .is_some_and(|t| t.ends_with(':'))
                })
                .find_map(|l| l.strip_prefix("FilePmdMapped:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib * 1024)
        }

        /// Copies the bytes into memory the process owns, at the same addresses, and gives the
        /// lease up: what a lease break does, on request. `false` if no memory could be had,
        /// in which case the mapping stays as it was.
        pub fn make_own(&self) -> bool {
            let mut all = entries();
            let Some(entry) = all.get_mut(&self.fd.as_raw_fd()) else {
                return false;
            };
            if entry.released {
                return true;
            }
            if !copy_only(self.addr, self.map_len) {
                return false;
            }
            entry.copied = true;
            // SAFETY: gives up this descriptor's lease; nothing depends on the file any more.
            unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
            entry.released = true;
            true
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            // The entry goes first, under the lock, so that the watcher never copies a region
            // being unmapped, nor looks at a descriptor after it is closed.
            let mut all = entries();
            all.remove(&self.fd.as_raw_fd());
            // SAFETY: the mapping (of the file, or the copy moved over it) made by `open`.
            unsafe { libc::munmap(self.addr as *mut c_void, self.map_len) };
            drop(all);
            // The descriptor closes after this, which gives up a lease still held.
        }
    }
}
