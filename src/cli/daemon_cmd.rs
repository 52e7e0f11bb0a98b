//! `vpool daemon`

use super::Ctx;
use crate::daemon::{run as run_engine, DaemonConfig, DockerConfig};
use crate::frontend::docker::DriverConfig;
use crate::frontend::nbd::{valid_export_pattern, TlsOptions};
use crate::frontend::snapshotter::Config as SnapshotterConfig;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// TCP address for NBD clients, e.g. 127.0.0.1:10809. Off unless given.
    /// Without TLS any user who can connect reaches the volumes; the unix
    /// socket (root only) needs no TLS.
    #[arg(long, default_value = "off")]
    nbd_listen: String,
    /// Only these exports on the TCP listener, comma-separated names or
    /// patterns (`*` within a name part): tank/db,tank/web@*,backup/*.
    #[arg(long, value_name = "PATTERNS", value_delimiter = ',')]
    nbd_exports: Option<Vec<String>>,
    /// Require TLS on the TCP listener with X.509: DIR holds server-cert.pem,
    /// server-key.pem and ca-cert.pem; clients need a certificate signed by
    /// that authority (as qemu-nbd's tls-creds-x509 with verify-peer).
    #[arg(long, value_name = "DIR")]
    tls_certificates: Option<PathBuf>,
    /// Require TLS on the TCP listener with pre-shared keys: FILE holds
    /// IDENTITY:HEXKEY lines (`psktool -u NAME -p FILE` writes it; qemu's
    /// keys.psk and nbdkit's --tls-psk use the same format).
    #[arg(long, value_name = "FILE")]
    tls_psk: Option<PathBuf>,
    /// Unix socket for NBD clients (default STATE_DIR/nbd.sock; "off" to disable).
    #[arg(long)]
    nbd_socket: Option<String>,
    /// Serve NBD on a non-loopback address without TLS (any host that can
    /// reach it can read and write the exported volumes).
    #[arg(long, alias = "allow-remote")]
    insecure: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9567): I/O, space, health, jobs, connections. Read-only
    /// and unauthenticated, as node_exporter: pool and volume names and
    /// rates, never data. Off unless given.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Run COMMAND (with `sh -c`) for every event, as zed runs zedlets:
    /// VPOOL_EVENT_CLASS, _POOL, _SEVERITY, _MESSAGE, _SEQ, _TIME and
    /// _JSON describe it. One at a time, in order, each stopped after 60 s.
    #[arg(long, value_name = "COMMAND")]
    on_event: Option<String>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Seconds between background commits.
    #[arg(long, default_value = "5")]
    commit_interval: u64,
    /// Mount every volume as a file under DIR (FUSE; needs root and /dev/fuse).
    #[arg(long, value_name = "DIR")]
    fuse_mount: Option<PathBuf>,
    /// Most array bytes per second a background job (reshape, resync) moves,
    /// e.g. 200M; 0 for no limit. Clients keep the rest of the bandwidth.
    #[arg(long, default_value = "0", value_parser = super::pool_cmd::parse_size_arg)]
    job_rate_limit: u64,
    /// Serve Docker's (and Podman's) volume plugin protocol on SOCKET; Docker
    /// names the driver after the socket file (vpool.sock: `-d vpool`).
    #[arg(long, value_name = "SOCKET", num_args = 0..=1,
          default_missing_value = "/run/docker/plugins/vpool.sock")]
    docker_plugin: Option<PathBuf>,
    /// Where Docker volumes are mounted (default STATE_DIR/docker).
    #[arg(long, value_name = "DIR")]
    docker_root: Option<PathBuf>,
    /// The pool for Docker volumes created without `-o pool=` (default:
    /// the only pool).
    #[arg(long, value_name = "POOL")]
    docker_pool: Option<String>,
    /// The size of Docker volumes created without `-o size=` (thin: no
    /// space is used until written).
    #[arg(long, default_value = "10G", value_parser = super::pool_cmd::parse_size_arg)]
    docker_default_size: u64,
    /// Serve containerd's snapshot service on SOCKET (a proxy plugin:
    /// image layers and containers as chains of thin volumes).
    #[arg(long, value_name = "SOCKET", num_args = 0..=1,
          default_missing_value = "/run/vpool/snapshotter.sock")]
    snapshotter: Option<PathBuf>,
    /// The pool of the snapshotter's volumes (default: the only pool).
    #[arg(long, value_name = "POOL")]
    snapshotter_pool: Option<String>,
    /// The size of each layer's volume (thin: only what a layer writes is
    /// used); a container's root filesystem has this size.
    #[arg(long, default_value = "10G", value_parser = super::pool_cmd::parse_size_arg)]
    snapshotter_size: u64,
    /// block: a container's root is one ext4 cloned from its image's top
    /// layer (no copy-up); overlay: each layer an ext4 of its own, joined by
    /// overlayfs (page cache shared between containers). See ARCHITECTURE.md.
    #[arg(long, value_enum, default_value = "block")]
    snapshotter_mode: SnapshotterMode,
    /// Open block-device members with O_DIRECT, as md and LVM do their
    /// I/O: their data is not cached again in the host's page cache, and
    /// a write the device fails fails at once rather than at the next
    /// flush. Image files stay buffered. See docs/PERFORMANCE.md for
    /// what it costs.
    #[arg(long)]
    direct_io: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum SnapshotterMode {
    Block,
    Overlay,
}

pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("vpool={level},{level}")));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

pub fn run_daemon(ctx: &Ctx, a: DaemonArgs) -> anyhow::Result<()> {
    init_logging(&a.log_level);
    let nbd_listen = match a.nbd_listen.as_str() {
        "off" | "none" => None,
        s => Some(s.parse::<SocketAddr>().with_context(|| {
            format!("--nbd-listen '{s}' is not an address like 127.0.0.1:10809")
        })?),
    };
    let metrics_listen = match a.metrics_listen.as_deref() {
        None | Some("off") | Some("none") => None,
        Some(s) => Some(s.parse::<SocketAddr>().with_context(|| {
            format!("--metrics-listen '{s}' is not an address like 127.0.0.1:9567")
        })?),
    };
    let nbd_socket = match a.nbd_socket.as_deref() {
        Some("off") | Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(ctx.state_dir.join("nbd.sock")),
    };
    if let Some(p) = &a.nbd_exports {
        for pat in p {
            valid_export_pattern(pat).map_err(anyhow::Error::msg)?;
        }
    }
    let nbd_exports = a.nbd_exports.clone();
    // Before any pool is opened: members keep the mode they open in.
    crate::device::set_direct_io(a.direct_io);
    if a.direct_io {
        tracing::info!("block-device members are opened with O_DIRECT (--direct-io)");
    }
    let state_dir = super::absolute(&ctx.state_dir);
    let docker = a.docker_plugin.map(|socket| DockerConfig {
        socket: super::absolute(&socket),
        driver: DriverConfig {
            root: a
                .docker_root
                .map(|p| super::absolute(&p))
                .unwrap_or_else(|| state_dir.join("docker")),
            default_pool: a.docker_pool,
            default_size: a.docker_default_size,
            fuse_fallback: state_dir.join("files"),
        },
    });
    let snapshotter = a.snapshotter.map(|socket| {
        (
            super::absolute(&socket),
            SnapshotterConfig {
                pool: a.snapshotter_pool,
                size: a.snapshotter_size,
                fuse_fallback: state_dir.join("files"),
                overlay: a.snapshotter_mode == SnapshotterMode::Overlay,
                root: state_dir.join("snapshotter"),
            },
        )
    });
    run_engine(DaemonConfig {
        state_dir,
        nbd_listen,
        nbd_socket,
        metrics_listen,
        on_event: a.on_event,
        insecure: a.insecure,
        nbd_exports,
        tls: TlsOptions {
            certificates: a.tls_certificates.map(|p| super::absolute(&p)),
            psk_file: a.tls_psk.map(|p| super::absolute(&p)),
        },
        commit_interval: Duration::from_secs(a.commit_interval.max(1)),
        fuse_mount: a.fuse_mount.map(|p| super::absolute(&p)),
        job_rate_limit: a.job_rate_limit,
        docker,
        snapshotter,
    })
}

pub fn run(ctx: &Ctx, a: DaemonArgs) -> anyhow::Result<()> {
    run_daemon(ctx, a)
}
