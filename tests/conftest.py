"""Shared pytest set-up.

- Make the flat top-level modules importable from tests/.
- One torch thread: the test models are tiny, where extra threads only add synchronisation, and on a
  shared 2-core machine OpenMP threads that wait for each other can make a step 100x slower.
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(1)
