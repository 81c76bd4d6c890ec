"""Distill sparse-prefill indexers for a Qwen3.5 checkpoint (see `--help`).

python recipes/distill_qwen3_5.py --dataset emozilla/pg19 --seq-len 32768 --max-steps 300   # on a GPU
python recipes/distill_qwen3_5.py --smoke                                                   # CPU check
"""

from hf_sparse_attn.recipe import main

if __name__ == "__main__":
    main("qwen3_5")
