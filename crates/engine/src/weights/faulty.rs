//! A file system that fails on purpose, for tests of what users see when a disk misbehaves:
//! real files, except that chosen paths fail with I/O errors from a given byte on, arrive
//! slowly in small reads, or cannot be mapped.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::file::{set_file_system, FileSystem, ReadAt, RealFiles};

#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Reads that reach this byte fail with EIO, as a failing disk's do.
    ErrorFrom(u64),
    /// Each read returns at most `bytes`, after `delay`, as a slow network disk's do.
    Slow { bytes: usize, delay: Duration },
    /// Reads normally but grants no lease, as many network file systems do: the file is read
    /// into memory, never mapped.
    NoLease,
}

/// Real files with faults at chosen paths; other paths read normally.
#[derive(Default)]
pub struct FaultyFiles {
    faults: Mutex<HashMap<PathBuf, Fault>>,
}

impl FaultyFiles {
    /// Makes every weight read of this process go through the one faulty file system, and
    /// returns it. Tests running at once stay apart by putting faults on their own paths.
    pub fn install() -> &'static FaultyFiles {
        static FILES: OnceLock<Arc<FaultyFiles>> = OnceLock::new();
        FILES.get_or_init(|| {
            let f = Arc::new(FaultyFiles::default());
            set_file_system(f.clone());
            f
        })
    }

    /// Later opens of `path` meet `fault`.
    pub fn set(&self, path: &Path, fault: Fault) {
        self.lock().insert(path.to_path_buf(), fault);
    }

    /// Later opens of `path` read normally.
    pub fn clear(&self, path: &Path) {
        self.lock().remove(path);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Fault>> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FileSystem for FaultyFiles {
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let inner = RealFiles.open(path)?;
        Ok(match self.lock().get(path) {
            Some(&fault) => Box::new(FaultyFile { inner, fault }),
            None => inner,
        })
    }
}

struct FaultyFile {
    inner: Box<dyn ReadAt>,
    fault: Fault,
}

impl ReadAt for FaultyFile {
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        match self.fault {
            Fault::ErrorFrom(at) if offset + buf.len() as u64 > at => {
                Err(io::Error::from_raw_os_error(5))
            }
            Fault::ErrorFrom(_) | Fault::NoLease => self.inner.read_at(buf, offset),
            Fault::Slow { bytes, delay } => {
                std::thread::sleep(delay);
                let n = buf.len().min(bytes.max(1));
                self.inner.read_at(&mut buf[..n], offset)
            }
        }
    }
}
