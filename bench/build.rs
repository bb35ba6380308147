//! Compiles the baseline unary service, whose messages are gatemesh's own
//! (`gatemesh.v1.FindVPSByLease*`), so both sides carry identical bytes.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/bench.proto");
    let fds = protox::compile(["bench.proto"], ["proto", "../proto/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .extern_path(".gatemesh.v1", "::gatemesh_proto::pb")
        .compile_fds(fds)?;
    Ok(())
}
