"""Everything that speaks HTTP to Apikley; :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` is the way in."""

#: The Airflow connection operators, sensors and triggers use unless told otherwise.
DEFAULT_CONN_ID = "apikley_default"
