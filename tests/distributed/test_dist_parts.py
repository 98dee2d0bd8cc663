"""The pieces of lmforge.distributed that need no second process: environment, strategy, work split, resume maths."""

import pytest
import torch

from lmforge.cli import main as cli
from lmforge.config.run import ConfigError, load_run_config, render_config
from lmforge.data.loader import TokenBatches
from lmforge.distributed.collectives import gather_objects, round_robin, sum_across_ranks
from lmforge.distributed.env import DistEnv, backend_for, env_from_torchrun, process_device
from lmforge.distributed.state_dict import FullModel, load_full_optimizer_state
from lmforge.distributed.world_change import data_position_for_world, rng_for_rank
from lmforge.distributed.wrap import gradient_sync, resolve_strategy, wrap_model
from lmforge.model.config import ModelConfig
from lmforge.model.gpt import GPT

CPU = torch.device("cpu")


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20))


def test_torchrun_environment_names_the_process():
    assert env_from_torchrun({}) == DistEnv(rank=0, local_rank=0, world_size=1)
    env = env_from_torchrun({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (env.rank, env.local_rank, env.world_size, env.is_main, env.is_distributed) == (3, 1, 4, False, True)
    with pytest.raises(ValueError, match="outside WORLD_SIZE"):
        env_from_torchrun({"RANK": "4", "WORLD_SIZE": "4"})


def test_each_process_gets_a_device_and_a_matching_backend():
    two = DistEnv(rank=1, local_rank=1, world_size=2)
    assert process_device("cpu", two) == CPU and process_device("cpu", DistEnv()) == CPU
    with pytest.raises(ValueError, match="every process on one GPU"):
        process_device("cuda:0", two)
    with pytest.raises(ValueError, match="cannot train with several processes"):
        process_device("mps", two)
    assert backend_for(CPU) == "gloo" and backend_for(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(ValueError, match="nccl needs CUDA"):
        backend_for(CPU, "nccl")


def test_strategy_auto_is_ddp_on_cpu_and_one_process_is_never_wrapped():
    assert resolve_strategy("auto", 2, 10**9, CPU) == "ddp"
    assert resolve_strategy("fsdp", 2, 10, CPU) == "fsdp"
    assert all(resolve_strategy(s, 1, 10, CPU) == "none" for s in ("auto", "ddp", "fsdp", "none"))
    with pytest.raises(ValueError, match="none trains one process"):
        resolve_strategy("none", 2, 10, CPU)


def test_round_robin_gives_every_rank_the_same_number_of_passes_and_counts_each_item_once():
    items = ["a", "b", "c", "d", "e"]
    shares = [list(round_robin(items, rank, 2)) for rank in (0, 1)]
    assert shares == [[("a", True), ("c", True), ("e", True)], [("b", True), ("d", True), ("a", False)]]
    assert list(round_robin(items, 0, 1)) == [(item, True) for item in items]
    assert list(round_robin(["a"], 2, 3)) == [("a", False)]  # more ranks than items: still one pass each
    counted = sorted(item for rank in range(3) for item, counts in round_robin(items, rank, 3) if counts)
    assert counted == items


def test_collectives_without_a_process_group_return_the_local_value():
    t = torch.tensor([1.0, 2.0])
    assert sum_across_ranks(t) is t and gather_objects("x") == ["x"]


def test_resuming_on_one_rank_continues_at_the_first_unread_micro_batch(dist_data):
    one = TokenBatches(dist_data, "train", 16, 4, seed=0)
    reference = [one.next_batch()[0] for _ in range(8)]
    ranks = [TokenBatches(dist_data, "train", 16, 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):  # three steps on two ranks: micro-batches 0..5 of the epoch
        for batches in ranks:
            batches.next_batch()
    resumed = TokenBatches(dist_data, "train", 16, 4, seed=0)
    resumed.load_state_dict(data_position_for_world(ranks[0].state_dict(), 2, 1, resumed.batches_per_epoch))
    assert torch.equal(resumed.next_batch()[0], reference[6])


def test_growing_the_world_rounds_up_to_a_whole_round_and_wraps_into_the_next_epoch():
    assert data_position_for_world({"epoch": 1, "index": 3}, 1, 2, 100) == {"epoch": 1, "index": 2}  # skips one
    assert data_position_for_world({"epoch": 1, "index": 4}, 1, 2, 100) == {"epoch": 1, "index": 2}
    assert data_position_for_world({"epoch": 1, "index": 99}, 1, 2, 50) == {"epoch": 2, "index": 0}
    assert data_position_for_world({"epoch": 0, "index": 5}, 2, 2, 50) == {"epoch": 0, "index": 5}
    assert rng_for_rank([{"r": 0}, {"r": 1}], 3) == {"r": 1}


def test_optimizer_state_saved_by_name_loads_into_a_plain_model():
    """FSDP checkpoints name parameters; a single process must load them like its own positional state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model = tiny_gpt()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randint(0, 20, (2, 8))).sum().backward()
    optimizer.step()
    by_name = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert "blocks.0.attn.q.weight" in by_name["state"]
    copy = tiny_gpt()
    copy_optimizer = torch.optim.AdamW(copy.parameters(), lr=1e-2)
    load_full_optimizer_state(copy, copy_optimizer, by_name)
    want, got = optimizer.state_dict(), copy_optimizer.state_dict()
    assert want["state"].keys() == got["state"].keys()
    for key, state in want["state"].items():
        torch.testing.assert_close(got["state"][key]["exp_avg_sq"], state["exp_avg_sq"])


def test_single_process_wrapping_changes_nothing():
    model = tiny_gpt()
    assert wrap_model(model, "none", CPU) is model
    assert FullModel(model, "none", is_main=True).gather() is model
    with gradient_sync(model, enabled=False):  # nothing to switch off without DDP or FSDP
        model(torch.randint(0, 20, (1, 8))).sum().backward()


def test_dist_is_a_section_of_the_run_config():
    cfg = load_run_config(None, ["--dist.strategy=fsdp", "--dist.timeout_minutes=5"])
    assert (cfg.dist.strategy, cfg.dist.backend, cfg.dist.timeout_minutes) == ("fsdp", "auto", 5.0)
    assert "\ndist:" in render_config(cfg)
    with pytest.raises(ConfigError, match="dist.strategy"):
        load_run_config(None, ["--dist.strategy=zero3"])


def test_train_nproc_relaunches_the_same_command_under_torchrun(monkeypatch):
    launched = []
    monkeypatch.setattr(cli.os, "execv", lambda program, argv: launched.append(argv))
    monkeypatch.delenv("RANK", raising=False)
    assert cli.main(["train", "run.yaml", "--train.lr", "3e-4", "--nproc", "2"]) == 0
    assert launched == [[cli.sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "lmforge", "train", "run.yaml", "--train.lr=3e-4"]]


def test_train_nproc_refuses_nonsense_and_nesting(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "execv", lambda *a: pytest.fail("must not launch"))
    assert cli.main(["train", "--nproc", "0"]) == cli.EXIT_USAGE
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "--nproc", "2"]) == cli.EXIT_USAGE
    assert "already started by torchrun" in capsys.readouterr().err
