"""The stock task: market windows as prompts, answer parsing, rewards."""
