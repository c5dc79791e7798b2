"""Using a trained adapter outside training: the ``stonk eval / predict / serve / export``
subcommands (commands), a run's adapter and a worker serving it (evaluate), predictions for
many tickers (predict), vLLM's OpenAI server (serve) and files for others (export)."""
