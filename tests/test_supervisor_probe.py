"""The supervisor's probe must reach the models: with Triton's response cache on, a repeated probe
query would be answered from the cache and a dead Python stub would never be seen."""

from __future__ import annotations

from shopsearch.ops.supervisor import Supervisor


def test_every_probe_is_a_query_the_cache_has_not_seen(monkeypatch):
    sent: list[str] = []

    class RecordingClient:
        def __init__(self, *args, **kwargs):
            pass

        def search(self, queries, **kwargs):
            sent.extend(queries)
            return [[]]

        def close(self):
            pass

    monkeypatch.setattr("shopsearch.clients.search.SearchClient", RecordingClient)
    supervisor = Supervisor(http_url="127.0.0.1:1", log=lambda m: None)
    for _ in range(50):
        assert supervisor.check_once() is None
    assert len(sent) == 50 and len(set(sent)) == 50
    assert all(q.startswith("supervisor probe ") for q in sent)
    # A second supervisor (a restart) does not repeat the first one's probes either.
    again = Supervisor(http_url="127.0.0.1:1", log=lambda m: None)
    again.check_once()
    assert sent[-1] not in sent[:-1]
