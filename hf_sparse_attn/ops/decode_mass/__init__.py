"""Indexer softmax mass of one decode query row, pooled per key block (the sparse-decode block score)."""
