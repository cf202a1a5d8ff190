"""The node-auth headers Flower's SuperNode adds to every Fleet call, made the same way for tests."""

from __future__ import annotations

import base64
import datetime

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


def signed_headers(
    key: ec.EllipticCurvePrivateKey, age_s: float = 0.0, *, signer: ec.EllipticCurvePrivateKey | None = None
) -> list[tuple[str, str]]:
    """``key``'s public key, a timestamp ``age_s`` old and its ECDSA-SHA256 signature (by ``signer``
    when given: a forgery that names one key and signs with another)."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    stamp = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=age_s)).isoformat()
    signature = (signer or key).sign(stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    return [
        ("flwr-public-key", base64.b64encode(pem).decode()),
        ("flwr-timestamp", stamp),
        ("flwr-signature", base64.b64encode(signature).decode()),
    ]
