"""``aggregator.serve``'s app under uvicorn on 127.0.0.1:0, in a thread, for tests that request it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from aggregator.serve import make_server


class AppServer:
    """``with AppServer(app) as client:`` serves ``app`` while the block runs; ``client`` talks to it."""

    def __init__(self, app: Any) -> None:
        self.server = make_server(app, "127.0.0.1", 0)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)

    def __enter__(self) -> httpx.Client:
        self.thread.start()
        for _ in range(1000):
            if self.server.started or not self.thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert self.server.started, "the server did not start"
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.server.port}", trust_env=False, timeout=10)
        return self.client

    def __exit__(self, *exc_info: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(timeout=10)
