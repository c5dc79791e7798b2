"""What a config needs before anything starts: the memory plan per GPU (memory, its terms in
memory_terms, the model's shape without torch in model_shape) and the checks in the user's
terms that refuse a config that cannot run (preflight)."""
