"""The collectives a sequence-parallel call needs, over one torch.distributed process group.

The group is a raw ``ProcessGroupGloo`` / ``ProcessGroupNCCL`` built on a ``TCPStore`` (see ``launcher.py``), not
``init_process_group``'s default group: ComfyUI's process (rank 0) can then hold several sessions, or start a new one
after a failed one, without touching any global torch.distributed state another extension may own.

Every collective here waits with the group's timeout; a failure is handed to ``on_error`` (the session turns it into
a clear "worker N died" error) instead of surfacing as a bare gloo/NCCL message.
"""
from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


class CollectiveError(RuntimeError):
    """A collective failed or timed out (a peer died, hung, or disagreed on shapes)."""


class Comm:
    """rank/world plus the few collectives the sharded forward uses, all on one process group."""

    def __init__(self, group: Any, rank: int, world: int, device: torch.device,
                 on_error: Callable[[BaseException], BaseException] | None = None) -> None:
        self.group, self.rank, self.world, self.device = group, rank, world, torch.device(device)
        self.on_error = on_error

    def _wait(self, work: Any) -> None:
        try:
            work.wait()
        except Exception as e:  # gloo: "Connection closed by peer" / timeout; NCCL: watchdog abort
            raise (self.on_error(e) if self.on_error else CollectiveError(str(e))) from e

    def broadcast_(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """In place: every rank's ``tensor`` becomes ``src``'s."""
        self._wait(self.group.broadcast(tensor, src))
        return tensor

    def broadcast_object(self, obj: Any = None, src: int = 0) -> Any:
        """A picklable object from ``src`` to every rank (length first, then the bytes)."""
        if self.rank == src:
            data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(self.device)
            size = torch.tensor([data.numel()], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.broadcast_(size, src)
        if self.rank != src:
            data = torch.empty(int(size.item()), dtype=torch.uint8, device=self.device)
        self.broadcast_(data, src)
        return obj if self.rank == src else pickle.loads(data.cpu().numpy().tobytes())

    def all_gather_seq(self, local: torch.Tensor, lengths: list[int], dim: int) -> list[torch.Tensor]:
        """Every rank's ``local`` (rank r's has ``lengths[r]`` entries along ``dim``, the rest equal), in rank order.
        Gloo's allgather wants equal sizes, so each is padded to the longest and trimmed after."""
        longest = max(lengths)
        pad = longest - local.shape[dim]
        if pad:
            shape = list(local.shape)
            shape[dim] = pad
            local = torch.cat((local, local.new_zeros(shape)), dim)
        out = [torch.empty_like(local) for _ in range(self.world)]
        self._wait(self.group.allgather([out], [local.contiguous()]))
        return [t.narrow(dim, 0, n) for t, n in zip(out, lengths)]

    def all_to_all_flat(self, send: torch.Tensor, send_sizes: list[int], recv_sizes: list[int]) -> torch.Tensor:
        """``all_to_all_single`` on flat buffers with per-rank sizes (uneven splits: gloo and NCCL both take them)."""
        recv = send.new_empty(sum(recv_sizes))
        self._wait(self.group.alltoall_base(recv, send.contiguous(), recv_sizes, send_sizes, dist.AllToAllOptions()))
        return recv
