"""Operators: an Apikley edit with Qwen, any Apikley model, and a whole catalog in one task."""
