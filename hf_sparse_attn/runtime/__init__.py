"""What runs inside a published model repo: ``hub.bundle`` renders this whole folder (with the ops
references) into its ``modeling_sparse_prefill.py``. Modules here import only each other and ``ops``."""
