"""Run the gateway app under uvicorn: in a thread beside tritonserver (`make serve`), or on its own
(`shopsearch gateway`, e.g. the Kubernetes Service clients reach, with Triton cluster-internal)."""

from __future__ import annotations

import threading
import time

from shopsearch.errors import ServerError
from shopsearch.gateway.app import create_app
from shopsearch.gateway.backend import TritonBackend
from shopsearch.gateway.schema import GatewayLimits


class GatewayServer:
    def __init__(self, triton_grpc_url: str, host: str = "127.0.0.1", port: int = 8080,
                 limits: GatewayLimits = GatewayLimits(), backend=None):
        import uvicorn

        self.host, self.port = host, port
        app = create_app(backend or TritonBackend(triton_grpc_url, limits.timeout_s), limits)
        # Keep-alive and header limits bound what an idle or slow client can hold.
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            self._server.run()
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits (SystemExit) when it cannot bind
            self._failure = exc

    def start(self, timeout: float = 30.0) -> "GatewayServer":
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._thread.start()
        deadline = time.time() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.time() > deadline:
                raise ServerError(f"gateway did not start on {self.url} (port in use?)")
            time.sleep(0.05)
        return self

    def serve_forever(self) -> None:
        """In the calling thread, until SIGINT / SIGTERM (uvicorn's own signal handling)."""
        self._server.run()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> "GatewayServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
