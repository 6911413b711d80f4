"""Readers: sign-up and sign-in, sessions and their cache, chat history, auth rate limits."""
