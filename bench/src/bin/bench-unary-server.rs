//! `bench-unary-server [--port P]`: the unary baseline server. Prints its
//! port as `{"port":P}` and stops when stdin closes.

fn main() -> anyhow::Result<()> {
    let args = gatemesh_bench::args::Args::parse(std::env::args().skip(1), &[])?;
    gatemesh_bench::roles::main("unary-server", args)
}
