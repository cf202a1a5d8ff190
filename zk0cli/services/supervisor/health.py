"""Health over HTTP: a supervised process's own health URL, and probes of the remote endpoints a service needs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from zk0cli.services.supervisor.spec import ProbeSpec, ProbeState, state_time

if TYPE_CHECKING:
    import ssl

    import httpx


class HttpCheck:
    """GET one URL; TLS verified against a pinned CA; a fresh connection each time."""

    def __init__(self, url: str, ca: str, ok_status: list[int]):
        self.url = url
        self.ca = ca
        self.ok_status = ok_status
        self._client: httpx.Client | None = None

    def check(self) -> tuple[bool, str]:
        """(ok, detail): ``HTTP 200``, ``connection refused``, ..."""
        import httpx

        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.url.startswith("https://"):
                import ssl

                verify = ssl.create_default_context(cafile=self.ca or None)
            self._client = httpx.Client(verify=verify, timeout=1.0, limits=httpx.Limits(max_keepalive_connections=0))
        try:
            status = self._client.get(self.url).status_code
        except httpx.HTTPError as exc:
            return False, describe_http_error(exc)
        return status in self.ok_status, f"HTTP {status}"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def describe_http_error(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "TLS certificate not trusted by the pinned CA"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    return text.splitlines()[0][:200]


class Probe:
    """A remote dependency (the server, for a node): reported in state and logs, never acted on."""

    def __init__(self, spec: ProbeSpec):
        self.spec = spec
        self.http = HttpCheck(spec.url, spec.ca, spec.ok_status)
        self.ok: bool | None = None
        self.detail = "not checked yet"
        self.failures = 0
        self.since: float | None = None
        self.checked_at: str | None = None
        self.next_mono = 0.0

    def to_state(self) -> ProbeState:
        return {
            "url": self.spec.url,
            "ok": self.ok,
            "detail": self.detail,
            "consecutive_failures": self.failures,
            "since": state_time(self.since),
            "checked_at": self.checked_at,
            "next_check_in_s": round(max(0.0, self.next_mono - time.monotonic()), 1),
        }
