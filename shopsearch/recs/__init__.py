"""Recommendations: next-item (sequential) and similar-item retrieval over the same catalog machinery as search."""
