"""The model: the explain-graph contract, the backend that runs it, and the extra passes perturbations need."""
