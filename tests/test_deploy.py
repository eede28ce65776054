"""The files in deploy/ agree with the servers and with each other.

Nothing here builds an image or starts a container. The tests read the
Dockerfile, the Compose file and the Kubernetes manifests, and check
what they say against the servers' real argument parsers, the real
ring, and one another: flags, shard names, addresses, ports and probes.
The one thing that runs is deploy/healthcheck.py, against a real gRPC
health server.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from chronoscore._ring import Ring
from coordinator.server import parse_shards

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])

# Addresses that other containers and pods can reach; the servers'
# default, 127.0.0.1, is not one of them.
ANY_ADDRESS = {"0.0.0.0", "::", "[::]"}


# -- reading the files ---------------------------------------------------


def load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return list(yaml.safe_load_all(f))


@cache
def compose() -> dict[str, Any]:
    (doc,) = load_all(DEPLOY / "compose.yaml")
    return doc  # type: ignore[no-any-return]


@cache
def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(K8S.glob("*.yaml"))
        for doc in load_all(path)
        if doc.get("kind") != "Kustomization"
    ]


def manifest(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc
        for doc in manifests()
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def k8s_argv(workload: dict[str, Any]) -> list[str]:
    box = container(workload)
    return [*box.get("command", []), *box.get("args", [])]


def compose_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else list(command)


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, with continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            pairs.append((word.upper(), rest.strip()))
    return pairs


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


# -- the servers' real flags ---------------------------------------------


@dataclass(frozen=True)
class Options:
    takes_value: dict[str, bool]
    required: frozenset[str]


@cache
def options(module: str) -> Options:
    """The flags ``python -m module`` accepts, read from its --help."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    usage, _, rest = done.stdout.partition("\n\n")

    # argparse lists each option as "--flag METAVAR" when it takes a value.
    takes_value = {
        m[1]: bool(m[2])
        for m in re.finditer(r"^ {2}(?:-\w, )?(--[\w-]+)( [A-Z][A-Z_]*)?", rest, re.M)
    }
    # In the usage line, optional flags are bracketed; the rest are required.
    required = set(re.findall(r"--[\w-]+", re.sub(r"\[[^\]]*\]", "", usage)))

    assert "--port" in takes_value, done.stdout
    return Options(takes_value, frozenset(required))


def parse(argv: list[str], module: str) -> dict[str, str]:
    """The flags of a ``python -m module`` command, each checked.

    Every flag must be one the server accepts, given once, with a value
    exactly when it takes one; every required flag must be present.
    """
    assert argv[:3] == ["python", "-m", module], argv
    accepted = options(module)
    given: dict[str, str] = {}
    tokens = iter(argv[3:])
    for token in tokens:
        assert isinstance(token, str), f"{token!r} in {argv} is not a string"
        flag, eq, value = token.partition("=")
        assert flag in accepted.takes_value, f"{module} has no flag {token!r}"
        assert flag not in given, f"{flag} is given twice in {argv}"
        if accepted.takes_value[flag] and not eq:
            value = next(tokens, "--")
            assert isinstance(value, str), f"{value!r} in {argv} is not a string"
            assert not value.startswith("--"), f"{flag} has no value in {argv}"
        given[flag] = value

    missing = accepted.required - given.keys()
    assert not missing, f"{argv} lacks {sorted(missing)}"
    return given


def port_of(flags: dict[str, str]) -> int:
    port = int(flags["--port"])
    # 0 would pick a free port, which nothing else could know.
    assert 0 < port < 65536
    return port


# -- what the files run --------------------------------------------------


def compose_services(module: str) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose()["services"].items()
        if "command" in service and compose_argv(service)[2:3] == [module]
    }


def compose_commands() -> Iterator[tuple[str, str, list[str]]]:
    for module in ("shard_node", "coordinator"):
        for name, service in compose_services(module).items():
            yield f"compose-{name}", module, compose_argv(service)


def k8s_commands() -> Iterator[tuple[str, str, list[str]]]:
    for kind in ("StatefulSet", "Deployment"):
        for doc in manifests():
            if doc["kind"] == kind:
                argv = k8s_argv(doc)
                yield f"k8s-{doc['metadata']['name']}", argv[2], argv


COMMANDS = [*compose_commands(), *k8s_commands()]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)

    assert docs
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: {doc!r} is not a mapping"
        if path.is_relative_to(K8S):
            assert doc["apiVersion"] and doc["kind"]
            assert doc.get("metadata", {}).get("name") or doc["kind"] == (
                "Kustomization"
            )


def test_the_files_describe_both_kinds_of_server() -> None:
    ids = {name for name, _, _ in COMMANDS}

    assert ids == {
        "compose-shard-0",
        "compose-shard-1",
        "compose-shard-2",
        "compose-coordinator",
        "k8s-shard",
        "k8s-coordinator",
    }


