"""Exit 0 if a ChronoScore server answers SERVING to a gRPC health check.

Container healthchecks run it inside the server's container as
``python healthcheck.py PORT`` (or ``HOST:PORT``). It asks
grpc.health.v1 about the empty service name, which every ChronoScore
server sets to SERVING once it serves and to NOT_SERVING as soon as it
starts draining, so a draining server stops counting as healthy at once.
It needs nothing beyond the packages the image already installs.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2 as _health
from grpc_health.v1 import health_pb2_grpc as _health_grpc

__all__ = ["check", "main"]


def check(target: str, timeout: float = 3.0) -> str:
    """The server's health status name, or the gRPC error it gave."""
    with grpc.insecure_channel(target) as channel:
        stub = _health_grpc.HealthStub(channel)
        request = _health.HealthCheckRequest(service="")
        try:
            reply = stub.Check(request, timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return str(_health.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: healthcheck.py PORT | HOST:PORT", file=sys.stderr)
        # Not 2: Docker reserves that exit status of a healthcheck.
        return 1
    target = argv[0] if ":" in argv[0] else f"127.0.0.1:{argv[0]}"

    status = check(target)
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
