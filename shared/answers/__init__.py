"""From a reader's question to an answer: follow-ups, retrieval, generative and extractive answers."""
