#!/usr/bin/env python3
"""Tokens on the request path (issue 12's benchmark; SPEC §12).

dpms (target/release/dpms, one worker on CPU 0, wrk -t1 -c64 on CPU 1) with ADMIN_ID serves
module1's hello-world without tokens, then, restarted with DPMS_REQUIRE_TOKENS=True, with a
fresh single-use token per request (verification + replay-ledger insert): the difference in
server CPU per request is the tokens' cost. The tokens are minted before each wrk run (stdlib
HMAC, the standard JWT format) and read by bench/wrk/tokens.lua. The tokens-required server also
serves a copy declared `auth="public"` without a token. Granian-RSGI serves the same function
without any auth in the same run.

    bench/.venv/bin/python bench/tokens.py        (bench/run.sh builds and sets up the venv)

Targets: token cost <= 3 us of server CPU per request; hello-world with tokens >= 1.5x Granian.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench as B  # noqa: E402  (the shared helpers: servers, pinning, wrk, CPU accounting)

ADMIN = "00000000-0000-4000-8000-0000000070c0"
LUA = os.path.join(B.WRK_DIR, "tokens.lua")
PUBLIC_MODULE = '''\
from vyperlogix.decorators import expose


@expose.endpoint(method="GET", API="hello-public", auth="public")
def foo(*args, **kwargs):
    return {"args": {i: a for i, a in enumerate(args)},
            "kwargs": {k: v for k, v in kwargs.items() if k != "__request__"},
            "response": "hello-world"}
'''


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def mint_file(path, key, count):
    """`count` tokens for the admin, one per line, valid for the next 60 s."""
    secret = base64.urlsafe_b64decode(key["secret"] + "=" * (-len(key["secret"]) % 4))
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key["kid"]},
                          separators=(",", ":")).encode())
    now = int(time.time())
    with open(path, "w") as f:
        for _ in range(count):
            body = b64(json.dumps({"sub": ADMIN, "iat": now, "exp": now + 60,
                                   "jti": b64(os.urandom(16))}, separators=(",", ":")).encode())
            signing = head + "." + body
            sig = b64(hmac.new(secret, signing.encode(), hashlib.sha256).digest())
            f.write(signing + "." + sig + "\n")


def measure_tokens(server, case, key, rate_hint, workdir):
    """measure_once's figures for a run whose every request carries a new token."""
    def run(secs, name):
        path = os.path.join(workdir, name)
        mint_file(path, key, int(rate_hint * (secs + 1) * 1.5) + 1000)
        os.environ["DPMS_BENCH_TOKENS"] = path
        return path

    run(B.WARMUP, "warm.txt")
    B.run_wrk(server.port, case, B.WARMUP, script=LUA)
    run(B.SECS, "measure.txt")
    B.wait_quiet(server.pgid)
    ticks0, busy0, wrk0 = B.cpu_ticks(server.pgid), B.machine_busy_ticks(), B.children_cpu_secs()
    t0 = time.monotonic()
    r, _ = B.run_wrk(server.port, case, B.SECS, script=LUA)
    wall = time.monotonic() - t0
    ticks1, busy1, wrk1 = B.cpu_ticks(server.pgid), B.machine_busy_ticks(), B.children_cpu_secs()
    secs = (ticks1 - ticks0) / B.CLK_TCK
    r["cpu_us"] = secs * 1e6 / r["requests"] if r["requests"] else None
    r["server_cpu_pct"] = 100.0 * secs / wall
    r["other_cpu_pct"] = max(0.0, 100.0 * ((busy1 - busy0) / B.CLK_TCK - secs - (wrk1 - wrk0)) / wall)
    return r