@pytest.mark.parametrize(
    ("module", "argv"),
    [(module, argv) for _, module, argv in COMMANDS],
    ids=[name for name, _, _ in COMMANDS],
)
def test_commands_use_only_flags_the_server_accepts(
    module: str, argv: list[str]
) -> None:
    flags = parse(argv, module)

    port_of(flags)
    assert flags["--host"] in ANY_ADDRESS
    if module == "shard_node":
        Ring(flags["--ring"].split(","))
    else:
        parse_shards(flags["--shards"])


def test_a_bad_flag_is_caught() -> None:
    # The checks above would pass vacuously if parse() accepted anything.
    good = ["python", "-m", "shard_node", "--name", "a", "--ring", "a"]

    parse(good, "shard_node")
    with pytest.raises(AssertionError, match="no flag"):
        parse([*good, "--shard-name", "a"], "shard_node")
    with pytest.raises(AssertionError, match="lacks"):
        parse(good[:3], "shard_node")
    with pytest.raises(AssertionError, match="no value"):
        parse([*good[:4], "--ring", "a"], "shard_node")


# -- Compose -------------------------------------------------------------


def test_compose_ring_is_the_shard_services() -> None:
    shards = compose_services("shard_node")
    flags = {name: parse(compose_argv(s), "shard_node") for name, s in shards.items()}
    ring = Ring(shards)

    assert len(shards) == 3
    for name, given in flags.items():
        assert given["--name"] == name
        assert Ring(given["--ring"].split(",")) == ring

    (coordinator,) = compose_services("coordinator").values()
    routes = parse_shards(parse(compose_argv(coordinator), "coordinator")["--shards"])
    # Whichever starts first gives a new database the same first ring.
    assert Ring(routes) == ring
    for name, address in routes.items():
        assert address == f"{name}:{port_of(flags[name])}"
        # The address a shard records for coordinators is the same one.
        assert flags[name]["--advertise"] == address


def test_compose_ports_and_healthchecks_match_the_servers() -> None:
    services = {**compose_services("shard_node"), **compose_services("coordinator")}
    (script,) = [
        rest.split()[-1] for rest in instructions("COPY") if "healthcheck.py" in rest
    ]

    for name, service in services.items():
        module = compose_argv(service)[2]
        port = port_of(parse(compose_argv(service), module))
        test = service["healthcheck"]["test"]
        assert test == ["CMD", "python", script, str(port)], name

    (coordinator,) = compose_services("coordinator").values()
    port = port_of(parse(compose_argv(coordinator), "coordinator"))
    assert [p["target"] for p in coordinator["ports"]] == [port]


def test_compose_starts_servers_after_what_they_need() -> None:
    services = compose()["services"]
    shards = compose_services("shard_node")
    (coordinator,) = compose_services("coordinator").values()

    assert set(coordinator["depends_on"]) == {"postgres", *shards}
    for shard in shards.values():
        assert set(shard["depends_on"]) == {"postgres"}
    for service in [coordinator, *shards.values()]:
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}
        for needed, how in service["depends_on"].items():
            assert how["condition"] == "service_healthy"
            assert services[needed]["healthcheck"]["test"]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]


def test_compose_servers_share_one_utf8_database() -> None:
    services = {**compose_services("shard_node"), **compose_services("coordinator")}
    postgres = compose()["services"]["postgres"]
    env = postgres["environment"]
    dsns = {s["environment"]["CHRONOSCORE_DSN"] for s in services.values()}

    (dsn,) = dsns
    url = urlsplit(dsn)
    assert url.hostname == "postgres"
    assert url.username == env["POSTGRES_USER"]
    assert url.password == env["POSTGRES_PASSWORD"]
    assert url.path == f"/{env['POSTGRES_DB']}"
    # The servers refuse any other encoding.
    assert "--encoding=UTF8" in env["POSTGRES_INITDB_ARGS"].split()
    assert postgres["image"].split(":") == ["postgres", "16"]
    for volume in postgres["volumes"]:
        assert volume.split(":")[0] in compose()["volumes"]


def test_compose_builds_the_image_from_the_repository() -> None:
    services = {**compose_services("shard_node"), **compose_services("coordinator")}

    images = {s["image"] for s in services.values()}
    assert len(images) == 1
    for service in services.values():
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


# -- Kubernetes ----------------------------------------------------------


def shard_workload() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """The StatefulSet, its headless Service and its shard's flags."""
    sts = manifest("StatefulSet", "shard")
    service = manifest("Service", sts["spec"]["serviceName"])
    return sts, service, parse(k8s_argv(sts), "shard_node")


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container(workload).get("env", [])}


