//! Compiles `proto/` with gatemesh-build (protox: no system protoc), the
//! same generator a crate with its own methods uses: the messages and
//! services (`pb`), the method bindings from `methods.proto`
//! (`gatemesh_proto::methods`) and the encoded descriptors.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    gatemesh_build::configure()
        .include("proto")
        .messages_path("crate::pb")
        .codec_path("crate::codec::ProstCodec")
        .build_server(true)
        .compile(&[
            "gatemesh/v1/options.proto",
            "gatemesh/v1/mesh.proto",
            "gatemesh/v1/methods.proto",
        ])
}
