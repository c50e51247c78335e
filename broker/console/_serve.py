"""Run the console with uvicorn until interrupted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import uvicorn

from ._app import create_app
from ._config import ConsoleConfig
from ._errors import ConsoleError

__all__ = ["serve"]


async def serve(config: ConsoleConfig, *, ready: Callable[[str], None] | None = None) -> None:
    """Serve until Ctrl-C / SIGTERM; ``ready`` gets the console's URL once it listens (the port
    the system chose when ``config.port`` is 0)."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            lifespan="on",
            log_level="warning",
            access_log=False,
            # Live pages keep their event streams open: on Ctrl-C they are cut after this long
            # instead of waiting for every browser to leave.
            timeout_graceful_shutdown=3,
        )
    )

    async def serving() -> None:
        try:
            await server.serve()
        except SystemExit:
            # uvicorn ends the process when the app's start-up or the bind fails (it has logged
            # why): here that is the console not starting, said by the command like any other.
            raise ConsoleError(
                f"the console did not start (listen {config.host}:{config.port}, broker {config.broker})"
            ) from None

    running = asyncio.create_task(serving())
    # uvicorn offers no "started" event to wait on, only the flag.
    while not server.started and not running.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    if server.started and ready is not None:
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{port}/")
    await running
