"""Process-group helpers: the only module of RC3 that touches ``torch.distributed``.

Every helper also works in a single process without an initialised process group (rank 0 of
a world of 1), so library code can call them unconditionally. Collectives must be called by
all ranks in the same order, as usual. Tested with gloo on CPU; with NCCL, pass CUDA tensors.

Sections: process-group set-up and queries; collectives on values and objects; autograd-aware
gathers. Anything else the training engine needs from torch.distributed is added here too.
"""
from __future__ import annotations

import datetime
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T", float, Tensor)


# ---------------------------------------------------------------- process-group set-up and queries

def init_process_group(backend: str, init_method: str, rank: int, world_size: int,
                       timeout_s: float = 1800.0) -> None:
    """Join the default process group (gloo for CPU, nccl for CUDA); ``init_method`` as in torch
    (``file:///path`` or ``tcp://host:port``)."""
    if is_initialized():
        raise RuntimeError("a default process group already exists; call destroy_process_group() first")
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def destroy_process_group() -> None:
    if is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    """True when a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo (and no group) works on CPU tensors.
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------- collectives on values and objects

def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(x: T) -> T:
    """Mean of ``x`` over ranks (identity without a process group).

    A float comes back as a float; a tensor comes back as a new, detached tensor of the same
    dtype and device (for logging and for the p_avg tracker, never for gradients).
    """
    if not is_initialized():
        return x.detach().clone() if isinstance(x, Tensor) else float(x)
    world = get_world_size()
    if isinstance(x, Tensor):
        buf = x.detach().to(torch.float64 if x.dtype == torch.float64 else torch.float32).clone()
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)  # ReduceOp.AVG is NCCL-only
        return (buf / world).to(x.dtype)
    buf = torch.tensor([float(x)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return float(buf.item() / world)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled by torch; only for this job's own objects)."""
    if not is_initialized():
        return obj
    holder = [obj if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src, device=_comm_device())
    return holder[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (pickled by torch; only for this job's own objects, e.g. the
    files each rank checked of a checkpoint)."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_gather_sizes(n: int) -> list[int]:
    """Every rank's ``n`` (e.g. its local batch size), in rank order."""
    if not is_initialized():
        return [int(n)]
    local = torch.tensor([int(n)], dtype=torch.long, device=_comm_device())
    sizes = [torch.zeros_like(local) for _ in range(get_world_size())]
    dist.all_gather(sizes, local)
    return torch.cat(sizes).tolist()  # one device -> host read, not one per rank


def all_gather(t: Tensor) -> Tensor:
    """Rows of ``t`` [n_r, ...] from all ranks concatenated in rank order, without gradient (evaluation
    embeddings, batch labels); ranks may hold different ``n_r``. Identity without a process group."""
    if not is_initialized():
        return t
    sizes = all_gather_sizes(t.shape[0])
    parts = _gather_padded(t.detach(), sizes)
    parts[get_rank()] = t.detach()
    return torch.cat(parts, dim=0)


def shard_range(n: int) -> range:
    """This rank's contiguous share of ``n`` items (the first ``n % world`` ranks take one more)."""
    world, rank = get_world_size(), get_rank()
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# ---------------------------------------------------------------- autograd-aware gathers

def _gather_padded(t: Tensor, sizes: list[int]) -> list[Tensor]:
    # all_gather needs equal shapes: pad every rank's rows to the largest size, then trim.
    longest = max(sizes)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t
    slots = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(slots, padded.contiguous())
    return [slot[:n] for slot, n in zip(slots, sizes)]


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenation of every rank's rows. Backward: each rank's upstream gradient of
    the whole gathered tensor is summed over ranks and the owner keeps its own rows, so a text
    used as a negative by another rank still receives that rank's gradient."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, sizes: list[int]) -> Tensor:
        rank = get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        parts = _gather_padded(t.detach(), sizes)
        parts[rank] = t.detach()  # bit-identical own slot, whatever the transport did
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.stop], None


def all_gather_with_grad(t: Tensor) -> Tensor:
    """Rows of ``t`` [n_r, ...] from all ranks concatenated along dim 0 in rank order.

    Ranks may hold different ``n_r`` (sizes are gathered first and rows padded for transport).
    The local slice stays in this rank's autograd graph and the backward sums gradients across
    ranks (one all_reduce of the gathered gradient), so a loss over local anchors with gathered
    negatives gets the same gradients as the single-process loss over the global batch. Every
    rank must run backward through its gathered tensor (the backward is a collective).
    Identity without a process group.
    """
    if not is_initialized():
        return t
    if t.dim() == 0:
        raise ValueError("all_gather_with_grad needs a tensor with a leading batch dimension, got a scalar")
    return _AllGatherWithGrad.apply(t, all_gather_sizes(t.shape[0]))


