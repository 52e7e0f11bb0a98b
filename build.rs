//! Compiles the containerd snapshot service's protobuf schema (proto/) into
//! Rust with protox, a protobuf compiler in Rust, so building vpool needs no
//! `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["containerd/snapshots.proto"], ["proto"])?;
    tonic_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
