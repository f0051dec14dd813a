"""Ask a Ferryman process on this machine whether it is ready, for whatever supervises it:

    python -m services.healthcheck gateway               the gateway's /readyz
    python -m services.healthcheck archiver --wait 60    the archiver's, until ready or 60 s

The process is found as the environment configures it (the same FERRY_* its unit or container
reads): the gateway at FERRY_GATEWAY_PORT, any other service at FERRY_METRICS_PORT. Exit 0 when
ready, 1 when not (naming the dependency that did not answer), 2 for a bad command line. A
service without a metrics port (FERRY_METRICS_PORT=0) serves no health endpoint: nothing to
ask, exit 0 with a note. systemd's ExecStartPost (deploy/systemd) and compose's healthcheck
(docker-compose.yml) run it.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

from shared.settings import Settings
from shared.tls import gateway_scheme

POLL_S = 0.5
# A wildcard listening address is asked on loopback.
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def readyz_url(service: str, settings: Settings) -> str | None:
    if service == "gateway":
        scheme = gateway_scheme(settings)
        host, port = settings.gateway_host, settings.gateway_port
    else:
        scheme, host, port = "http", settings.metrics_host, settings.metrics_port
        if not port:
            return None
    host = WILDCARDS.get(host, host)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/readyz"


def ask(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    """(ready, what it said) from one /readyz."""
    # The process's own endpoint on this machine, asked without a token: its certificate (made
    # for its public name) is not checked, nothing secret is sent or trusted.
    context = None
    if url.startswith("https"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return True, _said(response.read())
    except urllib.error.HTTPError as exc:
        return False, _said(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"no answer at {url}: {reason}"


def _said(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return ", ".join(f"{name} {'ok' if status['ok'] else 'NOT ok'} ({status['detail']})"
                         for name, status in body["dependencies"].items()) or "no dependencies"
    except (ValueError, KeyError, TypeError, AttributeError):
        return raw.decode(errors="replace")[:200]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.healthcheck",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("service", help="gateway, or a service (archiver, creator, ...)")
    parser.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="ask again until ready or SECONDS have passed (default: ask once)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValueError as exc:  # pydantic's ValidationError: a FERRY_* value it cannot read
        print(f"the FERRY_* settings are not valid: {exc}", file=sys.stderr)
        return 2
    url = readyz_url(args.service, settings)
    if url is None:
        print(f"{args.service}: FERRY_METRICS_PORT is 0, so it serves no health endpoint; "
              "nothing checked", file=sys.stderr)
        return 0
    deadline = time.monotonic() + args.wait
    while True:
        ready, said = ask(url)
        if ready:
            print(f"{args.service} ready: {said}")
            return 0
        if time.monotonic() >= deadline:
            waited = f" after {args.wait:g} s" if args.wait else ""
            print(f"{args.service} not ready{waited}: {said}", file=sys.stderr)
            return 1
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
