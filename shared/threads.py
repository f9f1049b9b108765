"""How many threads BLAS/OpenMP and torch may use in a process that runs many small products.

NumPy's OpenBLAS starts one spinning thread per core for every matrix product. In the recommendation service
a request's products are tiny, and with 8 gRPC workers on a 2-core machine those threads fight: measured
here, the in-process p50 of ``Recommend`` at 20k items went from 16 ms to 0.8 ms and the loopback throughput
from 10 to 466 requests/s once BLAS and torch were limited to one thread
(simulations/benchmarks/serve_grpc_load.py).

The ServerApp limits them too (server/app.py): its linear algebra is small, and in simulation its thread
shares the process with Ray's start-up. There, OpenBLAS's thread pool hung: the principal directions of
``federated-parameters = "item-bias"`` (one SVD of a 1,682 × 384 matrix, 0.2 s alone) spun in
``exec_blas_async`` for minutes, and ran at once with one BLAS thread.
"""

from __future__ import annotations

MATH_THREADS = 1


def limit_math_threads(threads: int = MATH_THREADS) -> None:
    """Limit BLAS/OpenMP (threadpoolctl, works after NumPy is loaded) and torch to ``threads``."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    torch.set_num_threads(threads)
