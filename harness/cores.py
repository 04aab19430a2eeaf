"""How a study uses the machine: the most workers it holds, each worker's torch thread budget, the OpenMP environment
spawned workers start with, and the GPU memory share of packed workers."""

from __future__ import annotations

import contextlib
import os

import psutil

from harness import config, train

# A worker's resident memory: 1069-1124 MB after trials 2-29 of the default study (README "Measured"), so 1.2 GiB
# each. Two workers a core: a worker waits on the stores (MLflow writes, sqlite locks) part of each trial, and
# --workers 3 on 2 cores finishes the tests' study; beyond that workers only queue for the CPU.
WORKER_BYTES, WORKERS_PER_CORE = int(1.2 * 2**30), 2


def max_workers() -> tuple[int, str]:
    """(the most --workers this machine holds, the bound in words): min(2 x CPU cores, available memory / 1.2 GiB)."""
    n, free = os.cpu_count() or 1, psutil.virtual_memory().available
    bound = max(1, min(WORKERS_PER_CORE * n, free // WORKER_BYTES))
    return bound, (f"min of {WORKERS_PER_CORE} per CPU core x {n} cores and {free / 2**30:.1f} GiB available "
                   f"memory / {WORKER_BYTES / 2**30:.1f} GiB per worker")


# OpenMP threads waiting at a barrier sleep (PASSIVE) instead of spinning (libgomp's default spins 300000 times
# first): a spinning thread holds a core that another process, or its own sibling thread, needs. Measured on this
# 2-core machine next to other engineers' jobs (load average 3-4), the bench's bare loop of the default study (6
# epochs, 2 threads) took a median 20.3 s (2.0-37.6 s over 5 runs) with the default policy, 5.0 s (4.7-6.5) with
# PASSIVE and 2.9 s with 1 thread; 1.5 s on an idle machine.
WAIT_POLICY = "PASSIVE"
# Packed trials on one GPU: each of N workers' caching allocators is capped at GPU_SHARE / N of the card's memory
# (torch.cuda.set_per_process_memory_fraction); the rest holds the N + 1 CUDA contexts (~0.5 GB each), which the
# allocator does not count. A trial that needs more than its share fails with CUDA's out-of-memory error (its reason
# in Optuna and MLflow) and the study goes on.
GPU_SHARE = 0.9


def available() -> int:
    """The CPU cores this process may run on (its affinity mask: taskset, cpusets), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def thread_budget(cfg: config.Config) -> tuple[int, str]:
    """(torch CPU threads of each worker, why in words): study.threads_per_worker when set, else the cores divided
    among the workers (Ray Tune's CPUs per trial), at least 1. Two workers of 2 threads each on 2 cores ran 6 trials
    in 125 s where one worker took 41 s (issue 13): threads beyond the cores only queue and spin."""
    if cfg.study.threads_per_worker:
        return cfg.study.threads_per_worker, "study.threads_per_worker"
    n, w = available(), cfg.study.workers
    return max(1, n // w), f"{n} cores / {w} worker{'s' if w > 1 else ''}"


def worker_env(threads: int) -> dict:
    """The environment a spawned worker starts with. OpenMP and MKL read it once, when torch loads them, i.e. when
    the worker's interpreter imports torch, before any code of ours runs there; so it goes into the environment the
    process is started with, not into the worker's own code. An OMP_WAIT_POLICY already set by the user wins."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", WAIT_POLICY)}


@contextlib.contextmanager
def environment(env: dict):
    """os.environ with `env` set, for starting child processes (they copy it at start), restored afterwards."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def budget_line(cfg: config.Config) -> str:
    """The thread budget (and GPU memory split) in words, for the launcher's log."""
    (threads, why), w = thread_budget(cfg), cfg.study.workers
    # one worker runs in this process, whose OpenMP read the environment when torch was imported
    policy = worker_env(threads)["OMP_WAIT_POLICY"] if w > 1 else os.environ.get("OMP_WAIT_POLICY", "unset")
    line = (f"{w} worker process{'es' if w > 1 else ''} x {threads} torch thread{'s' if threads > 1 else ''} "
            f"({why}), OMP_WAIT_POLICY={policy}")
    if w > 1 and train.pick_device(cfg.study.device).type == "cuda":
        line += f", each capped at {GPU_SHARE / w:.2f} of the GPU's memory"
    return line


def die_with_parent(parent: int | None) -> None:
    """A worker process ends when its launcher does, however the launcher ends (SIGKILL included): on Linux the
    kernel sends it SIGKILL (prctl PR_SET_PDEATHSIG), elsewhere a thread checks the parent every second. Its trial
    is then recovered as any dead worker's (bookkeeping.recover_dead): killed by `kill -9` of the launcher, workers
    went on unsupervised and finished trials nobody waited for."""
    import ctypes
    import signal
    import sys
    import threading
    import time

    if parent is None:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the launcher died before the line above: nobody will send the signal
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
