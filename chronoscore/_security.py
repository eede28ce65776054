"""TLS, mutual TLS and bearer tokens, configured by file paths.

- Between the coordinator and the shards: mutual TLS. A shard started
  with ``--tls-client-ca`` accepts only callers whose certificate that
  CA signed: the cluster credential.
- On the public API: TLS, and bearer tokens with ``read`` and ``write``
  scopes read from a JSON file::

      {"tokens": [{"name": "game-server", "sha256": "<hex digest>",
                   "scopes": ["read", "write"]}]}

  The file holds digests, not tokens. A call without a known token gets
  UNAUTHENTICATED; one whose token lacks the scope gets PERMISSION_DENIED.

Without these flags everything is plaintext, meant for loopback.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from ._server import refusal
from .errors import FailedPrecondition

__all__ = [
    "TlsFiles",
    "PLAINTEXT",
    "server_credentials",
    "channel_credentials",
    "Tokens",
    "TokenCheck",
    "READ",
    "WRITE",
    "token_digest",
    "add_tls_arguments",
    "tls_files",
]

READ = "read"
WRITE = "write"

_WRITES = {
    "CreateLeaderboard",
    "DeleteLeaderboard",
    "SubmitScore",
    "SubmitScores",
    "RemoveEntry",
    "RemoveUser",
    "UpsertUser",
}
_STREAMS = {"WatchTop"}
_PUBLIC = "/chronoscore.v1.LeaderboardService/"


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: this side's certificate and key, and a CA to trust."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __bool__(self) -> bool:
        return any((self.cert, self.key, self.ca))


PLAINTEXT = TlsFiles()


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FailedPrecondition(f"cannot read the {what} {path}: {exc}") from None


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials | None:
    """TLS for a server; with ``ca``, clients must present a certificate."""
    if not files:
        return None
    if files.cert is None or files.key is None:
        raise FailedPrecondition("TLS needs both a certificate and a key file")
    key, cert = _read(files.key, "TLS key"), _read(files.cert, "TLS certificate")
    ca = _read(files.ca, "client CA")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials | None:
    """TLS for a client; with ``cert`` and ``key``, mutual TLS."""
    if not files:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(files.ca, "CA"),
        private_key=_read(files.key, "TLS key"),
        certificate_chain=_read(files.cert, "TLS certificate"),
    )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """Known token digests and their scopes."""

    def __init__(self, scopes: dict[str, frozenset[str]]) -> None:
        self._scopes = scopes

    @classmethod
    def load(cls, path: Path) -> Tokens:
        text = _read(path, "tokens file") or b""
        try:
            doc = json.loads(text)
            scopes = dict(_token_entry(entry) for entry in doc["tokens"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FailedPrecondition(
                f"tokens file {path} must be"
                ' {"tokens": [{"sha256": ..., "scopes": [...]}]}: ' + str(exc)
            ) from None
        return cls(scopes)

    def scopes(self, token: str) -> frozenset[str] | None:
        digest = token_digest(token)
        for known, scopes in self._scopes.items():
            if hmac.compare_digest(known, digest):
                return scopes
        return None


def _token_entry(entry: dict[str, Any]) -> tuple[str, frozenset[str]]:
    """(digest, scopes) of one tokens-file entry; ValueError if it could
    never match a token or grant a scope."""
    digest = entry["sha256"]
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise ValueError(
            f"sha256 {digest!r} is not a SHA-256 hex digest of a token"
            " (printf %s TOKEN | sha256sum)"
        )
    scopes = entry["scopes"]
    if not isinstance(scopes, list) or not scopes:
        raise ValueError(f"scopes {scopes!r} must be a non-empty list")
    unknown = [s for s in scopes if s not in (READ, WRITE)]
    if unknown:
        raise ValueError(f"scopes {unknown!r} are not {READ!r} or {WRITE!r}")
    return digest.lower(), frozenset(scopes)


class TokenCheck(aio.ServerInterceptor):  # type: ignore[misc]
    """Bearer tokens on the public API; health and reflection stay open."""

    def __init__(self, tokens: Tokens) -> None:
        self.tokens = tokens
        self._unauthenticated = refusal(
            grpc.StatusCode.UNAUTHENTICATED,
            "a valid bearer token is required (authorization: Bearer <token>)",
        )
        self._denied = {
            scope: refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this token lacks the {scope!r} scope",
            )
            for scope in (READ, WRITE)
        }

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if not details.method.startswith(_PUBLIC):
            return await continuation(details)
        method = details.method[len(_PUBLIC) :]
        shape = 1 if method in _STREAMS else 0
        header = dict(details.invocation_metadata or ()).get("authorization", "")
        scheme, _, token = str(header).partition(" ")
        scopes = self.tokens.scopes(token) if scheme.lower() == "bearer" else None
        if scopes is None:
            return self._unauthenticated[shape]
        needed = WRITE if method in _WRITES else READ
        if needed not in scopes:
            return self._denied[needed][shape]
        return await continuation(details)


def add_tls_arguments(
    parser: argparse.ArgumentParser, prefix: str, ca_help: str
) -> None:
    """Add ``--{prefix}cert``, ``--{prefix}key`` and a CA flag."""
    parser.add_argument(f"--{prefix}cert", type=Path, help="PEM certificate")
    parser.add_argument(f"--{prefix}key", type=Path, help="PEM private key")
    ca = "client-ca" if prefix == "tls-" else "ca"
    parser.add_argument(f"--{prefix}{ca}", type=Path, help=ca_help)


def tls_files(args: argparse.Namespace, prefix: str) -> TlsFiles:
    """The files named by the flags :func:`add_tls_arguments` added."""
    stem = prefix.replace("-", "_")
    ca = "client_ca" if prefix == "tls-" else "ca"
    return TlsFiles(
        getattr(args, f"{stem}cert"),
        getattr(args, f"{stem}key"),
        getattr(args, f"{stem}{ca}"),
    )
