"""Turning the book's markdown into stored chunks: uploads, jobs, chunking, embedding, upserts."""
