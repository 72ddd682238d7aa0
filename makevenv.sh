#!/usr/bin/env bash
# Creates ./.venv (from Debian's /usr/bin/python3.11, the interpreter dpms embeds) with what the
# pytest suite needs, and installs ./python (dpms + vyperlogix.decorators) into it so sample
# plugins also import under plain python. Idempotent: re-running only refreshes what changed.
set -euo pipefail
cd "$(dirname "$0")"
PY=/usr/bin/python3.11
VENV=${VENV_DIR:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.dpms-requirements"
want="$(cat pytests/requirements.txt python/pyproject.toml python/dpms/*.py python/vyperlogix/*.py python/vyperlogix/decorators/*.py | sha256sum)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r pytests/requirements.txt
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
    echo "$want" > "$stamp"
fi
