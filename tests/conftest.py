import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))

# One intra-op thread: CI has 2 cores, and in-process servers run engine threads beside
# transformers' reference generate(); oversubscribed threads made both far slower.
torch.set_num_threads(1)