def main():
    workdir = tempfile.mkdtemp(prefix="dpms-bench-tokens-")
    data = os.path.join(workdir, "data")
    public = os.path.join(workdir, "public")
    os.mkdir(public)
    B.write_atomically(os.path.join(public, "hello_public.py"), PUBLIC_MODULE)
    env = dict(os.environ, ADMIN_ID=ADMIN, DPMS_DATA_DIR=data)
    out = subprocess.run([B.DPMS_BIN, "token", "rotate", ADMIN], env=env, cwd=workdir,
                         capture_output=True, text=True, timeout=60, check=True)
    key = json.loads(out.stdout)

    # The same call without tokens: the same plugins, ADMIN_ID and registry, tokens not required.
    plain = B.make_dpms("dpms-plain", [os.path.join(B.ROOT, "plugins"), public], workdir,
                        B.dpms_has_workers())
    plain.env.update({"ADMIN_ID": ADMIN, "DPMS_DATA_DIR": data, "DPMS_LOG": "warn"})
    srv = B.make_dpms("dpms-tokens", [os.path.join(B.ROOT, "plugins"), public], workdir,
                      B.dpms_has_workers())
    srv.env.update({"ADMIN_ID": ADMIN, "DPMS_DATA_DIR": data, "DPMS_REQUIRE_TOKENS": "True",
                    "DPMS_LOG": "warn"})
    public_case = B.Case("hello-world, public", "/rest/services/hello-public/" + B.PARAMS)
    token_case = B.Case("hello-world, token", B.HELLO.path)
    results = {}
    try:
        plain.start(B.HELLO.path)
        B.log("dpms-plain: hello-world, no token")
        results["plain"] = B.measure(plain, B.HELLO)
    finally:
        plain.stop()
    try:
        srv.start(public_case.path)
        B.log("dpms-tokens: public")
        results["public"] = B.measure(srv, public_case)
        B.log("dpms-tokens: token per request")
        results["token"] = measure_tokens(srv, token_case, key, results["public"]["rps"], workdir)
    finally:
        srv.stop()
    granian = B.make_granian(workdir)
    try:
        granian.start(B.HELLO.path)
        B.log("granian: hello-world")
        results["granian"] = B.measure(granian, B.HELLO)
    finally:
        granian.stop()

    print("\ntokens benchmark (1 worker on CPU %s, wrk -t1 -c%d on CPU %s, %g s per case)"
          % (B.SERVER_CPU, B.CONNS, B.WRK_CPU, B.SECS))
    print("%-32s %10s %9s %9s %11s %8s %7s %7s" % ("case", "req/s", "p50", "p99", "CPU us/req", "server%",
                                                "non2xx", "other%"))
    for name, r in (("dpms hello-world, no tokens", results["plain"]),
                    ("dpms hello-world, token each", results["token"]),
                    ("dpms (tokens required), public", results["public"]),
                    ("granian hello-world (no auth)", results["granian"])):
        print("%-32s %10s %9s %9s %11s %8.0f %7d %7.0f" % (name, B.fmt_rate(r["rps"]), B.fmt_ms(r["p50_ms"]),
              B.fmt_ms(r["p99_ms"]), B.fmt_num(r["cpu_us"]), r.get("server_cpu_pct", 0.0), r["non2xx"],
              r["other_cpu_pct"]))
    cost = results["token"]["cpu_us"] - results["plain"]["cpu_us"]
    ratio = results["token"]["rps"] / results["granian"]["rps"]
    print("\ntargets")
    print("  %s token verification + ledger <= 3 us CPU/request : %+.1f us" % (B.verdict(cost <= 3.0), cost))
    print("  %s hello-world with tokens >= 1.5x Granian          : %.2fx" % (B.verdict(ratio >= 1.5), ratio))
    capacity = 1e6 / results["token"]["cpu_us"] / results["granian"]["rps"]
    print("  (the token run kept the server's core %.0f%% busy: wrk building each request in Lua is"
          " the limit there; at its CPU per request the core would carry %.2fx Granian)"
          % (results["token"]["server_cpu_pct"], capacity))
    if results["token"]["non2xx"]:
        print("  ! %d token requests were not 2xx (the token file ran out, or tokens were refused)"
              % results["token"]["non2xx"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
