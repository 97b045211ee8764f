"""``python -m engine_server``: the command line, and a process exit that survives Ray."""
import logging
import os
import sys

from .cli import main

code = main()
if "ray" in sys.modules:
    # Ray leaves its gRPC threads running past ray.shutdown(), and with them alive the native exit handlers
    # (libtorch_cuda unregistering its kernels among them) now and then crash with SIGABRT ('corrupted size
    # vs. prev_size'): a clean run or shutdown would end with -6 about one time in five. Everything is
    # written and closed by now, so the interpreter's teardown is skipped.
    from .scale.cluster import disconnect

    disconnect()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
raise SystemExit(code)
