"""Calls FindVPSByLease on a gatemesh gateway from Python, as plain gRPC.

Stubs come from the repo's protos (grpcio-tools; options.proto is imported
by methods.proto):

    python3 -m grpc_tools.protoc -I proto/proto --python_out=gen \
        --grpc_python_out=gen gatemesh/v1/methods.proto gatemesh/v1/options.proto
    python3 examples/python/find_vps.py 127.0.0.1:1537 "$GATEWAY_API_SECRET" prod 52:54:00:12:34:56

Prints `<vps_id> (answered by <instance>)`, or the call's status code and
message; exits 0, or 64 + the code (as the gatemesh CLI does).
"""

import sys

import grpc

sys.path.insert(0, "gen")
from gatemesh.v1 import methods_pb2, methods_pb2_grpc  # noqa: E402


def main(address, secret, environment, mac):
    channel = grpc.insecure_channel(address)
    stub = methods_pb2_grpc.InstanceMethodsStub(channel)
    metadata = [
        ("authorization", f"Bearer {secret}"),
        ("gatemesh-environment", environment),
    ]
    try:
        answer, call = stub.FindVPSByLease.with_call(
            methods_pb2.FindVPSByLeaseRequest(mac=mac), metadata=metadata, timeout=5
        )
    except grpc.RpcError as error:
        print(f"{error.code().name}: {error.details()}")
        return 64 + error.code().value[0]
    instance = dict(call.initial_metadata()).get("gatemesh-instance")
    print(f"{answer.vps_id} (answered by {instance})")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
