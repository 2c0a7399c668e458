"""Sensors: wait for an Apikley task someone else submitted."""
