//! A real `vpool daemon` for end-to-end tests: temp state dir, a free TCP
//! port, the NBD unix socket. Stopped by PID (SIGTERM, then SIGKILL) when
//! dropped, even if the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn vpool_bin() -> &'static str {
    env!("CARGO_BIN_EXE_vpool")
}

/// Fail with an install hint when a client program is missing.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: install the Debian package {package} (tools/test-all.sh installs it)"
    );
}

/// Run a command with a time limit; kill it and fail past the limit.
pub fn run(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let start = Instant::now();
    // Drain pipes in threads so a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} timed out after {secs}s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Run and require success; returns stdout.
pub fn ok(cmd: &mut Command, secs: u64) -> String {
    let o = run(cmd, secs);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub struct Daemon {
    child: Option<Child>,
    pub state: PathBuf,
    pub port: u16,
    extra: Vec<String>,
    /// Serve NBD on TCP (`--nbd-listen 127.0.0.1:port`); off by default in
    /// the daemon itself.
    tcp: bool,
}

impl Daemon {
    pub fn start(state: &Path) -> Daemon {
        Daemon::start_with(state, &[])
    }

    /// Start with extra `vpool daemon` arguments (e.g. `--fuse-mount DIR`).
    pub fn start_with(state: &Path, extra: &[&str]) -> Daemon {
        let port = free_port();
        let mut d = Daemon {
            child: None,
            state: state.to_path_buf(),
            port,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tcp: true,
        };
        d.spawn();
        d
    }

    /// Start with the daemon's defaults for NBD: no TCP listener, the unix
    /// socket only.
    pub fn start_unix_only(state: &Path) -> Daemon {
        let mut d = Daemon {
            child: None,
            state: state.to_path_buf(),
            port: 0,
            extra: Vec::new(),
            tcp: false,
        };
        d.spawn();
        d
    }

    /// Start the daemon. Another process may take the free port between
    /// `free_port` and the daemon's bind: then try another port.
    fn spawn(&mut self) {
        for _ in 0..5 {
            if self.try_spawn() {
                return;
            }
            self.port = free_port();
        }
        panic!("no free NBD port after 5 tries: {}", self.log());
    }

    /// False when the port was taken; panics on any other failure.
    fn try_spawn(&mut self) -> bool {
        let logged = self.log().len();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("daemon.log"))
            .expect("log");
        let child = Command::new(vpool_bin())
            .args(["--state-dir", self.state.to_str().unwrap(), "daemon"])
            .args(match self.tcp {
                true => vec![
                    "--nbd-listen".to_string(),
                    format!("127.0.0.1:{}", self.port),
                ],
                false => Vec::new(),
            })
            .args(["--log-level", "debug"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if std::os::unix::net::UnixStream::connect(self.state.join("vpool.sock")).is_ok()
                && (!self.tcp || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())
            {
                return true;
            }
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let log = self.log();
                if log[logged.min(log.len())..].contains("Address already in use") {
                    return false;
                }
                panic!("daemon exited early ({s}): {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("daemon did not become ready: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }

    pub fn unix_uri(&self, export: &str) -> String {
        format!(
            "nbd+unix:///{export}?socket={}",
            self.state.join("nbd.sock").display()
        )
    }

    /// The CLI against this daemon's state directory.
    pub fn vpool(&self, args: &[&str]) -> Output {
        run(
            Command::new(vpool_bin())
                .arg("--state-dir")
                .arg(&self.state)
                .args(args),
            300,
        )
    }

    pub fn vpool_ok(&self, args: &[&str]) -> String {
        let o = self.vpool(args);
        assert!(
            o.status.success(),
            "vpool {args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into()
    }

    /// One raw HTTP/JSON call to the control API on its unix socket
    /// (a 60 s limit): the status and the body as JSON (null if not).
    #[allow(dead_code)]
    pub fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(self.state.join("vpool.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let (status, payload) = vpool::control::client::parse_response(&raw).unwrap();
        (
            status,
            serde_json::from_slice(&payload).unwrap_or(serde_json::Value::Null),
        )
    }

    fn signal(&mut self, sig: i32, wait_secs: u64) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(child.id() as i32, sig) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(wait_secs) {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Graceful stop; asserts a clean exit.
    pub fn stop(&mut self) {
        let status = self.signal(libc::SIGTERM, 60);
        assert!(
            status.is_some_and(|s| s.success()),
            "daemon did not stop cleanly: {}",
            self.log()
        );
    }

    /// Power-cut style stop: SIGKILL.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL, 30);
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.signal(libc::SIGTERM, 20).is_none() {
            self.signal(libc::SIGKILL, 20);
        }
    }
}

/// A pool of `n` sparse image files of `size` bytes, created with the CLI
/// before the daemon starts.
pub fn make_pool(state: &Path, level: &str, n: usize, size: u64, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "--state-dir".into(),
        state.display().to_string(),
        "pool".into(),
        "create".into(),
        "tank".into(),
        "--raid".into(),
        level.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for i in 0..n {
        let p = state.join(format!("d{i}.img"));
        std::fs::create_dir_all(state).unwrap();
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        args.push(p.display().to_string());
    }
    ok(Command::new(vpool_bin()).args(&args), 60);
}
