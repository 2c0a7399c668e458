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


def test_the_resume_settle_setting_is_declared_with_the_triggers_default(providers_manager):
    from airflow.configuration import conf

    from airflow_provider_qwen.triggers.apikley import RESUME_SETTLE_SECONDS

    providers_manager.initialize_providers_configuration()
    conf.load_providers_configuration()
    assert conf.getfloat("apikley", "resume_settle_seconds") == RESUME_SETTLE_SECONDS


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


@pytest.mark.skipif(not FORM_FROM_PROVIDER_INFO, reason="extra fields in the form need Airflow 3.2+")
def test_every_extra_the_hook_reads_is_in_the_form_with_the_documented_help(providers_manager):
    from airflow_provider_qwen.connection_form import EXTRA_FIELDS, connection_reference_markdown
    from airflow_provider_qwen.hooks.connection import KNOWN_EXTRAS

    widgets = providers_manager.connection_form_widgets
    in_form = {name.removeprefix("extra__apikley__") for name in widgets if name.startswith("extra__apikley__")}
    assert in_form == KNOWN_EXTRAS >= {"proxies", "verify"}
    reference = connection_reference_markdown()
    for field in EXTRA_FIELDS:
        widget = widgets[f"extra__apikley__{field.name}"]
        assert widget.field["description"] == field.description
        assert f"| extra `{field.name}` | {field.label} | {field.description} |" in reference


def test_the_reference_table_documents_airflows_own_fields_as_the_form_labels_them(providers_manager):
    from airflow_provider_qwen.connection_form import connection_reference_markdown

    behaviour = ApikleyHook.get_ui_field_behaviour()
    for field, label in behaviour["relabeling"].items():
        assert f"| {field} | {label} |" in connection_reference_markdown()


def test_the_webhook_secret_help_says_callbacks_are_refused_without_it():
    from airflow_provider_qwen.connection_form import CONN_FIELDS

    help_text = CONN_FIELDS["webhook_secret"]["description"]
    assert (
        "Callbacks are refused without it, unless the deployment sets [apikley] allow_unsigned_callbacks" in help_text
    )


@pytest.mark.parametrize(
    ("saved", "proxies"),
    [
        ({"https": "http://proxy:3128"}, {"https": "http://proxy:3128"}),
        ('{"https": "http://proxy:3128"}', {"https": "http://proxy:3128"}),
    ],
)
def test_proxies_are_read_as_json_or_as_the_form_saves_them(saved, proxies):
    from airflow.models.connection import Connection

    from airflow_provider_qwen.hooks.connection import ApikleySettings

    conn = Connection(conn_id="apikley_proxied", conn_type="apikley", password="k" * 8, extra={"proxies": saved})
    assert ApikleySettings.from_connection(conn).proxies == proxies


def test_extras_the_form_saves_empty_read_as_their_defaults():
    """The UI saves every extra of the form, an empty one as null: each reads as if unset."""
    from airflow.models.connection import Connection

    from airflow_provider_qwen.connection_form import EXTRA_FIELDS
    from airflow_provider_qwen.hooks.connection import ApikleySettings

    empty = {field.name: None for field in EXTRA_FIELDS}
    saved = Connection(conn_id="apikley_form", conn_type="apikley", password="k" * 8, extra=empty)
    unset = Connection(conn_id="apikley_form", conn_type="apikley", password="k" * 8)
    assert ApikleySettings.from_connection(saved) == ApikleySettings.from_connection(unset)


def test_a_connection_owned_by_a_team_says_so_and_one_without_says_nothing():
    from types import SimpleNamespace

    from airflow.models.connection import Connection

    from airflow_provider_qwen.hooks.connection import ApikleySettings

    plain = Connection(conn_id="apikley_plain", conn_type="apikley", password="k" * 8)
    assert ApikleySettings.from_connection(plain).team is None
    # Airflow 3.3's connections carry team_name under [core] multi_team; older ones have no such attribute
    owned = SimpleNamespace(**{name: getattr(plain, name) for name in ("conn_id", "conn_type", "password", "host")})
    owned.extra_dejson, owned.team_name, owned.login, owned.schema, owned.port = {}, "editors", None, None, None
    assert ApikleySettings.from_connection(owned, extra={}).team == "editors"
