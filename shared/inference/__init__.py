"""The model calls: chat completions, embeddings, and the bundled local semantic model."""
