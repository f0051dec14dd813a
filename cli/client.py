"""The operator's HTTP client for the gateway (synchronous: the CLI does one thing at a time)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from shared.settings import Settings


class GatewayError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        self.status = status
        self.body = body
        super().__init__(body.get("error", f"HTTP {status}"))


@dataclass
class Gateway:
    url: str
    token: str
    # With TLS: the certificate to trust (the gateway's own, when it is self-signed).
    cafile: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        from services.gateway.app import operator_token

        tls = settings.gateway_tls_cert is not None
        base = f"{'https' if tls else 'http'}://{settings.gateway_host}:{settings.gateway_port}"
        return cls(base, operator_token(settings),
                   str(settings.gateway_tls_cert) if tls else None)

    def call(self, method: str, path: str, body: bytes | dict | None = None,
             content_type: str = "application/json") -> dict[str, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw.decode(errors="replace")[:500]}
            raise GatewayError(exc.code, payload) from None
        except urllib.error.URLError as exc:
            raise GatewayError(0, {"error": f"cannot reach the gateway at {self.url}: {exc.reason}"}) from None
        except (TimeoutError, ConnectionError) as exc:  # after connecting: no URLError wraps it
            reason = (f"did not answer within {self.timeout_s:g} s"
                      if isinstance(exc, TimeoutError) else str(exc))
            raise GatewayError(0, {"error": f"{method} {path}: the gateway at {self.url} "
                                            f"{reason}"}) from None
