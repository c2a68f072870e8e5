//! The request log: one JSON line per finished request, in one file per UTC day
//! (`requests-YYYY-MM-DD.jsonl`), so that old days can be archived or deleted as whole files.
//!
//! Records carry client labels, never API keys. Writes are synchronous and small; the log owns
//! its folder and the file of the current day.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, UtcOffset};

/// One finished request, as a line of the log.
#[derive(Debug, Clone, Serialize)]
pub struct LogRecord {
    /// RFC 3339 UTC time of the record (see [`timestamp`]).
    pub ts: String,
    /// Public request id.
    pub request: String,
    /// Client label, never an API key.
    pub client: String,
    /// `analysis` or `generation`.
    pub kind: String,
    pub models: Vec<String>,
    pub text_chars: usize,
    pub tokens: Option<usize>,
    pub options: serde_json::Value,
    /// `completed`, `error:<error_type>` or `cancelled`.
    pub outcome: String,
    pub wait_ms: Option<u64>,
    pub compute_ms: Option<u64>,
}

/// `t` as RFC 3339 in UTC, the form of [`LogRecord::ts`].
pub fn timestamp(t: OffsetDateTime) -> String {
    let utc = t.to_offset(UtcOffset::UTC);
    // Formatting fails only for years beyond 9999; a number still orders and parses.
    utc.format(&Rfc3339)
        .unwrap_or_else(|_| utc.unix_timestamp().to_string())
}

/// The name of the log file for the UTC day `date`.
pub fn file_name(date: Date) -> String {
    let day = date
        .format(format_description!("[year]-[month]-[day]"))
        .unwrap_or_else(|_| date.to_julian_day().to_string());
    format!("requests-{day}.jsonl")
}

pub struct RequestLog {
    dir: PathBuf,
    current: Mutex<Option<DayFile>>,
}

/// The file being appended to and the UTC day it holds.
struct DayFile {
    date: Date,
    path: PathBuf,
    file: File,
}

