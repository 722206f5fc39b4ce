//! Compiles the Open Inference Protocol's gRPC service (`proto/grpc_service.proto`)
//! with protox (a pure-Rust protobuf compiler) and tonic-prost-build: no system
//! `protoc` is needed. Only the server side is generated.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpc_service.proto");
    let descriptors = protox::compile(["proto/grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .compile_fds(descriptors)?;
    Ok(())
}
