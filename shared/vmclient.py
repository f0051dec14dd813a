"""The VM's side of the gateway, as the rendered script and local.start speak it with curl.

Used by the simulated VMs and by tests that play a VM."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import aiohttp


class GatewayRefused(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"gateway answered {status}: {body}")
        self.status = status
        self.body = body


class VmClient:
    def __init__(self, gateway_url: str, vm_id: str, token: str,
                 session: aiohttp.ClientSession | None = None, *, retries: int = 0,
                 cafile: str | None = None):
        self.base = gateway_url.rstrip("/")
        self.vm_id = vm_id
        self.token = token
        self._session = session
        self._own_session = session is None
        # How many times a failed call is tried again, as the rendered scripts' curl does
        # (`curl -f --retry N --retry-connrefused --retry-all-errors`: no connection, a
        # connection closed without an answer, any HTTP error); 0 (the default) fails at once.
        self.retries = retries
        # Over HTTPS: the one CA this VM trusts (the installation's), never the system's.
        self.cafile = cafile

    async def __aenter__(self) -> VmClient:
        if self._session is None:
            ssl_context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ssl_context) if ssl_context else None)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_session and self._session:
            await self._session.close()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def _call(self, method: str, path: str, **kwargs) -> aiohttp.ClientResponse:
        assert self._session, "use VmClient as an async context manager"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = await self._session.request(method, f"{self.base}{path}",
                                                       headers=self._headers, **kwargs)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
                if last:
                    raise
            else:
                if response.status < 400:
                    return response
                body = await response.text()
                if last:
                    raise GatewayRefused(response.status, body)
            await asyncio.sleep(min(2 ** attempt, 600))  # curl's back-off: 1 s, doubling
        raise AssertionError("unreachable")

    async def state(self, state: str, step: str | None = None, *, message: str | None = None,
                    detail: dict[str, Any] | None = None) -> dict:
        body = {"state": state, "step": step}
        if message is not None:
            body["message"] = message
        if detail is not None:
            body["detail"] = detail
        response = await self._call("POST", f"/v1/vms/{self.vm_id}/state", json=body)
        return await response.json()

    async def message(self, text: str, level: str = "info", *, step: str | None = None) -> None:
        body = {"level": level, "text": text}
        if step is not None:
            body["step"] = step
        await self._call("POST", f"/v1/vms/{self.vm_id}/messages", json=body)

    async def heartbeat(self, step: str | None = None) -> None:
        body = {} if step is None else {"step": step}
        await self._call("POST", f"/v1/vms/{self.vm_id}/heartbeat", json=body)

    async def host_keys(self, lines: list[str]) -> dict:
        """Report the VM's public SSH host keys (what the cutover pins)."""
        response = await self._call("POST", f"/v1/vms/{self.vm_id}/host-keys",
                                    json={"keys": lines})
        return await response.json()

    async def script(self) -> str:
        return await (await self._call("GET", f"/v1/vms/{self.vm_id}/script")).text()

    async def master(self, wait: float = 0) -> dict:
        return await (await self._call("GET", f"/v1/vms/{self.vm_id}/master", params={"wait": str(wait)})).json()

    async def replication(self) -> dict:
        return await (await self._call("GET", f"/v1/vms/{self.vm_id}/replication")).json()

    async def download(self, path: str) -> bytes:
        return await (await self._call("GET", path)).read()
