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
import secrets
import threading
import time

from shopsearch.errors import ServerError
from shopsearch.ops.admin_key import ADMIN_HEADER
from shopsearch.ops.server import TritonServer

DEAD_STUB = re.compile(r"Stub process '(?P<model>.+)_\d+_\d+' is not healthy")


class Supervisor:
    """`server`: a TritonServer this process started (restartable), or an external one given by
    `http_url` and `admin_key` (a sidecar: the container runtime restarts the server itself)."""

    def __init__(self, server: TritonServer | None = None, probe_query: str = "supervisor probe", interval_s: float = 2.0,
                 log=print, http_url: str | None = None, admin_key: str | None = None):
        if server is None and http_url is None:
            raise ServerError("supervisor: give a server it started or the URL of one to watch")
        self.server, self.probe_query, self.interval_s, self.log = server, probe_query, interval_s, log
        self.http_url = server.http_url if server else http_url
        self.admin_key = server.admin_key if server else admin_key
        self.events: list[tuple[float, str]] = []

    def _record(self, what: str) -> str:
        self.events.append((time.time(), what))
        self.log(f"supervisor: {what}")
        return what

    def reload(self, model: str) -> None:
        """Reload `model` with the config it runs now plus a fresh `reload_nonce` parameter (which
        the steps ignore): Triton skips a reload whose config equals the loaded one (measured: the
        same config sent back was a no-op in some runs), so the nonce makes it start new instances
        (new stubs), swapped in when ready."""
        import tritonclient.http as httpclient

        if not self.admin_key:
            raise ServerError(f"{model}: cannot reload a model without model control (start the server with an admin key)")
        headers = {ADMIN_HEADER: self.admin_key}
        client = httpclient.InferenceServerClient(self.http_url, network_timeout=300)
        try:
            config = client.get_model_config(model, headers=headers)
            config.setdefault("parameters", {})["reload_nonce"] = {"string_value": f"{time.time():.6f}"}
            client.load_model(model, headers=headers, config=json.dumps(config))
        finally:
            client.close()

    def probe_text(self) -> str:
        """The probe query with a fresh random number: a repeated probe would be answered from
        Triton's response cache without reaching the models, and a dead stub would go unnoticed
        (random, not counted: a restarted supervisor must not repeat an earlier process's probes)."""
        return f"{self.probe_query} {secrets.randbelow(10**9)}"

    def check_once(self) -> str | None:
        """One probe; returns what was repaired, or None when all was well."""
        from shopsearch.clients.search import SearchClient

        if self.server is not None and (self.server.process is None or self.server.process.poll() is not None):
            code = None if self.server.process is None else self.server.process.returncode
            self.server.stop()
            self.server.start()
            return self._record(f"tritonserver had exited (code {code}); restarted and ready")
        client = SearchClient(self.http_url, timeout_s=30)
        try:
            client.search([self.probe_text()])
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
