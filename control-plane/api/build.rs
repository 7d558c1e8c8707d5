//! Generates the gRPC types from proto/ with protox (a protobuf compiler in Rust),
//! so a build needs no protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/palisade/v1/distribution.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
