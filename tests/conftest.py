"""Shared test settings.

`make test` runs the files on 2 worker processes (pytest-xdist, one file per worker), so
each process uses one torch thread: on small convolutions two single-threaded processes
beat one process with two threads, and they never fight over the cores.
"""

import torch

torch.set_num_threads(1)
