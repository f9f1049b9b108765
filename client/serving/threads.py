"""One math thread per request: the service's parallelism is its gRPC workers, not BLAS or torch threads.

NumPy's OpenBLAS starts one spinning thread per core for every matrix product. A request's products are
tiny, and with 8 gRPC workers on a 2-core machine those threads fight: measured here, the in-process p50
of ``Recommend`` at 20k items went from 16 ms to 0.8 ms and the loopback throughput from 10 to 466
requests/s once BLAS and torch were limited to one thread (simulations/benchmarks/serve_grpc_load.py).
"""

from __future__ import annotations

MATH_THREADS = 1


def limit_math_threads() -> None:
    """Limit BLAS/OpenMP (threadpoolctl, works after NumPy is loaded) and torch to ``MATH_THREADS``."""
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=MATH_THREADS)
    torch.set_num_threads(MATH_THREADS)
