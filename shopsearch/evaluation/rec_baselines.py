"""The simple recommenders a learned model has to beat, fitted on histories only (targets unseen)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from shopsearch.data.interactions import Interactions


class Popularity:
    """Every user gets the most-interacted items."""

    name = "popularity"

    def __init__(self, counts: np.ndarray):
        self.counts = counts.astype(np.float32)

    @classmethod
    def fit(cls, data: Interactions) -> "Popularity":
        return cls(data.item_counts())

    def scores(self, histories: list[list[int]]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class LastItemTransitions:
    """Item-to-item transition counts: how often item j directly followed item i in a history.
    A user is scored from their last item; popularity (scaled below one transition) breaks ties
    and fills in for items with no recorded successor."""

    name = "transitions"

    def __init__(self, transitions: sp.csr_matrix, counts: np.ndarray):
        self.transitions, self.counts = transitions, counts.astype(np.float32)

    @classmethod
    def fit(cls, data: Interactions) -> "LastItemTransitions":
        rows, cols = [], []
        for history in data.histories:
            rows.extend(history[:-1])
            cols.extend(history[1:])
        ones = np.ones(len(rows), dtype=np.float32)
        matrix = sp.csr_matrix((ones, (rows, cols)), shape=(data.n_items, data.n_items))
        matrix.sum_duplicates()
        return cls(matrix, data.item_counts())

    def scores(self, histories: list[list[int]]) -> np.ndarray:
        backfill = self.counts / (self.counts.max() + 1.0)  # < 1: never outranks a real transition
        out = np.tile(backfill, (len(histories), 1))
        for row, history in enumerate(histories):
            if history:
                successors = self.transitions.getrow(history[-1])
                out[row, successors.indices] += successors.data
        return out


BASELINES = (Popularity, LastItemTransitions)
