"""What Airflow learns about the provider through its entry point."""

from __future__ import annotations

import pytest
from packaging.version import Version

from airflow import __version__ as airflow_version

from airflow_provider_qwen import __version__, get_provider_info
from airflow_provider_qwen.hooks.apikley import ApikleyHook

# Airflow 3.2 reads the connection form from the provider info; 3.1 asks the hook, and only in a
# webserver that has flask-appbuilder installed.
FORM_FROM_PROVIDER_INFO = Version(airflow_version) >= Version("3.2")


@pytest.fixture(scope="module")
def providers_manager():
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    manager.initialize_providers_hooks()
    return manager


def test_the_provider_is_discovered_through_its_entry_point(providers_manager):
    assert providers_manager.providers["airflow-provider-qwen"].version == __version__


def test_the_apikley_connection_type_maps_to_the_hook(providers_manager):
    hook = providers_manager.hooks["apikley"]
    assert hook.hook_class_name == "airflow_provider_qwen.hooks.apikley.ApikleyHook"
    assert hook.connection_id_attribute_name == "apikley_conn_id"
    assert hook.hook_name == "Apikley"


def test_the_connection_form_relabels_and_hides_fields(providers_manager):
    if FORM_FROM_PROVIDER_INFO:
        behaviour = providers_manager.field_behaviours["apikley"]
    else:
        behaviour = ApikleyHook.get_ui_field_behaviour()
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    # the port stays: the base URL takes it, and Airflow 3.3.2's UI can only test a connection that has one
    assert set(behaviour["hidden_fields"]) == {"login", "schema"}
    assert "https://api.apikley.ru" in behaviour["placeholders"].values()


@pytest.mark.skipif(not FORM_FROM_PROVIDER_INFO, reason="extra fields in the form need Airflow 3.2+")
def test_the_connection_form_has_the_extras(providers_manager):
    widgets = providers_manager.connection_form_widgets
    # empty unless set: a saved default would send an emulator connection's uploads to the public API
    assert widgets["extra__apikley__upload_base_url"].field["value"] is None
    assert widgets["extra__apikley__timeout"].field["schema"]["type"] == ["number", "null"]


def test_every_module_named_in_the_provider_info_imports():
    import importlib

    info = get_provider_info()
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)


def test_the_unsigned_callback_setting_is_declared_and_off_by_default(providers_manager):
    from airflow.configuration import conf

    providers_manager.initialize_providers_configuration()
    conf.load_providers_configuration()
    assert conf.getboolean("apikley", "allow_unsigned_callbacks") is False
