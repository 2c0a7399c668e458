"""Everything that speaks HTTP to Apikley; :class:`~airflow_provider_qwen.hooks.apikley.ApikleyHook` is the way in."""

from airflow_provider_qwen import __version__

#: The Airflow connection operators, sensors and triggers use unless told otherwise.
DEFAULT_CONN_ID = "apikley_default"
#: The endpoint that answers the account's balance.
CREDIT_ENDPOINT = "/api/v1/chat/credit"
#: The ``User-Agent`` every request of the provider sends.
USER_AGENT = f"airflow-provider-qwen/{__version__}"
