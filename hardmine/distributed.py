"""Distributed training under torchrun: the process group, rank helpers and collectives.

torchrun starts one process per device and describes each one's place in the environment
(`WORLD_SIZE`, `RANK`, `LOCAL_RANK`, plus `MASTER_ADDR` / `MASTER_PORT` for the rendezvous).
`process_group` reads it: with `WORLD_SIZE` unset or 1 it sets nothing up, and every helper below
then returns its input without touching `torch.distributed`, so a single-process run behaves
exactly as it did before distributed training existed. With `WORLD_SIZE` > 1 it initialises the
default process group (gloo on the CPU, NCCL on CUDA, device `cuda:LOCAL_RANK`) and always
destroys it again, on errors too.

The helpers are collectives: in a distributed run every process must call them, in the same
order, or the run hangs (torchrun then stops the other processes when one of them fails).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from hardmine.errors import ConfigError, HardmineError

#: Values of `train.dist_backend`.
BACKENDS = ("auto", "gloo", "nccl")

T = TypeVar("T")


@dataclass(frozen=True)
class ProcessContext:
    """This process's place in the run: rank, rank on its node, number of processes, its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None = None  # None: a single process without a process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run's files and shows progress."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        message = f"environment variable {name}={raw!r} must be an integer (torchrun sets it)"
        raise HardmineError(message) from None


def launch_env() -> tuple[int, int, int]:
    """(RANK, LOCAL_RANK, WORLD_SIZE) as torchrun sets them; (0, 0, 1) outside torchrun."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise HardmineError(
            f"inconsistent torchrun environment: RANK={rank}, LOCAL_RANK={local_rank}, WORLD_SIZE={world}"
        )
    return rank, local_rank, world


def env_rank() -> int:
    """This process's rank from the environment (0 outside torchrun); usable without a process group."""
    return launch_env()[0]


def resolve_backend(option: str, device: torch.device) -> str:
    """`train.dist_backend` for a process on `device`: auto = NCCL on CUDA, gloo on the CPU."""
    if option not in BACKENDS:
        raise ConfigError(f"train.dist_backend={option!r} is not allowed; choose from {', '.join(BACKENDS)}")
    if option == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if option == "nccl" and (device.type != "cuda" or not torch.cuda.is_available()):
        why = "no CUDA device is available" if not torch.cuda.is_available() else f"train.device is {device}"
        raise ConfigError(
            f"train.dist_backend=nccl needs CUDA devices, but {why}; use train.dist_backend=gloo "
            "(or auto) to train on the CPU"
        )
    return option


def _process_device(device: torch.device, local_rank: int, world_size: int) -> torch.device:
    """The device of this process: a CUDA run takes GPU LOCAL_RANK, the CPU stays the CPU."""
    if device.type != "cuda":
        return device
    if device.index is not None and world_size > 1:
        raise ConfigError(
            f"train.device={device} names one GPU for every process; under torchrun use train.device=cuda "
            "(or auto): each process takes cuda:LOCAL_RANK"
        )
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise HardmineError(
            f"LOCAL_RANK={local_rank} needs GPU {local_rank}, but this node has {count}; start at most "
            f"{count} processes per node (torchrun --nproc_per_node)"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def process_group(backend: str, device: torch.device) -> Iterator[ProcessContext]:
    """This process's `ProcessContext`, with the default process group set up for its duration.

    `backend` is `train.dist_backend`, `device` the resolved `train.device` (a bare "cuda" becomes
    `cuda:LOCAL_RANK`). Outside torchrun (WORLD_SIZE unset or 1) nothing is set up and the context
    says rank 0 of 1 on `device`. A process group that already exists is used, and left in place.
    """
    rank, local_rank, world = launch_env()
    if world == 1:
        yield ProcessContext(0, 0, 1, device)
        return
    if not dist.is_available():
        raise HardmineError(f"WORLD_SIZE={world}, but this torch build has no torch.distributed")
    device = _process_device(device, local_rank, world)
    chosen = resolve_backend(backend, device)
    owner = not dist.is_initialized()
    if owner:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(
                chosen, init_method="env://", device_id=device if chosen == "nccl" else None
            )
        except (ValueError, RuntimeError) as exc:  # e.g. no MASTER_ADDR: WORLD_SIZE set without torchrun
            raise HardmineError(
                f"cannot set up the {chosen} process group (RANK={rank}, WORLD_SIZE={world}): {exc}; "
                "start distributed runs with torchrun"
            ) from exc
    try:
        yield ProcessContext(rank, local_rank, world, device, chosen)
        if owner:
            # Every process leaves together: a process tearing its group down while another still
            # works with it (rank 0 evaluating, say) can abort in gloo's threads (SIGABRT,
            # "terminate called without an active exception"; seen under load in the tests).
            dist.barrier()
    finally:
        if owner and dist.is_initialized():
            dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group with more than one process is set up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def _collective_device() -> torch.device:
    """Where small tensors for collectives live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process (every process gets the same answer)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_processes(tensor: Tensor) -> Tensor:
    """The sum of `tensor` over all processes (a new tensor, no autograd); `tensor` itself in a
    single process. Models call it for loss normalisers that must count the global batch."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def batch_normaliser(count: int) -> int | Tensor:
    """A loss normaliser for a per-batch `count` (sampled candidates, foreground ones): max(count, 1)
    in a single process; in a distributed run max(global count, 1) / number of processes, with the
    global count summed over the processes. DDP averages the processes' gradients, and that average
    then equals the gradient of one process on the combined batch."""
    if not is_distributed():
        return max(count, 1)
    total = sum_over_processes(torch.tensor(float(count), device=_collective_device()))
    return total.clamp_min(1.0).cpu() / world_size()


def gather_objects(obj: T) -> list[T] | None:
    """Every process's `obj` (picklable), in rank order, on rank 0; None on the others."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_gather_objects(obj: T) -> list[T]:
    """Every process's `obj` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T) -> T:
    """Rank 0's `obj` (picklable) on every process (the others pass anything, e.g. None)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_scalars(scalars: dict[str, float]) -> dict[str, float]:
    """The mean over processes of each logged scalar (over the processes that have the key), in the
    order of this process's keys; `scalars` itself in a single process."""
    if not is_distributed():
        return scalars
    everyone = all_gather_objects(scalars)
    keys = list(scalars) + [k for other in everyone for k in other if k not in scalars]
    out = {}
    for key in dict.fromkeys(keys):
        values = [other[key] for other in everyone if key in other]
        out[key] = sum(values) / len(values)
    return out


@contextmanager
def main_process_first(what: str) -> Iterator[None]:
    """Run the block on rank 0 first and on the other processes after it has finished.

    For work that writes shared files the others then read (generating the built-in dataset, the
    dataset-priors cache). If rank 0 fails, the others stop with a HardmineError naming `what`
    instead of waiting for it.
    """
    if not is_distributed():
        yield
        return
    if rank() == 0:
        try:
            yield
        except BaseException:
            broadcast_object(False)
            raise
        broadcast_object(True)
    else:
        if not broadcast_object(None):
            raise HardmineError(f"{what} failed on rank 0 (its error is reported there); stopping")
        yield
