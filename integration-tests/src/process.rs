//! Child processes of the harness: every server and every Herald binary a test starts.
//!
//! Output goes to a log file; the process is killed when its handle is dropped (also while
//! a test panics, when the end of its log is printed), and it receives SIGKILL when the
//! test process dies, even by SIGKILL, through Linux's parent-death signal.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ports::PortInUse;

/// How long `terminate` waits after SIGTERM before it sends SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// Lines of log printed when a process is dropped during a panic.
const PANIC_TAIL_LINES: usize = 100;

/// A spawned process with its log file. Dropping it kills it.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
}

impl ChildProcess {
    /// Spawns `command` with stdin closed and stdout + stderr appended to `log_path`.
    /// `name` identifies the process in messages.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Self> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        // A restarted server appends to the same log; mark where each run begins.
        writeln!(log, "=== harness: starting {command:?}")?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        set_parent_death_signal(&mut command);
        let child = spawn_on_keeper_thread(command)
            .with_context(|| format!("spawning {name} (see {})", log_path.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path: log_path.to_owned(),
            exit: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (lossy UTF-8; empty if it cannot be read).
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    /// An error if the process has exited: `PortInUse` when its log says so (the caller
    /// can retry on other ports), otherwise one that quotes the end of its log.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        let Some(status) = self.try_exit() else {
            return Ok(());
        };
        let tail = self.log_tail(30);
        let error = anyhow::anyhow!(
            "{} exited with {status}; end of {}:\n{tail}",
            self.name,
            self.log_path.display()
        );
        if tail.contains("address already in use") {
            return Err(error.context(PortInUse));
        }
        Err(error)
    }

    /// Adds the end of the log to an error about this process (e.g. "not ready in time").
    pub fn explain(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!(
            "{} (pid {}); end of {}:\n{}",
            self.name,
            self.pid(),
            self.log_path.display(),
            self.log_tail(30)
        ))
    }

    /// SIGKILL, then reap. Returns the exit status (also if it had already exited).
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        // Fails only if the child has exited meanwhile, which `wait` then reports.
        let _ = self.child.kill();
        let status = self.child.wait().expect("waiting for a killed child");
        self.exit = Some(status);
        status
    }

    /// SIGTERM, then wait for the exit; SIGKILL if it takes longer than 10 s.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit() {
            return status;
        }
        self.signal(Signal::SIGTERM);
        match self.wait_exit(TERMINATE_GRACE) {
            Ok(status) => status,
            Err(_) => {
                eprintln!(
                    "{} ignored SIGTERM for {TERMINATE_GRACE:?}; killing it",
                    self.name
                );
                self.kill()
            }
        }
    }

    /// Sends a signal (e.g. SIGTERM to test graceful shutdown, SIGSTOP to freeze a server).
    pub fn signal(&mut self, signal: Signal) {
        if self.is_running() {
            let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits in i32"));
            // Fails only if the process has exited meanwhile.
            let _ = kill(pid, signal);
        }
    }

    /// Waits until the process exits by itself; an error after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        // std offers no wait-with-timeout for a child; poll with a short interval.
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let mut out = String::new();
            let _ = writeln!(
                out,
                "----- last {PANIC_TAIL_LINES} lines of {} ({}) -----",
                self.name,
                self.log_path.display()
            );
            let _ = writeln!(out, "{}", self.log_tail(PANIC_TAIL_LINES));
            let _ = writeln!(out, "----- end of {} -----", self.name);
            eprint!("{out}");
        }
    }
}

/// Makes the child receive SIGKILL when the thread that spawned it exits.
fn set_parent_death_signal(command: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs between fork and exec in the child; it only makes two
    // async-signal-safe system calls (prctl, getppid) and allocates nothing.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before prctl; then nobody would send the signal.
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns on one thread that lives as long as the test process.
///
/// The parent-death signal fires when the spawning *thread* exits, not the process: a
/// child spawned from a test thread or a tokio blocking thread would be killed as soon as
/// that thread ends, possibly in the middle of the test.
fn spawn_on_keeper_thread(command: Command) -> io::Result<Child> {
    static KEEPER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    let keeper = KEEPER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the spawner thread");
        requests
    });
    let (reply, result) = mpsc::channel();
    keeper
        .send((command, reply))
        .map_err(|_| io::Error::other("spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("spawner thread is gone"))?
}

/// `field` (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("a number")?
        .parse()?)
}
