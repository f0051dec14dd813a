"""bench.gateway's baseline: a bare aiohttp handler (parse the JSON body, answer JSON) on the
gateway's two VM routes, run as its own process the way the gateway is (several of them share
the port with SO_REUSEPORT, as the gateway's workers do). It runs until SIGTERM.

    python -m bench.bare --port 8471
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def handler(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": request.match_info["vm_id"], "seen": body})


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/vms/{vm_id}/state", handler)
    application.router.add_post("/v1/vms/{vm_id}/messages", handler)
    application.router.add_get("/readyz", lambda _: web.json_response({"ready": True}))
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # run_app stops on SIGTERM (GracefulExit) and SIGINT.
    web.run_app(app(), host="127.0.0.1", port=args.port, reuse_port=True, access_log=None,
                print=None)


if __name__ == "__main__":
    main()
