"""Interleaved A/B of two dpms builds on one case: each round runs build A then build B
(one worker pinned to CPU 0, wrk -t1 -c64 on CPU 1, 2 s warm-up, 8 s measured), so slow drift of
the machine falls on both alike. Prints req/s and server CPU us/request (utime+stime of the
server's process group) per run and the medians.

    python3 bench/ab.py get|post REPO_A REPO_B [ROUNDS]

Each REPO must hold target/release/dpms (bench/run.sh builds it) and plugins/.
"""
import os, socket, subprocess, time, signal, sys, re, tempfile, urllib.request
LUA=os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk", "post_sample_one.lua")
P="/rest/services/sample-one/1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4"
def cpu(pgid):
    t=0
    for pid in os.listdir("/proc"):
        if not pid.isdigit(): continue
        try:
            st=open(f"/proc/{pid}/stat").read().rsplit(")",1)[1].split()
        except OSError: continue
        if int(st[2])==pgid:
            t+=sum(int(x) for x in st[11:15])
    return t/os.sysconf("SC_CLK_TCK")
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
def run(repo, port, lua, path):
    env=dict(os.environ, plugins=f"{repo}/plugins", DPMS_SHUTDOWN_SECS="2")
    d=tempfile.mkdtemp()
    p=subprocess.Popen(["taskset","-c","0",f"{repo}/target/release/dpms","serve","--workers","1","--port",str(port)],cwd=d,env=env,start_new_session=True,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    url=f"http://127.0.0.1:{port}{path}"
    for _ in range(100):
        try: urllib.request.urlopen(f"http://127.0.0.1:{port}/rest/services/__dir__/"); break
        except Exception: time.sleep(0.1)
    w=["taskset","-c","1","wrk","-t1","-c64"]+(["-s",lua] if lua else [])
    subprocess.run(w+["-d2s",url],capture_output=True)
    c0=cpu(p.pid); out=subprocess.run(w+["-d8s",url],capture_output=True,text=True).stdout; c1=cpu(p.pid)
    m=re.search(r"(\d+) requests in",out)
    if not m:
        sys.exit("wrk printed no request count:\n" + out)
    n=int(m.group(1))
    os.killpg(p.pid,signal.SIGTERM); p.wait()
    return n/8, (c1-c0)/n*1e6
case=sys.argv[1]
lua,path=(LUA,P) if case=="post" else (None,"/rest/services/hello-world/1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4")
builds={"A": sys.argv[2], "B": sys.argv[3]}
rounds=int(sys.argv[4]) if len(sys.argv) > 4 else 3
res={k: [] for k in builds}
for i in range(rounds):
    for name,repo in builds.items():
        r=run(repo, free_port(), lua, path); res[name].append(r)
        print(name, builds[name], "%.0f req/s %.2f us" % r, flush=True)
for k,v in res.items():
    print("%s (%s): median %.2f us/req, %.0f req/s" % (k, builds[k], sorted(x[1] for x in v)[len(v)//2], sorted(x[0] for x in v)[len(v)//2]))
