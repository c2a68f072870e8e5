//! Opening the files users name (weights, lenses, configurations, key files) without being
//! caught by what is not a file: a named pipe would block the reader until some writer comes,
//! a device could be read for ever. Each is opened without blocking and refused, naming what
//! it is, unless it is a regular file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// `O_NONBLOCK` on Linux: opening a named pipe for reading then returns at once.
const O_NONBLOCK: i32 = 0o4000;

/// What a non-regular file is, in words.
fn what(t: std::fs::FileType) -> &'static str {
    if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file; anything else is an error saying what it
/// is (e.g. "is a named pipe, not a regular file").
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)?;
    let t = file.metadata()?.file_type();
    if !t.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", what(t)),
        ));
    }
    // O_NONBLOCK means nothing to a regular file's reads; it is left set.
    Ok(file)
}

/// Checks that `path` is a folder; anything else is an error saying what it is.
pub fn folder(path: &Path) -> io::Result<()> {
    let t = std::fs::metadata(path)?.file_type();
    if t.is_dir() {
        return Ok(());
    }
    let it = if t.is_file() { "a file" } else { what(t) };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {it}, not a folder"),
    ))
}

/// The whole of the regular file at `path`.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The whole of the regular file at `path`, as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    let mut file = open(path)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_a_folder_and_a_device_are_refused_saying_what_they_are() {
        let dir = std::env::temp_dir().join(format!("lensd-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pipe = dir.join("pipe");
        let _ = std::fs::remove_file(&pipe);
        assert!(std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap()
            .success());
        for (path, words) in [
            (pipe.as_path(), "is a named pipe"),
            (dir.as_path(), "is a folder"),
            (Path::new("/dev/zero"), "is a character device"),
        ] {
            let e = read(path).unwrap_err().to_string();
            assert!(e.contains(words), "{}: {e}", path.display());
        }
        let file = dir.join("plain");
        std::fs::write(&file, "text").unwrap();
        assert_eq!(read_to_string(&file).unwrap(), "text");
        assert!(folder(&dir).is_ok());
        let e = folder(&pipe).unwrap_err().to_string();
        assert!(e.contains("is a named pipe, not a folder"), "{e}");
        let e = folder(&file).unwrap_err().to_string();
        assert!(e.contains("is a file, not a folder"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