def test_k8s_ring_is_the_statefulset_pod_names() -> None:
    sts, service, flags = shard_workload()
    pods = [f"{sts['metadata']['name']}-{i}" for i in range(sts["spec"]["replicas"])]

    assert Ring(flags["--ring"].split(",")) == Ring(pods)
    # Each pod's own name is its ring name.
    assert flags["--name"] == "$(POD_NAME)"
    field = env_of(sts)["POD_NAME"]["valueFrom"]["fieldRef"]
    assert field["fieldPath"] == "metadata.name"
    # Headless, so each pod gets a DNS name of its own.
    assert service["spec"]["clusterIP"] == "None"


def test_k8s_coordinator_dials_every_shard_by_pod_dns_name() -> None:
    sts, service, flags = shard_workload()
    coordinator = manifest("Deployment", "coordinator")
    routes = parse_shards(parse(k8s_argv(coordinator), "coordinator")["--shards"])
    domain = service["metadata"]["name"]

    assert Ring(routes) == Ring(flags["--ring"].split(","))
    for name, address in routes.items():
        assert address == f"{name}.{domain}:{port_of(flags)}"
    # Each shard, and a shard added later, records that same address.
    assert flags["--advertise"] == f"$(POD_NAME).{domain}:{port_of(flags)}"


@pytest.mark.parametrize(
    ("kind", "name", "service_name"),
    [("StatefulSet", "shard", "shard"), ("Deployment", "coordinator", "coordinator")],
)
def test_k8s_ports_and_probes_match_the_listening_port(
    kind: str, name: str, service_name: str
) -> None:
    workload = manifest(kind, name)
    service = manifest("Service", service_name)
    box = container(workload)
    port = port_of(parse(k8s_argv(workload), k8s_argv(workload)[2]))
    named = {p["name"]: p["containerPort"] for p in box["ports"]}

    assert list(named.values()) == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert box[probe]["grpc"] == {"port": port}, probe
    for entry in service["spec"]["ports"]:
        target = entry["targetPort"]
        assert named.get(target, target) == port
    if name == "coordinator":
        assert [p["port"] for p in service["spec"]["ports"]] == [port]

    labels = workload["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= labels.items()
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 10


@pytest.mark.parametrize("name", ["shard", "coordinator"])
def test_k8s_env_references_resolve(name: str) -> None:
    kind = "StatefulSet" if name == "shard" else "Deployment"
    workload = manifest(kind, name)
    env = env_of(workload)
    (secret_doc,) = load_all(K8S / "postgres-secret.yaml")

    # The kubelet leaves an unknown $(VAR) in place as literal text.
    for arg in container(workload)["args"]:
        for var in re.findall(r"\$\((\w+)\)", arg):
            assert var in env, f"{arg!r} names an undefined variable"

    ref = env["CHRONOSCORE_DSN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret_doc["metadata"]["name"]
    assert ref["key"] in secret_doc["stringData"]


def test_kustomization_applies_everything_but_the_example_secret() -> None:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    (namespace,) = load_all(K8S / "namespace.yaml")
    (secret_doc,) = load_all(K8S / "postgres-secret.yaml")
    others = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}

    assert set(kustomization["resources"]) == others - {"postgres-secret.yaml"}
    assert kustomization["namespace"] == namespace["metadata"]["name"]
    assert secret_doc["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert "EXAMPLE" in (K8S / "postgres-secret.yaml").read_text(encoding="utf-8")


# -- the Dockerfile ------------------------------------------------------


def test_dockerfile_exposes_the_ports_the_servers_listen_on() -> None:
    exposed = {
        int(port.split("/")[0])
        for rest in instructions("EXPOSE")
        for port in rest.split()
    }
    listening = {port_of(parse(argv, module)) for _, module, argv in COMMANDS}

    assert exposed == listening == {7000, 50051}


def test_dockerfile_installs_the_project_as_a_user() -> None:
    (base,) = instructions("FROM")
    (user,) = instructions("USER")

    assert base == "python:3.11-slim"
    assert any("pip install ." in rest for rest in instructions("RUN"))
    assert user.split(":")[0] not in {"root", "0"}
    assert instructions("ENTRYPOINT") == []
    assert instructions("CMD")[-1].startswith('["python", "-m", ')


def test_dockerfile_copies_only_paths_that_exist_and_are_not_ignored() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8")
    kept = {line[1:] for line in ignore.splitlines() if line.startswith("!")}

    sources = [
        source
        for rest in instructions("COPY")
        for source in rest.split()[:-1]
        if not source.startswith("--")
    ]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert source.rstrip("/") in kept, source


# -- deploy/healthcheck.py -----------------------------------------------


def run_healthcheck(port: int) -> int:
    done = subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode


def test_healthcheck_follows_the_servers_health_status() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        checker.set("", health_pb2.HealthCheckResponse.SERVING)
        assert run_healthcheck(port) == 0

        # What a server reports once it starts draining.
        checker.enter_graceful_shutdown()
        assert run_healthcheck(port) == 1
    finally:
        server.stop(None).wait()

    assert run_healthcheck(port) == 1
