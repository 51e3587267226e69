"""Multi-GPU training on a CPU machine: which device each rank takes, and resuming a state a GPU
host saved (issue 19, defect 5). CUDA and the process group are patched; nothing here needs a GPU."""

import torch
import torch.distributed as dist

from shopsearch.train import distributed, resume


def fake_cuda(monkeypatch, devices: int) -> list:
    """torch.cuda as a host with `devices` GPUs; returns the log of calls that select one."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", torch.device(device))))
    return calls


def test_each_rank_selects_its_own_gpu_before_nccl_starts(monkeypatch):
    """Rank 11 of 2 hosts x 8 GPUs is LOCAL_RANK 3 on its host: cuda:3, set before the process
    group (broadcast_object_list puts its tensors on the current device)."""
    calls = fake_cuda(monkeypatch, devices=8)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: calls.append(("init_process_group", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: 11)
    monkeypatch.setattr(dist, "get_world_size", lambda: 16)
    monkeypatch.setattr(distributed.atexit, "register", lambda f: None)

    assert distributed.distributed_context() == (11, 16)
    assert calls == [("set_device", torch.device("cuda", 3)), ("init_process_group", "nccl")]
    assert distributed.training_device(11) == torch.device("cuda", 3)


def test_the_recommender_trains_on_its_local_rank_gpu(monkeypatch, tiny_interactions):
    """Not the global rank's: rank 9 of 2 hosts x 8 GPUs is cuda:1 (LOCAL_RANK), not cuda:9 % 8."""
    import shopsearch.train.recommender as rec

    fake_cuda(monkeypatch, devices=8)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(rec, "distributed_context", lambda: (9, 16))
    chosen = []

    class DeviceChosen(Exception):
        pass

    def record(rank, requested=""):
        chosen.append(distributed.training_device(rank, requested))
        raise DeviceChosen  # stop before any tensor goes to the (absent) GPU
    monkeypatch.setattr(rec, "training_device", record)
    try:
        rec.train_recommender(tiny_interactions, rec.RecTrainConfig(batch_size=16), log=lambda m: None)
    except DeviceChosen:
        pass
    assert chosen == [torch.device("cuda", 1)]


def test_a_state_saved_on_a_gpu_host_resumes_on_a_cpu_host(tmp_path, monkeypatch):
    """torch.save records each tensor's device; without map_location, loading a GPU host's state
    here fails ("Attempting to deserialize object on a CUDA device"), and on a GPU host every rank
    would load onto cuda:0."""
    import pytest

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    class Sampler:
        def state(self):
            return {"position": 7}

    # Tag every tensor as a CUDA tensor while saving, as a GPU host's torch.save would.
    with monkeypatch.context() as saving:
        saving.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        resume.save_training_state(tmp_path, 0, 5, model, optimizer, scheduler, scaler, Sampler(), [1.0], "{}")
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(tmp_path / resume.RESUME_DIR / "state.pt", weights_only=False)  # what the old code did

    state, rng = resume.load_training_state(tmp_path, 0)
    assert state["step"] == 5 and state["sampler"] == {"position": 7}
    assert all(t.device.type == "cpu" for t in state["model"].values())
    fresh = torch.nn.Linear(4, 2)
    fresh.load_state_dict(state["model"])
    torch.testing.assert_close(fresh.weight, model.weight)
    resume.restore_random_state(rng)
