"""Tokens for the tests (SPEC §12), minted with PyJWT — a library that knows nothing of dpms —
and `dpms` commands run on a given registry folder."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import subprocess
import time
import uuid

import jwt

from dpms_helpers import TIMEOUT, binary_path, clean_env, write_atomic


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def secret_of(key: dict) -> bytes:
    """The raw secret of a key as dpms hands it out (`{"kid", "secret": base64url}`)."""
    s = key["secret"]
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def mint(key: dict, sub: str, ttl: int = 60, iat: int | None = None, **claims) -> str:
    """A fresh single-use token for `sub` signed with `key`."""
    now = int(time.time()) if iat is None else iat
    body = {"sub": sub, "iat": now, "exp": now + ttl, "jti": b64(os.urandom(16)), **claims}
    return jwt.encode(body, secret_of(key), algorithm="HS256", headers={"kid": key["kid"]})


def run_dpms(data: pathlib.Path, admin: str, *args) -> str:
    """`dpms ARGS` on the registry in `data` with ADMIN_ID `admin`; its stdout (it must succeed)."""
    p = subprocess.run(
        [str(binary_path()), *args],
        cwd=data.parent,
        env=clean_env({"ADMIN_ID": admin, "DPMS_DATA_DIR": str(data)}),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p.stdout


def add_tenant(data: pathlib.Path, admin: str, prefix: str) -> str:
    """Registers a tenant `<prefix>-<random>` in the registry in `data`; its uuid."""
    return json.loads(run_dpms(data, admin, "tenant", "add", f"{prefix}-{uuid.uuid4().hex[:8]}"))["uuid"]


def serve_registry(start_server, data: pathlib.Path, admin: str, files: dict, **env):
    """A dedicated server on the registry in `data` (ADMIN_ID `admin`, one worker unless `env`
    says otherwise) serving `files` (`name.py` -> source) from a fresh folder beside it."""
    plugins = data.parent / "plugins"
    plugins.mkdir()
    for name, source in files.items():
        write_atomic(plugins / name, source)
    settings = {"ADMIN_ID": admin, "DPMS_WORKERS": "1", "DPMS_DATA_DIR": str(data), **env}
    return start_server(env=settings, plugin_dirs=[plugins])
