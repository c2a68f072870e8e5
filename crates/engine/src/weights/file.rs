//! Reading weight files: whole, with positioned reads, into memory the process owns, or (for
//! GGUF files, where a read lease is granted) mapped under that lease ([`super::mapped`]).
//!
//! A file that shrinks, vanishes or fails with an I/O error while it is read gives an error
//! naming it and the offset, never a bus error that would end the server; once loaded,
//! nothing depends on the file's staying as it was. Reads go through a [`FileSystem`], so that
//! tests can put faults underneath.

use std::io;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, RwLock};

use super::mapped::Mapping;
use crate::error::{EngineError, Result};

/// Opens files for reading.
pub trait FileSystem: Send + Sync + 'static {
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
}

/// An open file read at given offsets.
pub trait ReadAt: Send {
    /// The file's length now.
    fn size(&self) -> io::Result<u64>;
    /// Reads into `buf` from `offset`; returns how many bytes were read, 0 at the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The whole file mapped under a read lease (`path` names it in messages), where this
    /// kind of file and the system allow; `None` has the caller read it.
    fn map(&self, path: &Path) -> Option<Mapping> {
        let _ = path;
        None
    }
}

/// The operating system's files.
pub struct RealFiles;

impl FileSystem for RealFiles {
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        Ok(Box::new(lensd_core::files::open(path)?))
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(self, buf, offset)
    }

    fn map(&self, path: &Path) -> Option<Mapping> {
        Mapping::open(self, path)
    }
}

static FILES: RwLock<Option<Arc<dyn FileSystem>>> = RwLock::new(None);

/// Makes every later weight read go through `fs` (tests put faults beneath loads this way).
pub fn set_file_system(fs: Arc<dyn FileSystem>) {
    *FILES.write().unwrap_or_else(|e| e.into_inner()) = Some(fs);
}

fn file_system() -> Arc<dyn FileSystem> {
    FILES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| Arc::new(RealFiles))
}

/// Opens `path` through the current file system.
pub fn open(path: &Path) -> Result<Box<dyn ReadAt>> {
    file_system()
        .open(path)
        .map_err(|e| EngineError::io(path, e))
}

/// A whole file's bytes, aligned for every GGUF block and float type: read into memory the
/// process owns, or mapped from the page cache under a read lease ([`Mapping`]).
pub struct FileBytes {
    inner: Inner,
}

enum Inner {
    Owned { words: Vec<u128>, len: usize },
    Mapped(Mapping),
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: `words` holds at least `len` initialized bytes, and u8 has no alignment.
            Inner::Owned { words, len } => unsafe {
                std::slice::from_raw_parts(words.as_ptr() as *const u8, *len)
            },
            Inner::Mapped(m) => m.bytes(),
        }
    }
}

impl FileBytes {
    pub(crate) fn zeroed(len: usize) -> Self {
        let words = vec![0u128; len.div_ceil(16)];
        super::advise_huge_pages(words.as_ptr() as *const u8, len);
        FileBytes {
            inner: Inner::Owned { words, len },
        }
    }

    /// Room for all of `file` (`len` bytes when opened): its pages mapped where a lease can be
    /// had, else owned memory. Nothing is read yet: see [`FileBytes::load`].
    pub(crate) fn for_file(path: &Path, file: &dyn ReadAt, len: usize) -> Self {
        match file.map(path) {
            Some(m) => FileBytes {
                inner: Inner::Mapped(m),
            },
            None => Self::zeroed(len),
        }
    }

    /// An aligned copy of `bytes` (tests build tensors without a file).
    #[cfg(test)]
    pub(crate) fn copy_of(bytes: &[u8]) -> Self {
        let mut f = Self::zeroed(bytes.len());
        f.as_mut_bytes().copy_from_slice(bytes);
        f
    }

    fn as_mut_bytes(&mut self) -> &mut [u8] {
        match &mut self.inner {
            // SAFETY: as in `deref`, and `&mut self` makes the borrow unique.
            Inner::Owned { words, len } => unsafe {
                std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u8, *len)
            },
            Inner::Mapped(_) => unreachable!("mapped bytes are filled by `load`, never written"),
        }
    }

    /// The mapping, where the bytes are mapped rather than owned.
    pub(crate) fn mapping(&self) -> Option<&Mapping> {
        match &self.inner {
            Inner::Owned { .. } => None,
            Inner::Mapped(m) => Some(m),
        }
    }

    /// Reads bytes `from..to` of `file` into owned bytes, calling `progress(bytes of the file
    /// done, bytes of the file)` after each chunk (mapped bytes are brought in by
    /// [`Mapping::lock`]).
    pub(crate) fn load(
        &mut self,
        path: &Path,
        file: &dyn ReadAt,
        from: usize,
        to: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let len = self.len() as u64;
        let buf = &mut self.as_mut_bytes()[from..to];
        fill_at(path, file, buf, from as u64, len, &mut |done, _| {
            progress(from as u64 + done, len)
        })
    }

    /// Whether the bytes are the page cache's, mapped under a lease that still holds.
    pub fn is_mapped(&self) -> bool {
        matches!(&self.inner, Inner::Mapped(m) if m.is_shared_with_the_file())
    }
}

