"""Lexical retrieval: BM25 over the catalog (the baseline and hybrid's lexical candidates) and the
query-time matching the hybrid re-ranker's text features are computed from."""
