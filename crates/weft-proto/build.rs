//! Compiles `proto/weft/v1/*.proto` with the vendored protoc, so a fresh
//! machine needs no system protobuf compiler.

#[cfg(not(feature = "grpc"))]
fn main() {}

#[cfg(feature = "grpc")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; the variable tells prost-build which protoc to run.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // Read at run time, not with `env!`: a build-script binary is reused across
    // checkouts that share a target dir, and a path baked in at compile time
    // would point at whichever checkout built it first.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "weft/v1/common.proto",
        "weft/v1/client.proto",
        "weft/v1/worker.proto",
        "weft/v1/admin.proto",
        "weft/v1/node.proto",
    ];
    let paths: Vec<_> = files.iter().map(|f| root.join(f)).collect();
    for path in &paths {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    tonic_prost_build::configure().compile_protos(&paths, &[root])?;
    Ok(())
}
