"""The custom metrics each served step reports, computed in-process from its inputs and outcomes."""

import time

import numpy as np

from shopsearch.errors import InvalidInputError
from shopsearch.serving.pipeline import InProcessEnsemble
from shopsearch.serving.metrics import (
    CANDIDATES, EMPTY, QUERIES, QUERY_CHARS, QUERY_TOKENS, REJECTED, MetricSender, merged, observations,
)


def test_each_step_reports_what_it_saw(unit_repo):
    pipeline = InProcessEnsemble.from_repository(unit_repo)
    tokenizer, embedder, ranker, postprocess = pipeline.steps
    requests = [{"QUERY": np.array([[b"blue tent"], ["frying pan 12 inch".encode()]], dtype=object)}, {"QUERY": np.array([[b"  "]], dtype=object)}]
    outcomes = tokenizer.run(requests)
    seen = observations("tokenizer", requests, outcomes)
    assert (REJECTED, 1.0) in seen and isinstance(outcomes[1], InvalidInputError)
    assert sorted(v for s, v in seen if s is QUERY_CHARS) == [9.0, 18.0]
    assert all(v >= 2 for s, v in seen if s is QUERY_TOKENS) and sum(s is QUERY_TOKENS for s, _ in seen) == 2

    state = {**requests[0], **outcomes[0]}
    state.update(embedder.run([state])[0])
    ranked = ranker.run([state])[0]
    pools = [v for s, v in observations("ranker", [state], [ranked]) if s is CANDIDATES]
    # The unit build serves hybrid ranking: BM25 and dense candidates, merged (at most both lists).
    assert len(pools) == 2 and all(ranker.n_candidates <= v <= ranker.hybrid.n_dense + ranker.hybrid.n_lexical for v in pools)
    state.update(ranked)
    final = postprocess.run([state])[0]
    assert observations("postprocess", [state], [final]) == [(QUERIES, 2.0), (EMPTY, 0.0)]
    no_hits = {**final, "PRODUCT_IDS": np.full_like(final["PRODUCT_IDS"], b"")}
    assert observations("postprocess", [state], [no_hits]) == [(QUERIES, 2.0), (EMPTY, 2.0)]


def test_recommendation_steps_report_history_unknown_ids_and_fallbacks(unit_repo, tiny_interactions):
    from shopsearch.core.results import id_rows
    from shopsearch.serving.metrics import HISTORY_ITEMS, POPULARITY, RECOMMENDATIONS, UNKNOWN

    lookup, encoder, ranker, post = InProcessEnsemble.from_repository(unit_repo, "recommend").steps
    ids = tiny_interactions.item_ids
    state = {"HISTORY": id_rows([[ids[1], "nope", ids[2]], ["gone"]])}
    found = lookup.run([state])[0]
    assert observations("item_lookup", [state], [found]) == [(HISTORY_ITEMS, 2.0), (HISTORY_ITEMS, 0.0), (UNKNOWN, 2.0)]
    for step in (encoder, ranker):
        state.update(found)
        found = step.run([state])[0]
    state.update(found)
    answered = post.run([state])[0]
    assert observations("rec_postprocess", [state], [answered]) == [(RECOMMENDATIONS, 2.0), (POPULARITY, 1.0)]


def test_a_batch_sends_one_increment_per_counter_and_every_histogram_sample():
    batch = [(QUERIES, 2.0), (EMPTY, 0.0), (QUERY_CHARS, 9.0), (QUERIES, 1.0), (EMPTY, 0.0), (QUERY_CHARS, 18.0), (REJECTED, 1.0)]
    assert merged(batch) == [(QUERY_CHARS, 9.0), (QUERY_CHARS, 18.0), (QUERIES, 3.0), (REJECTED, 1.0)]
    assert merged([(EMPTY, 0.0)]) == []


def test_the_sender_delivers_merged_updates_off_the_callers_thread_and_the_rest_on_close():
    import threading

    sent, threads = [], set()

    def send(spec, value):
        sent.append((spec, value))
        threads.add(threading.current_thread().name)

    sender = MetricSender(send, interval_s=0.05)
    sender.add([(QUERIES, 2.0), (QUERY_CHARS, 9.0)])
    sender.add([(QUERIES, 1.0)])
    deadline = time.monotonic() + 5
    while len(sent) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(sent, key=str) == sorted([(QUERY_CHARS, 9.0), (QUERIES, 3.0)], key=str)
    assert threads == {"shopsearch-metrics"}  # the request path only appended
    sender.add([(REJECTED, 1.0)])
    sender.close()  # what is pending when the model unloads is still sent
    assert sent[-1] == (REJECTED, 1.0)


def test_the_sender_bounds_what_waits_and_survives_a_failing_channel():
    errors = []

    def broken(spec, value):
        raise RuntimeError("stub gone")

    sender = MetricSender(broken, interval_s=3600, max_pending=3, on_error=errors.append)
    sender.add([(QUERY_CHARS, float(i)) for i in range(5)])
    assert sender.dropped == 2
    sender.flush()  # one report for the flush, not one per update
    assert len(errors) == 1 and "stub gone" in str(errors[0]) and sender.dropped == 5
    sender.close()
