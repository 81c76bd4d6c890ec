"""Publishing: the Hub kernel repo, the trust_remote_code modeling file, model cards, repo folders."""
