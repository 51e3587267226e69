"""Keep one tritonserver answering: what `make serve` runs beside the server.

Two faults Triton does not heal by itself (measured on tritonserver 2.51, see tests/test_faults.py):
- a Python-backend stub process dies (OOM kill, segfault in a native library): the model stays
  READY in every health endpoint while each request to it fails with "Stub process '<model>_0_0'
  is not healthy", indefinitely. The supervisor's probe query sees it and reloads that model
  through the model-control API (a reload starts fresh stubs; Triton swaps them in when ready).
- the server process dies: the supervisor starts it again on the same ports.
Clients ride through both with `SearchClient(..., retry_s=...)`, which retries transient failures.
"""

from __future__ import annotations

import json
import re
import threading
import time

from shopsearch.errors import ServerError
from shopsearch.serving.server import ADMIN_HEADER, TritonServer

DEAD_STUB = re.compile(r"Stub process '(?P<model>.+)_\d+_\d+' is not healthy")


class Supervisor:
    def __init__(self, server: TritonServer, probe_query: str = "supervisor probe", interval_s: float = 2.0,
                 ensemble: str = "search", log=print):
        self.server, self.probe_query, self.interval_s, self.ensemble, self.log = server, probe_query, interval_s, ensemble, log
        self.events: list[tuple[float, str]] = []

    def _record(self, what: str) -> str:
        self.events.append((time.time(), what))
        self.log(f"supervisor: {what}")
        return what

    def reload(self, model: str) -> None:
        """Reload `model` with the config it runs now: Triton treats a load request that carries a
        config as a change, so new instances (new stubs) start and replace the broken ones."""
        import tritonclient.http as httpclient

        if not self.server.admin_key:
            raise ServerError(f"{model}: cannot reload a model without model control (start the server with an admin key)")
        headers = {ADMIN_HEADER: self.server.admin_key}
        client = httpclient.InferenceServerClient(self.server.http_url, network_timeout=300)
        try:
            config = client.get_model_config(model)
            client.load_model(model, headers=headers, config=json.dumps(config))
        finally:
            client.close()

    def check_once(self) -> str | None:
        """One probe; returns what was repaired, or None when all was well."""
        from shopsearch.serving.client import SearchClient

        if self.server.process is None or self.server.process.poll() is not None:
            code = None if self.server.process is None else self.server.process.returncode
            self.server.stop()
            self.server.start()
            return self._record(f"tritonserver had exited (code {code}); restarted and ready")
        client = SearchClient(self.server.http_url, timeout_s=30)
        try:
            client.search([self.probe_query])
            return None
        except Exception as exc:  # noqa: BLE001 - any probe failure is examined below
            dead = DEAD_STUB.search(str(exc))
            if dead is None:
                return None  # overload refusals and the like heal themselves
            model = dead.group("model")
            self.reload(model)
            return self._record(f"{model}: its Python stub had died; model reloaded")
        finally:
            client.close()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - keep supervising; say what failed
                self._record(f"repair failed: {exc}")
            stop.wait(self.interval_s)
