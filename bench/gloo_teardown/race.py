"""The cause of issue 17 made deterministic (why examples/train.py ends with os._exit).

A gloo worker thread (``pt_gloo_runloop``) drops the last reference to a finished
collective on its own time; freeing it frees Python objects, so it takes the GIL. If the
main thread has begun interpreter finalization by then (a busy CPU can delay the worker
that long), CPython 3.11 ends the worker with ``pthread_exit``, whose forced unwinding
through the noexcept C++ destructor calls ``std::terminate``: "terminate called without
an active exception", SIGABRT, and torchrun reports a finished run failed.

Here rank 1 lets go of its tensor and work before the all_reduce ends, so its worker
thread frees them; ``hold.gdb`` holds that thread at ``PyEval_AcquireThread`` until the
main thread is finalizing. ``bash bench/gloo_teardown/run.sh`` runs it twice:

    END=return   -> "terminate called without an active exception", rank 1 SIGABRT, torchrun exit 1
    END=os_exit  -> exit 0: no finalization, nothing to race (what train.py does)

Measured on the 2-core dev machine, the demo's sweep back to back beside two busy
processes (tests/test_demo_stress.py, PODFLOW_STRESS_RUNS=51): before the fix 2 of 51
runs failed with this abort after their "done" line (rank 0 once, rank 1 once); after
it 0 of 51.
"""
import os
import sys
import time

import torch
import torch.distributed as dist

dist.init_process_group("gloo")
if dist.get_rank() == 0:
    time.sleep(2)
t = torch.ones(1 << 16)
work = dist.all_reduce(t, async_op=True)
if dist.get_rank() == 0:
    work.wait()
del work, t
time.sleep(4)  # the all_reduce ends meanwhile (rank 0 joins after 2 s)
if os.environ.get("END") == "os_exit":
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
