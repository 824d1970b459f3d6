"""The server's settings: one dataclass whose fields are the flags and the CADENZA_* variables."""
from dataclasses import fields

import pytest

from conftest import ROOT
from engine.errors import SettingsError
from engine.settings import ServerSettings, default, flag, from_args, parser, variable

SETTINGS = fields(ServerSettings)


def as_text(f, value) -> str:
    """A setting's value as one would type it."""
    if f.name == "models_dirs":
        return ":".join(value)
    if f.name == "auth":
        return ":".join(value)
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:  # a cap of 0: none
        return "0"
    return f"{value:g}" if isinstance(value, float) else str(value)


# a value other than the default for every setting, as typed, and as read
OTHER = {"host": "0.0.0.0", "port": "8123", "auth": "ann:secret", "share": "1", "outputs": "/tmp/o", "model": "m.pth",
         "device": "cpu", "devices": "0,1", "placement": "split", "max_memory": "0=20GiB", "decode": "eager",
         "audio_model": "a/b", "melody_model": "c/d", "concurrency": "3", "max_batch": "8", "max_search": "4", "max_wait_s": "30",
         "session_rows": "4", "session_waiting": "0", "queue_size": "5", "max_patches": "512", "max_variations": "2",
         "max_seconds": "60", "max_audio_seconds": "30", "max_upload_mb": "5", "max_score_chars": "5000",
         "formats": "abc,pdf", "models_dirs": "/m1:/m2", "allow_downloads": "x/y,z/w", "session_quota_mb": "10",
         "session_max_pieces": "9", "min_free_mb": "0", "max_outputs_gb": "0", "evict_idle_hours": "2",
         "max_wav_minutes": "1.5", "cache_hours": "1", "cache_max_gb": "0.5", "login_free_tries": "2",
         "trusted_proxies": "10.0.0.1", "shutdown_grace_s": "5", "ray": "head:6379", "replicas": "2", "replicas_max": "4",
         "replica_cpus": "2", "replica_gpus": "0.5", "render_replicas": "2", "audio_replicas": "1",
         "render_cpus": "0.5", "write_config": "/tmp/serve.yaml"}


def test_every_setting_has_one_flag_and_one_variable_and_nothing_set_means_the_defaults():
    assert {f.name for f in SETTINGS} == set(OTHER)  # a new setting gets a value in this test
    assert len({flag(f) for f in SETTINGS}) == len({variable(f) for f in SETTINGS}) == len(SETTINGS)
    assert all(variable(f).startswith("CADENZA_") and flag(f).startswith("--") for f in SETTINGS)
    assert from_args([], environ={}) == ServerSettings()


@pytest.mark.parametrize("f", SETTINGS, ids=lambda f: f.name)
def test_each_setting_is_read_from_its_variable_and_from_its_flag_and_the_flag_wins(f):
    from_env = from_args([], environ={variable(f): OTHER[f.name]})
    value = getattr(from_env, f.name)
    assert value != default(f) and as_text(f, value) == OTHER[f.name]
    if f.metadata["argparse"].get("action") == "store_const":  # a switch: the flag takes no value
        argv = [flag(f)]
    elif f.name == "models_dirs":
        argv = [x for d in OTHER[f.name].split(":") for x in (flag(f), d)]
    else:
        argv = [flag(f), OTHER[f.name]]
    assert getattr(from_args(argv, environ={}), f.name) == value
    if f.metadata["argparse"].get("action") != "store_const":  # the flag beats the variable
        typed_default = as_text(f, default(f)) if default(f) not in (None, (), "") else None
        if typed_default:
            assert getattr(from_args([flag(f), typed_default], environ={variable(f): OTHER[f.name]}), f.name) == default(f)


def test_a_value_that_cannot_be_read_says_where_it_came_from_and_what_was_expected():
    with pytest.raises(SettingsError, match="CADENZA_PORT must be a whole number, got 'eighty'"):
        from_args([], environ={"CADENZA_PORT": "eighty"})
    with pytest.raises(SettingsError, match="--max-wait must be a number, got 'soon'"):
        from_args(["--max-wait", "soon"], environ={})
    with pytest.raises(SettingsError, match="placement must be one of auto, single, split, replicate"):
        from_args([], environ={"CADENZA_PLACEMENT": "sideways"})
    with pytest.raises(SettingsError, match="auth must look like user:password"):
        from_args([], environ={"CADENZA_AUTH": "no-colon"})
    with pytest.raises(SettingsError, match="port must be from 1 to 65535"):
        from_args(["--port", "0"], environ={})
    with pytest.raises(SystemExit):  # argparse names the choices
        from_args(["--decode", "fastest"], environ={})
    with pytest.raises(SettingsError, match="max search must be from 1 .no search. to 16 candidates, got 17"):
        from_args(["--max-search", "17"], environ={})


def test_the_help_and_the_readme_name_every_flag_and_variable():
    help_text = parser().format_help()
    readme = (ROOT / "README.md").read_text()
    for f in SETTINGS:
        assert flag(f) in help_text and variable(f) in help_text
        assert flag(f) in readme and variable(f) in readme, f.name
