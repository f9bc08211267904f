"""What a stage script needs when the rule started it as one of several processes (torchrun or srun)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_launcher() -> None:
    """End this process when torchrun, which started it, ends.

    torchrun starts each worker in a session of its own. Killed by a signal it cannot catch (kill -9,
    the out-of-memory killer), it would leave its workers training on, writing into the folder
    that the rerun is about to resume from. Linux can send the worker SIGKILL when its parent dies.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above
        os._exit(1)
