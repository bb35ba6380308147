// A second binding of a wire name with other types: refused, Method is
// sealed to the types generated from methods.proto.
use gatemesh_proto::Method;
use gatemesh_proto::pb;

struct FakeFind;

impl Method for FakeFind {
    const NAME: &'static str = "FindVPSByLease";
    const SERVICE: &'static str = "gatemesh.v1.InstanceMethods";
    const SERVED_BY: gatemesh_proto::Side = gatemesh_proto::Side::Instance;
    type Request = pb::GetLeasesRequest;
    type Response = pb::GetLeasesResponse;
}

fn main() {}
