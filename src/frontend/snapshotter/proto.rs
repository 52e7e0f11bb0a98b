//! Code generated at build time from `proto/containerd/*.proto` (build.rs),
//! in modules that follow the protobuf packages, as the generated code's
//! cross-package paths expect.
#![allow(clippy::all, missing_docs)]

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");
    }
    pub mod services {
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub use containerd::services::snapshots::v1 as api;
pub use containerd::types::Mount;
