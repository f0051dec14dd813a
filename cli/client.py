"""The operator's HTTP client for the gateway (synchronous: the CLI does one thing at a time)."""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from shared.settings import Settings


class GatewayError(Exception):
    """The gateway refused a request (`status` its HTTP status), or no answer came (`status`
    0: `unreachable` before it was sent, `lost` after, `untrusted` for a certificate the client
    does not trust, `garbled` for an answer that is not the gateway's JSON)."""

    def __init__(self, status: int, body: dict[str, Any], kind: str = "refused"):
        self.status = status
        self.body = body
        self.kind = kind if status == 0 else "refused"
        super().__init__(body.get("error", f"HTTP {status}"))

    @property
    def unavailable(self) -> bool:
        """Worth retrying: no answer, or the gateway's own dependencies are away (503)."""
        return self.kind in ("unreachable", "lost") or self.status == 503


@dataclass
class Gateway:
    url: str
    token: str
    # With TLS: the certificate to trust (the gateway's own, when it is self-signed).
    cafile: str | None = None
    timeout_s: float = 30.0
    # With TLS: do not check the certificate at all (a context's `insecure: true`).
    insecure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Gateway:
        from services.gateway.app import operator_token

        from shared.tls import gateway_scheme, trusted_ca

        ca = trusted_ca(settings)
        base = f"{gateway_scheme(settings)}://{settings.gateway_host}:{settings.gateway_port}"
        return cls(base, operator_token(settings), str(ca) if ca else None)

    def call(self, method: str, path: str, body: bytes | dict | None = None,
             content_type: str = "application/json") -> dict[str, Any]:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s,
                                        context=self._tls()) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw.decode(errors="replace")[:500]}
            raise GatewayError(exc.code, payload) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise GatewayError(0, {"error": f"the gateway at {self.url} has a certificate "
                                   f"this client does not trust ({exc.reason.verify_message}): "
                                   "give its CA (a context's ca-file, "
                                   "FERRY_GATEWAY_TLS_CERT, or the installation's "
                                   "FERRY_STATE_DIR)"}, "untrusted") from None
            raise GatewayError(0, {"error": f"cannot reach the gateway at {self.url}: "
                                            f"{exc.reason}"}, "unreachable") from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            # After connecting (no URLError wraps these): the answer did not come, or stopped.
            reason = (f"did not answer within {self.timeout_s:g} s"
                      if isinstance(exc, TimeoutError) else
                      f"dropped the connection ({type(exc).__name__}: {exc})".replace(": )", ")"))
            raise GatewayError(0, {"error": f"{method} {path}: the gateway at {self.url} "
                                            f"{reason}"}, "lost") from None
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise GatewayError(0, {"error": f"{method} {path}: {self.url} answered with something "
                                            "that is not the gateway's JSON (is it the gateway's "
                                            "address?)"}, "garbled") from None

    def _tls(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https://"):
            return None
        if self.insecure:
            # The operator asked for it (`insecure: true`): encrypted, but to whoever answers.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=self.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise GatewayError(0, {"error": f"cannot read the CA file {self.cafile} to trust the "
                               f"gateway at {self.url}: {getattr(exc, 'strerror', None) or exc}"},
                               "untrusted") from None
