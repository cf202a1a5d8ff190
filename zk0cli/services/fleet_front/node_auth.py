"""Node auth, checked at the front before a body byte is forwarded: what Flower's SuperNode signs
(an ECDSA-SHA256 signature over an ISO timestamp), against the keys of ``server-nodes.json``."""

from __future__ import annotations

import base64
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from zk0cli.core import files
from zk0cli.core.childlog import child_logger
from zk0cli.services.fleet_front.rules import FIRST_CONTACT_PATHS

log = child_logger("fleet_front")
# Flower's node-auth window (flwr/superlink/routers/fleet/node_auth.py): -5 s < age < 305 s.
TIMESTAMP_MIN_AGE_S = -5.0
TIMESTAMP_MAX_AGE_S = 305.0
PUBLIC_KEY_HEADER = b"flwr-public-key"
TIMESTAMP_HEADER = b"flwr-timestamp"
SIGNATURE_HEADER = b"flwr-signature"


def _spki_der(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError("not an EC public key")
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


class NodeRegistry:
    """The public keys of the nodes registered with ``zk0 server nodes add``, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._mtime_ns: int | None = None
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def keys(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        try:
            mtime_ns = os.stat(self.path).st_mtime_ns
        except OSError:
            mtime_ns = None
        if mtime_ns != self._mtime_ns:
            self._mtime_ns = mtime_ns
            self._keys = self._load()
        return self._keys

    def _load(self) -> dict[bytes, ec.EllipticCurvePublicKey]:
        keys: dict[bytes, ec.EllipticCurvePublicKey] = {}
        entries = files.read_json(self.path, default={})
        for entry in entries.values() if isinstance(entries, dict) else ():
            try:
                key = serialization.load_ssh_public_key(str(entry["public_key"]).encode())
                keys[_spki_der(key)] = key  # type: ignore[assignment]
            except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
                log.warning("server-nodes.json: skipped an entry without a usable EC public key")
        return keys

    def refusal(self, path: bytes, headers: Sequence[tuple[bytes, bytes]]) -> str | None:
        """Why this request's node-auth headers fail (None: they pass), checked as Flower's SuperLink does."""
        values = {name.lower(): value for name, value in headers}
        try:
            pem = base64.b64decode(values[PUBLIC_KEY_HEADER], validate=True)
            signature = base64.b64decode(values[SIGNATURE_HEADER], validate=True)
            timestamp = values[TIMESTAMP_HEADER]
            claimed = _spki_der(serialization.load_pem_public_key(pem))
        except (KeyError, ValueError, TypeError, UnsupportedAlgorithm):
            return "no node auth"
        key: object = self.keys().get(claimed)
        if key is None and path in FIRST_CONTACT_PATHS:
            # The SuperLink answers an unregistered key with its own "not registered" error, which
            # zk0 node join explains; the body is capped small, so the key need only sign correctly.
            key = serialization.load_pem_public_key(pem)
        if not isinstance(key, ec.EllipticCurvePublicKey):
            return "unknown node"
        try:
            signed_at = datetime.datetime.fromisoformat(timestamp.decode("ascii"))
            age = (datetime.datetime.now(datetime.UTC) - signed_at).total_seconds()
        except (ValueError, TypeError, UnicodeError):
            return "bad timestamp"
        if not TIMESTAMP_MIN_AGE_S < age < TIMESTAMP_MAX_AGE_S:
            return "stale timestamp"
        try:
            key.verify(signature, timestamp, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return "bad signature"
        return None
