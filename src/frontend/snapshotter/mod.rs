//! A containerd snapshotter (a proxy plugin: gRPC on a unix socket) that
//! keeps container image layers and container root filesystems as chains
//! of thin volumes. `vpool daemon --snapshotter[=SOCKET]`; containerd's
//! config names it: `[proxy_plugins.vpool] type = "snapshot"
//! address = "/run/vpool/snapshotter.sock"`.

mod filter;
mod lifecycle;
mod overlay;
pub mod proto;
mod service;
mod snapshots;
mod store;

pub use service::SnapshotterServer;
pub use snapshots::{Config, Snapshotter};
