"""Apikley's task callbacks, received by the Airflow api-server and turned into Asset events."""
