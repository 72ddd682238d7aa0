#!/usr/bin/env bash
# Replaces the embedded Swagger UI with swagger-ui-dist VERSION from npm (integrity checked).
set -euo pipefail
version="${1:?usage: fetch.sh VERSION}"
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
meta="$(curl -fsS "https://registry.npmjs.org/swagger-ui-dist/$version")"
url="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["tarball"])' <<<"$meta")"
want="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["dist"]["integrity"])' <<<"$meta")"
curl -fsS -o "$tmp/pkg.tgz" "$url"
got="sha512-$(openssl dgst -sha512 -binary "$tmp/pkg.tgz" | base64 -w0)"
[ "$got" = "$want" ] || { echo "integrity mismatch: $got != $want" >&2; exit 1; }
tar xzf "$tmp/pkg.tgz" -C "$tmp"
for f in swagger-ui-bundle.js swagger-ui.css LICENSE NOTICE swagger-ui-bundle.js.LICENSE.txt; do
    cp "$tmp/package/$f" "$here/$f"
done
echo "swagger-ui-dist $version: $want"