impl RequestLog {
    /// A log writing into `dir`, which is created if missing. No file is opened until the
    /// first record.
    pub fn open(dir: &Path) -> io::Result<RequestLog> {
        std::fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create request log folder {}: {e}", dir.display()),
            )
        })?;
        Ok(RequestLog {
            dir: dir.to_path_buf(),
            current: Mutex::new(None),
        })
    }

    /// Appends `rec` to the file of today's UTC date.
    pub fn write(&self, rec: &LogRecord) -> io::Result<()> {
        self.write_at(rec, OffsetDateTime::now_utc())
    }

    /// Appends `rec` to the file of the UTC date of `now`, opening that day's file when the
    /// date differs from the last write.
    pub(crate) fn write_at(&self, rec: &LogRecord, now: OffsetDateTime) -> io::Result<()> {
        let mut line = serde_json::to_vec(rec).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request {}: cannot encode log record: {e}", rec.request),
            )
        })?;
        line.push(b'\n');

        let date = now.to_offset(UtcOffset::UTC).date();
        // The file is only touched under the lock, so lines never interleave; a panic while
        // holding it cannot leave anything but a whole or missing line.
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_none_or(|day| day.date != date) {
            *current = Some(self.open_day(date)?);
        }
        let day = current.as_mut().expect("the day's file was just opened");
        // One write of the whole line to an append-only file: each record reaches the OS as
        // soon as it is written, and a reader never sees half a record from a buffer.
        day.file
            .write_all(&line)
            .and_then(|()| day.file.flush())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot append to request log {}: {e}", day.path.display()),
                )
            })
    }

    fn open_day(&self, date: Date) -> io::Result<DayFile> {
        let path = self.dir.join(file_name(date));
        // Append, never truncate: a restart on the same day continues that day's file.
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open request log {}: {e}", path.display()),
                )
            })?;
        Ok(DayFile { date, path, file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use time::macros::{date, datetime};

    fn record(request: &str, now: OffsetDateTime) -> LogRecord {
        LogRecord {
            ts: timestamp(now),
            request: request.to_string(),
            client: "web-3".to_string(),
            kind: "analysis".to_string(),
            models: vec!["smollm2-135m".to_string()],
            text_chars: 24,
            tokens: Some(6),
            options: json!({"top_k": 5, "layers": "0-30:5"}),
            outcome: "completed".to_string(),
            wait_ms: Some(3),
            compute_ms: Some(410),
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn two_records_on_one_day_are_two_lines_of_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = RequestLog::open(dir.path()).unwrap();
        let morning = datetime!(2025-03-07 08:15:00 UTC);
        let evening = datetime!(2025-03-07 23:59:59 UTC);
        log.write_at(&record("r-1", morning), morning).unwrap();
        let mut failed = record("r-2", evening);
        failed.outcome = "error:too_long".to_string();
        failed.tokens = None;
        failed.compute_ms = None;
        log.write_at(&failed, evening).unwrap();

        assert_eq!(files(dir.path()), ["requests-2025-03-07.jsonl"]);
        let got = lines(&dir.path().join("requests-2025-03-07.jsonl"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["request"], "r-1");
        assert_eq!(got[0]["ts"], "2025-03-07T08:15:00Z");
        assert_eq!(got[0]["models"], json!(["smollm2-135m"]));
        assert_eq!(got[0]["options"]["top_k"], 5);
        assert_eq!(got[0]["compute_ms"], 410);
        assert_eq!(got[1]["request"], "r-2");
        assert_eq!(got[1]["outcome"], "error:too_long");
        assert_eq!(got[1]["tokens"], Value::Null);
    }

    #[test]
    fn records_on_two_days_go_to_two_files_named_by_date() {
        let dir = tempfile::tempdir().unwrap();
        let log = RequestLog::open(dir.path()).unwrap();
        let before = datetime!(2024-12-31 23:59:58 UTC);
        let after = datetime!(2025-01-01 00:00:01 UTC);
        log.write_at(&record("r-old", before), before).unwrap();
        log.write_at(&record("r-new", after), after).unwrap();

        assert_eq!(
            files(dir.path()),
            ["requests-2024-12-31.jsonl", "requests-2025-01-01.jsonl"]
        );
        let old = lines(&dir.path().join("requests-2024-12-31.jsonl"));
        let new = lines(&dir.path().join("requests-2025-01-01.jsonl"));
        assert_eq!(old.len(), 1);
        assert_eq!(old[0]["request"], "r-old");
        assert_eq!(new.len(), 1);
        assert_eq!(new[0]["request"], "r-new");
    }

    #[test]
    fn the_day_is_the_utc_day_whatever_the_offset_of_now() {
        let dir = tempfile::tempdir().unwrap();
        let log = RequestLog::open(dir.path()).unwrap();
        // 23:30 at UTC-2 is 01:30 the next day in UTC.
        let late_local = datetime!(2025-06-30 23:30:00 -02:00);
        log.write_at(&record("r-1", late_local), late_local)
            .unwrap();
        assert_eq!(files(dir.path()), ["requests-2025-07-01.jsonl"]);
        let got = lines(&dir.path().join("requests-2025-07-01.jsonl"));
        assert_eq!(got[0]["ts"], "2025-07-01T01:30:00Z");
    }

    #[test]
    fn reopening_the_log_appends_to_the_days_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = datetime!(2025-03-07 12:00:00 UTC);
        RequestLog::open(dir.path())
            .unwrap()
            .write_at(&record("r-before-restart", now), now)
            .unwrap();
        RequestLog::open(dir.path())
            .unwrap()
            .write_at(&record("r-after-restart", now), now)
            .unwrap();
        let got = lines(&dir.path().join("requests-2025-03-07.jsonl"));
        let requests: Vec<&str> = got.iter().map(|v| v["request"].as_str().unwrap()).collect();
        assert_eq!(requests, ["r-before-restart", "r-after-restart"]);
    }

    #[test]
    fn open_creates_missing_folders() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("logs").join("requests");
        let log = RequestLog::open(&nested).unwrap();
        let before = OffsetDateTime::now_utc().date();
        log.write(&record("r-1", OffsetDateTime::now_utc()))
            .unwrap();
        let after = OffsetDateTime::now_utc().date();
        let names = files(&nested);
        assert_eq!(names.len(), 1);
        // The test may straddle midnight UTC.
        assert!(
            names[0] == file_name(before) || names[0] == file_name(after),
            "{names:?}"
        );
    }

    #[test]
    fn file_names_pad_month_and_day() {
        assert_eq!(
            file_name(date!(2025 - 01 - 05)),
            "requests-2025-01-05.jsonl"
        );
    }

    #[test]
    fn an_unwritable_folder_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, b"x").unwrap();
        let err = RequestLog::open(&blocker.join("logs"))
            .err()
            .expect("a folder under a file cannot be created");
        assert!(
            err.to_string().contains(&blocker.display().to_string()),
            "{err}"
        );
    }
}