/// Bytes per read, between progress reports.
pub(crate) const CHUNK: usize = 8 << 20;

/// Reads all of `path` into owned memory aligned for any tensor type, calling
/// `progress(bytes done, bytes total)` after each chunk.
pub fn read_whole(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<FileBytes> {
    let (file, size) = open_sized(path)?;
    let mut bytes = FileBytes::zeroed(size);
    fill(path, file.as_ref(), bytes.as_mut_bytes(), progress)?;
    Ok(bytes)
}

/// Reads all of `path` into a byte vector (for formats whose readers take one), calling
/// `progress` as [`read_whole`] does.
pub fn read_vec(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>> {
    let (file, size) = open_sized(path)?;
    let mut bytes = vec![0u8; size];
    super::advise_huge_pages(bytes.as_ptr(), size);
    fill(path, file.as_ref(), &mut bytes, progress)?;
    Ok(bytes)
}

pub(crate) fn open_sized(path: &Path) -> Result<(Box<dyn ReadAt>, usize)> {
    let file = open(path)?;
    let len = file.size().map_err(|e| EngineError::io(path, e))?;
    let size = usize::try_from(len).map_err(|_| {
        EngineError::format(
            path,
            format!("{len} bytes do not fit this machine's memory"),
        )
    })?;
    Ok((file, size))
}

/// Fills `buf` from the start of `file`, which had `buf.len()` bytes when opened.
fn fill(
    path: &Path,
    file: &dyn ReadAt,
    buf: &mut [u8],
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let len = buf.len() as u64;
    fill_at(path, file, buf, 0, len, progress)
}

/// Fills `buf` from byte `offset` of `file`, which had `len` bytes when opened, calling
/// `progress(bytes of buf done, bytes of buf)` after each chunk.
pub(crate) fn fill_at(
    path: &Path,
    file: &dyn ReadAt,
    buf: &mut [u8],
    offset: u64,
    len: u64,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<()> {
    let want = buf.len();
    let mut done = 0usize;
    while done < want {
        let end = (done + CHUNK).min(want);
        let at = offset + done as u64;
        match file.read_at(&mut buf[done..end], at) {
            Ok(0) => {
                return Err(EngineError::format(
                    path,
                    format!(
                        "the file ended at byte {at} while it was read, though it had {len} \
                         bytes when opened (truncated or replaced in place?)"
                    ),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("{e} (at byte {at} of {len})"));
                return Err(EngineError::io(path, e));
            }
        }
        progress(done as u64, want as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_file_reads_back_aligned_with_progress_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let data: Vec<u8> = (0..CHUNK + 1000).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut seen = Vec::new();
        let bytes = read_whole(&path, &mut |d, t| seen.push((d, t))).unwrap();
        assert_eq!(&bytes[..], &data[..]);
        assert_eq!(bytes.as_ptr() as usize % 16, 0);
        let total = data.len() as u64;
        assert_eq!(seen, [(CHUNK as u64, total), (total, total)]);
    }

    #[test]
    fn a_pipe_is_refused_naming_it_without_waiting_for_a_writer() {
        // issue 17 item 10: opening a FIFO for reading waits for a writer for ever.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.gguf");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let (done, result) = std::sync::mpsc::channel();
        let p = path.clone();
        std::thread::spawn(move || {
            let _ = done.send(read_whole(&p, &mut |_, _| {}).map(|_| ()));
        });
        let result = result
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("refused at once, not left waiting for a writer");
        let m = result.expect_err("a pipe is no weights file").to_string();
        assert!(
            m.contains(&path.display().to_string()) && m.contains("named pipe"),
            "{m}"
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let Err(e) = read_whole(Path::new("/nonexistent/w.gguf"), &mut |_, _| {}) else {
            panic!("a missing file reads")
        };
        let m = e.to_string();
        assert!(m.contains("/nonexistent/w.gguf"), "{m}");
    }
}
