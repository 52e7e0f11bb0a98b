//! Frontends (may use control and below): how clients reach volumes,
//! through the pool facade and the control layer's operations.

pub mod docker;
pub mod exports;
pub mod fuse;
pub mod http;
pub mod nbd;
pub mod snapshotter;

/// Run one request's handler so that a panic in it (a bug) costs that
/// request only: the worker thread survives and serves the next one. The
/// request itself is answered by whatever owned it (a dropped
/// `tiny_http::Request` sends a 500).
pub fn guarded(what: &str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!("{what}: a request panicked ({msg}); the worker goes on");
    }
}
