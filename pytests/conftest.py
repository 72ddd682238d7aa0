"""Fixtures for the dpms suite.

* ``server`` (session): the shared server. Uses ``DPMS_URL`` + ``DPMS_TEST_PLUGINS`` when both are
  set (run-tests.sh), otherwise starts ``dpms serve`` (``DPMS_BIN`` or target/debug/dpms) with
  ``plugins=<repo>/plugins:<temp folder>`` and stops it at the end.
* ``start_server(env=None, plugin_dirs=None)``: a dedicated server with its own settings, stopped at
  teardown (``start_module_server``: the same, stopped at the end of the test module).
* ``write_plugin(name, source, folder=None)``: writes ``<name>.py`` by rename into the shared
  server's plugin folder (or ``folder``); removed at teardown (``write_module_plugin``: per module).

Tests share one server: every module and API name a test creates is unique (``unique()``).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

from dpms_helpers import Launcher, PluginWriter, Server, launch


@pytest.fixture(scope="session")
def tmp_root():
    root = pathlib.Path(tempfile.mkdtemp(prefix="dpms-pytest-"))
    yield root
    if not os.environ.get("DPMS_KEEP_TMP"):
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def server(tmp_root):
    url = os.environ.get("DPMS_URL")
    plugins = os.environ.get("DPMS_TEST_PLUGINS")
    if url and plugins:
        yield Server(url, plugins)
        return
    try:
        srv = launch(tmp_root, name="shared")
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield srv
    finally:
        srv.stop()


def _servers(tmp_root):
    """Yields a ``start(env=None, plugin_dirs=None)`` function; stops what it started."""
    launcher = Launcher(tmp_root)

    def start(env=None, plugin_dirs=None, dotenv=None):
        try:
            return launcher(env=env, plugin_dirs=plugin_dirs, dotenv=dotenv)
        except RuntimeError as e:
            pytest.fail(str(e), pytrace=False)

    try:
        yield start
    finally:
        launcher.close()


def _writer(request):
    """Yields a plugin writer for the shared server's folder; removes what it wrote."""
    writer = PluginWriter(lambda: request.getfixturevalue("server").plugin_dir)
    try:
        yield writer
    finally:
        writer.cleanup()


@pytest.fixture
def start_server(tmp_root):
    yield from _servers(tmp_root)


@pytest.fixture(scope="module")
def start_module_server(tmp_root):
    yield from _servers(tmp_root)


@pytest.fixture
def write_plugin(request):
    yield from _writer(request)


@pytest.fixture(scope="module")
def write_module_plugin(request):
    yield from _writer(request)


@pytest.fixture
def plugin_folder(tmp_path):
    """A fresh empty folder for a dedicated server's plugins."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    return folder


@pytest.fixture
def chromium():
    found = shutil.which("chromium")
    assert found, "Chromium is missing: ./run-tests.sh installs Debian's `chromium` package"
    return found
