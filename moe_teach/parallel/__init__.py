"""Expert parallelism: an MoE layer whose experts are spread over processes.

* :mod:`.exchange`: the count exchange, the split sizes, the arrival permutation and its
  inverse, and a differentiable uneven all-to-all;
* :mod:`.layer`: :class:`ExpertParallelMoE` and :func:`shard_moe_layer` (a rank's share of a
  one-process :class:`~moe_teach.moe_layer.MoELayer`);
* :mod:`.launch`: :func:`run_workers` starts ``N`` processes on this machine and returns
  what rank 0 measured; :mod:`.workers` holds the tasks they run.
"""

from .exchange import (
    AllToAll,
    all_to_all,
    arrival_local_experts,
    arrival_permutation,
    exchange_counts,
    expert_counts,
    inverse_permutation,
    local_expert_counts,
    send_splits,
)
from .launch import BACKENDS, WorkerError, free_port, run_workers
from .layer import ExchangeStats, ExpertParallelMoE, all_reduce_replicated_grads, check_world, shard_moe_layer

__all__ = ["AllToAll", "all_to_all", "arrival_local_experts", "arrival_permutation", "exchange_counts",
           "expert_counts", "inverse_permutation", "local_expert_counts", "send_splits", "BACKENDS",
           "WorkerError", "free_port", "run_workers", "ExchangeStats", "ExpertParallelMoE",
           "all_reduce_replicated_grads", "check_world", "shard_moe_layer"]
