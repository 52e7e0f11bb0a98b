//! The gRPC service (`containerd.services.snapshots.v1.Snapshots`) on a unix
//! socket, on a tokio runtime of its own. Each call runs the blocking
//! snapshot work on tokio's blocking pool. Errors carry the codes containerd
//! maps to its own: NotFound, AlreadyExists, FailedPrecondition,
//! InvalidArgument.

use super::lifecycle::Deferred;
use super::overlay::MountSpec;
use super::proto::api::snapshots_server::{Snapshots, SnapshotsServer};
use super::proto::api::{self, *};
use super::proto::Mount;
use super::snapshots::{Info as SnapInfo, Snapshotter};
use super::store::Kind as SKind;
use crate::error::Error;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tonic::{Request, Response, Status};

fn status(e: anyhow::Error) -> Status {
    let msg = format!("{e:#}");
    for cause in e.chain() {
        if let Some(err) = cause.downcast_ref::<Error>() {
            return match err {
                Error::NotFound(_) => Status::not_found(msg),
                Error::Exists(_) => Status::already_exists(msg),
                Error::InUse(_) => Status::failed_precondition(msg),
                Error::Invalid(_) => Status::invalid_argument(msg),
                Error::NoSpace { .. } => Status::resource_exhausted(msg),
                Error::Unavailable(_) => Status::unavailable(msg),
                _ => Status::internal(msg),
            };
        }
    }
    Status::internal(msg)
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (nanos / 1_000_000_000) as i64,
        nanos: (nanos % 1_000_000_000) as i32,
    }
}

fn to_info(i: SnapInfo) -> api::Info {
    api::Info {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            SKind::View => Kind::View,
            SKind::Active => Kind::Active,
            SKind::Committed => Kind::Committed,
        } as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

fn to_mounts(m: Vec<MountSpec>) -> Vec<Mount> {
    m.into_iter()
        .map(|m| Mount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

struct Service(Arc<Deferred>);

impl Service {
    /// Run blocking snapshot work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Snapshotter) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let d = self.0.clone();
        let r = tokio::task::spawn_blocking(move || f(&*d.get()?))
            .await
            .map_err(|e| Status::internal(format!("{what}: {e}")))?;
        r.map_err(|e| {
            tracing::info!("snapshotter {what}: {e:#}");
            status(e)
        })
    }
}

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let labels = r.labels.into_iter().collect();
        let m = self
            .blocking("Prepare", move |s| {
                s.create(&r.key, &r.parent, labels, SKind::Active)
            })
            .await?;
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: to_mounts(m),
        }))
    }

    async fn view(
        &self,
        r: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let labels = r.labels.into_iter().collect();
        let m = self
            .blocking("View", move |s| {
                s.create(&r.key, &r.parent, labels, SKind::View)
            })
            .await?;
        Ok(Response::new(ViewSnapshotResponse {
            mounts: to_mounts(m),
        }))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let key = r.into_inner().key;
        let m = self.blocking("Mounts", move |s| s.mounts(&key)).await?;
        Ok(Response::new(MountsResponse {
            mounts: to_mounts(m),
        }))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        let labels = r.labels.into_iter().collect();
        self.blocking("Commit", move |s| s.commit(&r.name, &r.key, labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = r.into_inner().key;
        self.blocking("Remove", move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = r.into_inner().key;
        let i = self.blocking("Stat", move |s| s.stat(&key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(to_info(i)),
        }))
    }

    async fn update(
        &self,
        r: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("Update needs the snapshot's info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = info.labels.into_iter().collect();
        let i = self
            .blocking("Update", move |s| s.update(&info.name, labels, &paths))
            .await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(to_info(i)),
        }))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<ListSnapshotsResponse, Status>>>;

    async fn list(
        &self,
        r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = r.into_inner().filters;
        let all = self.blocking("List", move |s| s.list(&filters)).await?;
        // Batches of 100, as containerd's own service sends them. (The
        // stream's item type is tonic's: its error is large.)
        #[allow(clippy::result_large_err)]
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = all
            .chunks(100)
            .map(|c| {
                Ok(ListSnapshotsResponse {
                    info: c.iter().cloned().map(to_info).collect(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let key = r.into_inner().key;
        let size = self.blocking("Usage", move |s| s.usage(&key)).await?;
        Ok(Response::new(UsageResponse {
            size: size as i64,
            inodes: 0,
        }))
    }

    async fn cleanup(&self, _: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        // Volumes are removed with their snapshots: nothing is left to clean.
        Ok(Response::new(()))
    }
}

/// The gRPC server, on a thread with its own runtime.
pub struct SnapshotterServer {
    snapshotter: Arc<Deferred>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    socket: PathBuf,
}

impl SnapshotterServer {
    pub fn start(socket: &Path, snapshotter: Deferred) -> anyhow::Result<SnapshotterServer> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("snapshotter")
            .enable_all()
            .build()
            .context("starting the snapshotter's runtime")?;
        let listener = {
            let _g = rt.enter();
            crate::state::bind_private(socket, |p| tokio::net::UnixListener::bind(p))
                .with_context(|| format!("snapshotter socket {}", socket.display()))?
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let snapshotter = Arc::new(snapshotter);
        let svc = SnapshotsServer::new(Service(snapshotter.clone()));
        let thread = std::thread::spawn(move || {
            let serve = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = rx.await;
                    },
                );
            if let Err(e) = rt.block_on(serve) {
                tracing::error!("snapshotter stopped: {e}");
            }
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
        });
        Ok(SnapshotterServer {
            snapshotter,
            stop: Some(tx),
            thread: Some(thread),
            socket: socket.to_path_buf(),
        })
    }

    pub fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.snapshotter.shutdown();
        let _ = std::fs::remove_file(&self.socket);
    }
}
