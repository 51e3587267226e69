"""Beyond capacity, requests are refused at once with a clear status instead of queueing without
bound: the same open-loop burst against the built repository (queue policy on) and against a copy
without the policy, on real tritonservers; the server answers normally right after."""

from __future__ import annotations

import pytest

from shopsearch.clients.search import SearchClient
from shopsearch.perf.flood import flood
from shopsearch.triton.repository import read_config
from shopsearch.ops.server import TritonServer
from shopsearch.triton.tuning import edited_copy

pytestmark = pytest.mark.integration

BURST = 3000  # about 6 s of this machine's capacity, sent in 2-3 s
REFUSALS = {"Exceeds maximum queue size", "Request timeout expired"}


def unbounded_queue_repository(src, dst):
    """`src` without the overload policy: every model queues without limit (the comparison that
    shows what max_queue_size and the queue timeout buy under overload)."""
    def edit(config):
        if config.HasField("dynamic_batching"):
            config.dynamic_batching.ClearField("default_queue_policy")

    return edited_copy(src, dst, edit)


def test_overload_is_refused_fast_and_answered_requests_stay_bounded(triton_server, built_repo, tmp_path):
    steps = [s.model_name for s in read_config(built_repo / "search").ensemble_scheduling.step]
    # The tokenizer (first, fast, one request per execution) has no queue policy; every model after it has one.
    assert steps[0] == "tokenizer" and not read_config(built_repo / "tokenizer").dynamic_batching.HasField("default_queue_policy")
    policies = [read_config(built_repo / m).dynamic_batching.default_queue_policy for m in steps[1:]]
    assert all(p.max_queue_size > 0 and p.default_timeout_microseconds > 0 for p in policies)
    # An answered request waited in each bounded queue at most that model's timeout (plus the tokenizer's short queue).
    bound_ms = sum(p.default_timeout_microseconds for p in policies) / 1000 + 1000

    flood(triton_server.grpc_url, 50)  # warm
    bounded = flood(triton_server.grpc_url, BURST)
    after = flood(triton_server.grpc_url, 50)
    with TritonServer(unbounded_queue_repository(built_repo, tmp_path / "unbounded")) as server:
        flood(server.grpc_url, 50)
        unbounded = flood(server.grpc_url, BURST)
    print(f"\noverload, queue policy on:  {bounded.summary()} {dict(bounded.errors)}"
          f"\noverload, no queue policy:  {unbounded.summary()}"
          f"\nright after the burst:      {after.summary()}")

    assert len(bounded.accepted_ms) + bounded.rejected == BURST
    assert bounded.rejected > 0 and set(bounded.errors) <= REFUSALS, bounded.errors
    # Refused at queue entry ("Exceeds maximum queue size"), not after waiting out a queue timeout.
    # How long a refusal takes is printed, not asserted: a refused request first waits in the
    # tokenizer's queue, which has no policy, so its latency is that queue's length under the burst
    # (refused p99 seen from 0.6 to 2.8 s on this 2-core machine, old and new code alike).
    assert bounded.errors["Exceeds maximum queue size"] >= 0.95 * bounded.rejected, bounded.errors
    assert bounded.percentile("accepted", 99) < bound_ms
    assert unbounded.rejected == 0
    # How the answered tail compares with the unbounded queue's is printed above, not asserted: on
    # this 2-core machine it swings run to run (seen 1,288 vs 1,838 ms and 1,794 vs 1,064 ms), and
    # timed comparisons belong in benchmarks. The guarantee asserted is the bound: answered p99 <
    # the queue timeouts, refusals at queue entry.
    assert after.rejected == 0
    client = SearchClient(triton_server.http_url)
    assert client.is_ready() and len(client.search(["blue tent"])[0]) == 10
    client.close()
