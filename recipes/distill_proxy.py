"""Distill the indexer of the trained proxy backbone on the task suite (see `--help`).

python recipes/distill_proxy.py --model proxy-qwen3 --output-dir proxy-qwen3   # on a GPU, ~1 min

Blocks of 32 and density 0.1 are the bundled proxy's serving config: at its 4096-token training
length, blocks of 64 leave a 12.5% budget nothing beyond the forced sink / local / last blocks.
"""

import sys

from hf_sparse_attn.recipe import main

DEFAULTS = [
    "--tasks",
    "--seq-len",
    "4096",
    "--max-steps",
    "300",
    "--batch-size",
    "4",
    "--block-size",
    "32",
    "--density",
    "0.1",
    "--min-sparse-len",
    "2048",
    "--dense-tail-blocks",
    "1",
    "--logging-steps",
    "25",
    "--save-steps",
    "1000",
]

if __name__ == "__main__":
    main("qwen3", DEFAULTS + sys.argv[1:])
