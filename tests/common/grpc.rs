//! A gRPC channel over a unix socket (the containerd snapshotter's).

use std::path::PathBuf;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connect to `sock`; the caller bounds the wait.
pub async fn unix_channel(sock: PathBuf) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::try_from("http://snapshotter.invalid")?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = sock.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
}