def gather_with_offset(t: Tensor, equal_rows: bool = False) -> tuple[Tensor, int]:
    """(every rank's rows with gradients, `all_gather_with_grad`; the row where this rank's block
    starts): XTCL's negatives over the global batch, `rc3.pretrain.objectives.xtcl(gather=...)`.
    The sizes are gathered once for both (every training step calls this).

    `equal_rows`: every rank passes as many rows as this one, so no sizes are gathered (that gather is a
    read of a device tensor in the middle of the forward). Pretraining's streams give that: they repeat
    their shards and drop partial batches, so each rank's Dt batch has the configured size. A rank with
    another count makes the all_gather fail (gloo checks sizes; NCCL does not, so keep it to such batches)."""
    if not is_initialized():
        return t, 0
    if t.dim() == 0:
        raise ValueError("gather_with_offset needs a tensor with a leading batch dimension, got a scalar")
    sizes = [int(t.shape[0])] * get_world_size() if equal_rows else all_gather_sizes(t.shape[0])
    return _AllGatherWithGrad.apply(t, sizes), sum(sizes[: get_rank()])


# ---------------------------------------------------------------- training-engine helpers

def init_from_launcher(timeout_s: float = 1800.0) -> None:
    """Join the process group set up by the `deepspeed` launcher (env RANK, WORLD_SIZE, MASTER_ADDR/PORT).

    gloo on CPU, NCCL on GPU. The timeout bounds how long a collective waits for a rank that died,
    so a lost rank ends the job with an error instead of a hang (the launcher also stops the
    others when one exits non-zero). A plain `python` start without the launcher runs as one rank.
    """
    import os

    from rc3.op_cache import use_environment_extension_dir

    use_environment_extension_dir()  # gloo ranks build/load DeepSpeed's shm op in init_distributed
    import deepspeed

    if is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        # A free port unless one is given: single-rank runs side by side (parallel tests) must not collide.
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": os.environ.get("MASTER_PORT") or str(_free_port())})
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    if backend == "gloo":
        _unlink_shm_buffers()


def _free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unlink_shm_buffers() -> None:
    """Remove the names of DeepSpeed's CPU all-reduce buffers once every rank has mapped them.

    On CPU with all ranks on one machine, DeepSpeed's shm comm op creates one 69 MB
    /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank> per rank and never unlinks it,
    so every run (finished or killed) leaves them behind, until /dev/shm fills the machine's memory.
    Each rank maps every other rank's buffer inside `init_distributed`; after a barrier the names
    are no longer needed, and unlinking them now frees the memory when the last rank exits, however
    it exits. The mappings stay valid.
    """
    import os

    if dist.get_world_size() > 1:
        dist.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{dist.get_rank()}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:  # no shm op (ranks on several nodes, or no compiler): nothing was created
        pass


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on at least one (a non-finite loss, a stop request)."""
    if not is_initialized():
        return bool(flag)
    buf = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return bool(buf.item() > 0)


def any_rank_flag(flag: Tensor) -> bool:
    """`any_rank` for a flag computed on the device (e.g. "this loss is not finite"): the flag is
    all-reduced where it lies and read once, instead of read, sent back and read again."""
    return bool(any_rank_device(flag).item() > 0)


def any_rank_device(flag: Tensor) -> Tensor:
    """`any_rank_flag` left on the device: a float 0/1 tensor, 1 on every rank when `flag` is true on some rank.
    Nothing is read on the host (the all-reduce is queued on the device's stream under NCCL)."""
    flag = flag.detach().reshape(1).to(torch.float32)
    if not is_initialized():
        return flag
    buf = flag.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX)
    return buf.to(flag.device)


def all_reduce_sum_(t: Tensor) -> Tensor:
    """`t` summed over ranks in place, where it lies (no host read); `t` itself without a process group."""
    if is_initialized():
        buf = t if t.device == _comm_device() else t.to(_comm_device())
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf)
    return t


def all_reduce_sum_dict(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over ranks in one collective; every rank must pass the same keys."""
    if not is_initialized() or not values:
        return dict(values)
    keys = sorted(values)
    buf = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return dict(zip(keys, buf.tolist()))
