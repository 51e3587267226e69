"""Resumable training state: everything that decides the next step, written atomically.

A run with `save_every = N` writes its state every N steps; `--resume` continues from the last one
and ends exactly where the uninterrupted run would (same weights, same loss curve).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

RESUME_DIR = "resume"  # inside the checkpoint directory; removed when the run finishes


def save_training_state(out_dir: Path, rank: int, step: int, model, optimizer, scheduler, scaler, sampler,
                        losses: list[float], tokenizer_json: str) -> None:
    """Each rank keeps its own random state (dropout masks differ per rank); rank 0 the rest."""
    directory = out_dir / RESUME_DIR
    directory.mkdir(parents=True, exist_ok=True)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    _atomic_torch_save(rng, directory / f"rng_rank{rank}.pt")
    if rank == 0:
        _atomic_torch_save({"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "sampler": sampler.state(),
                            "losses": losses, "tokenizer_json": tokenizer_json}, directory / "state.pt")


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_training_state(out_dir: Path, rank: int) -> tuple[dict, dict] | None:
    """(rank 0's state, this rank's random state), or None when no state was saved."""
    directory = out_dir / RESUME_DIR
    if not (directory / "state.pt").exists():
        return None
    # Onto the CPU: a state saved on a GPU host resumes on a CPU host, and no rank piles its copy
    # onto cuda:0; load_state_dict then moves each tensor to its parameter's device.
    state = torch.load(directory / "state.pt", map_location="cpu", weights_only=False)
    rng = torch.load(directory / f"rng_rank{rank}.pt", map_location="cpu", weights_only=False)
    return state, rng


def restore_random_state(rng_state: dict) -> None:
    random.setstate(as_rng_state(rng_state["python"]))
    np.random.set_state(rng_state["numpy"])
    torch.set_rng_state(rng_state["torch"])
    if rng_state["cuda"]:
        torch.cuda.set_rng_state_all(rng_state["cuda"])


def as_rng_state(state) -> tuple:
    """random.Random state back from a torch.save round trip (tuples may come back as lists)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
