//! `bench-instances --url URL [--count N] [--prefix P] [--owner INDEX]`:
//! N instances in one process, each with its own link to the gateway,
//! serving `FindVPSByLease` from a small in-memory inventory. Stops when
//! stdin closes.

fn main() -> anyhow::Result<()> {
    let args = gatemesh_bench::args::Args::parse(std::env::args().skip(1), &[])?;
    gatemesh_bench::roles::main("instances", args)
}
