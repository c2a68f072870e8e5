//! Reading a GGUF file mapped under a read lease: one thread reads the pages in while another
//! parses the header from the pages already in.

use std::path::Path;
use std::sync::Arc;

use super::super::file::FileBytes;
use super::{gguf_header, header_error, GgufFile, MAGIC};
use crate::error::{EngineError, Result};

/// How far a mapped file's pages are read in, for a reader on another thread.
#[derive(Default)]
struct Arrived {
    /// Bytes read in from the start, and whether reading in has stopped (done, failed, or no
    /// longer wanted).
    state: std::sync::Mutex<(usize, bool)>,
    moved: std::sync::Condvar,
}

impl Arrived {
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reach(&self, upto: usize) {
        self.lock().0 = upto;
        self.moved.notify_all();
    }

    fn stop(&self) {
        self.lock().1 = true;
        self.moved.notify_all();
    }

    fn stopped(&self) -> bool {
        self.lock().1
    }

    /// Waits until byte `at` is read in; `None` if reading in stopped before it.
    fn wait_for(&self, at: usize) -> Option<usize> {
        let mut s = self.lock();
        while s.0 <= at && !s.1 {
            s = self.moved.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        (s.0 > at).then_some(s.0)
    }
}

/// Reads a mapped file from the start, only ever from pages already read in.
struct ArrivingReader<'a> {
    all: &'a [u8],
    at: usize,
    /// Bytes known to be read in, asked again only when reading reaches them.
    upto: usize,
    arrived: &'a Arrived,
}

impl std::io::Read for ArrivingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.at >= self.all.len() {
            return Ok(0);
        }
        if self.at >= self.upto {
            self.upto = self
                .arrived
                .wait_for(self.at)
                .ok_or_else(|| std::io::Error::other("the file's bytes stopped arriving"))?;
        }
        let n = buf.len().min(self.upto - self.at);
        buf[..n].copy_from_slice(&self.all[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl GgufFile {
    /// [`GgufFile::read_with`] for a file mapped under a lease: this thread reads the file's
    /// pages in, `chunk` bytes at a time, while a second one parses the header from the pages read so
    /// far (never touching one that is not: a failing disk is an error, not a bus error) and
    /// runs `on_header`.
    pub(super) fn read_mapped<T: Send>(
        path: &Path,
        bytes: FileBytes,
        progress: &mut dyn FnMut(u64, u64),
        on_header: impl FnOnce(&GgufFile) -> T + Send,
        chunk: usize,
    ) -> Result<(Self, T)> {
        let mapping = bytes.mapping().expect("the caller checked");
        let len = bytes.len() as u64;
        let arrived = Arrived::default();
        let (parsed, brought) = std::thread::scope(|s| {
            let parsing = s.spawn(|| {
                let parsed = Self::parse_arriving(path, mapping.bytes(), &arrived).map(|head| {
                    let made = on_header(&head);
                    (head, made)
                });
                if parsed.is_err() {
                    // A bad header ends the reading in at the next chunk.
                    arrived.stop();
                }
                parsed
            });
            let mut at = 0;
            let mut brought = Ok(());
            while at < bytes.len() && !arrived.stopped() {
                let end = (at + chunk).min(bytes.len());
                if let Err(e) = mapping.populate(at, end) {
                    let e = std::io::Error::new(
                        e.kind(),
                        format!("{e} (reading bytes {at}..{end} of {len} in)"),
                    );
                    brought = Err(EngineError::io(path, e));
                    arrived.stop();
                    break;
                }
                at = end;
                arrived.reach(at);
                progress(at as u64, len);
            }
            (parsing.join(), brought)
        });
        brought?;
        let (head, made) = parsed.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let g = GgufFile {
            bytes: Some(Arc::new(bytes)),
            ..head
        };
        Ok((g, made))
    }

    /// The header of the mapped `all`, read from its pages as they are read in.
    fn parse_arriving(path: &Path, all: &[u8], arrived: &Arrived) -> Result<Self> {
        let len = all.len() as u64;
        let mut magic = [0u8; 4];
        let mut reader = ArrivingReader {
            all,
            at: 0,
            upto: 0,
            arrived,
        };
        if std::io::Read::read_exact(&mut reader, &mut magic).is_err() || &magic != MAGIC {
            return Err(EngineError::format(
                path,
                "not a GGUF file (the first four bytes are not `GGUF`)",
            ));
        }
        let reader = ArrivingReader {
            all,
            at: 0,
            upto: 0,
            arrived,
        };
        let header = gguf_header::read(reader, len).map_err(|e| header_error(path, len, e))?;
        let g = GgufFile {
            path: path.to_path_buf(),
            len,
            bytes: None,
            header,
        };
        for (name, info) in &g.header.tensors {
            g.byte_range(name, info)?;
        }
        Ok(g)
    }
}
