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

pub use lifecycle::Deferred;
pub use service::SnapshotterServer;
pub use snapshots::{Config, Snapshotter};

/// For fuzzing and robustness tests: arbitrary bytes as a `List` filter,
/// parsed as the service parses it and, when accepted, matched against
/// snapshots whose name, parent and labels come from the same bytes. Must
/// never panic; a filter of one `name==X` matches exactly the name X.
pub fn fuzz_filter(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(text.to_string(), text.to_string());
    labels.insert("containerd.io/gc.root".to_string(), "yes".to_string());
    let f = filter::Fields {
        name: &text,
        parent: text.get(1..).unwrap_or(""),
        kind: "committed",
        labels: &labels,
    };
    if let Ok(parsed) = filter::parse(&text) {
        let one = parsed.matches(&f);
        assert_eq!(filter::any_matches(&[parsed], &f), one);
    }
    if !text.contains(['"', ',', '\\']) && text.trim() == text.as_ref() {
        let by_name = filter::parse(&format!("name=={text}"));
        if let Ok(by_name) = by_name {
            assert!(by_name.matches(&f), "name=={text:?} matches its own name");
        }
    }
}
