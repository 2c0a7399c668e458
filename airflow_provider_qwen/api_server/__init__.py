"""What the provider adds to the Airflow api-server: Apikley's callbacks, and a page per Apikley task."""
