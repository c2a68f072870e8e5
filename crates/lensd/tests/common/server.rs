//! A `lensd serve` child process on a free loopback port, for the end-to-end tests.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `lensd serve`, killed if the test fails before stopping it.
pub struct Server {
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Server {
    pub fn start(config: &Path, data: &Path) -> Server {
        Self::start_with(config, data, &[])
    }

    /// With `extra` arguments to `lensd serve`.
    pub fn start_with(config: &Path, data: &Path, extra: &[&str]) -> Server {
        Self::spawn(Self::command(config, data, extra))
    }

    /// The `lensd serve` command `start_with` runs, for a test to adjust before [`Server::spawn`].
    pub fn command(config: &Path, data: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lensd"));
        cmd.current_dir(super::root())
            .args(["serve", "--addr", "127.0.0.1:0", "--shutdown-grace", "2"])
            .args(extra)
            .arg("--config")
            .arg(config)
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped());
        cmd
    }

    /// Starts `cmd` and waits for the address it listens on.
    pub fn spawn(mut cmd: Command) -> Server {
        let mut child = cmd.spawn().expect("lensd serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("lensd listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server { child, addr }
    }

    /// SIGTERM, then the ordered shutdown must end with success.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(killed.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "lensd exited with {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
