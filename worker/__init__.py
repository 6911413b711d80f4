"""The queue door: the arq worker and its CLI, thin wrappers over `shared`."""
