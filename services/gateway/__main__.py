"""Run the gateway as its own process: python -m services.gateway

With FERRY_GATEWAY_WORKERS=N (N > 1) this process supervises N workers on the same port
(services/gateway/workers.py); `--worker` is how it starts each of them."""

import asyncio
import sys

from services.gateway.workers import check, supervise
from services.runtime import main
from shared.logging import configure_logging
from shared.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    if "--worker" in sys.argv[1:] or settings.gateway_workers == 1:
        main([], gateway=True)
    else:
        if problem := check(settings):
            print(f"ferry gateway: {problem}", file=sys.stderr)
            sys.exit(2)
        configure_logging(settings)
        sys.exit(asyncio.run(supervise(settings.gateway_workers)))
