"""Distill the indexer of the trained proxy backbone on the task suite (see `--help`).

python recipes/distill_proxy.py --model proxy-qwen3 --output-dir proxy-qwen3   # on a GPU, ~1 min

Blocks of 32, density 0.1 and no dense last block are the bundled proxy's serving config (11.0%
of the causal blocks kept at 4096 tokens): with blocks of 64, the forced sink / local / last blocks
leave a 12.5% budget nothing to choose, and with a dense last block the prompt's final rows (the
question) attend to everything, so sink + local windows score almost as well as retrieval. Without
it, one selection per kv head (2 indexer heads) distilled on the candidate blocks only is what keeps
the indexer within 2 points of dense (results/proxy_v6_g2/).
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
    "0",
    "--indexer-heads",
    "2",
    "--kl-blocks",
    "candidates",
    "--logging-steps",
    "25",
    "--save-steps",
    "1000",
]

if __name__ == "__main__":
    main("qwen3", DEFAULTS + sys.argv[1:])
