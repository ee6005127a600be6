"""Embedding a collection into a FAISS index with SQLite metadata, and searching it."""
