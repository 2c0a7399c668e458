"""Operators: an edit with Qwen, any Apikley model, a whole catalog in one task, and a review in the UI."""
