#!/usr/bin/env python3
"""FHIR search benchmark over real HTTP under gunicorn, against a database made by generate.py.

For each database given: start gunicorn on 127.0.0.1 (workers / worker class / threads
configurable), wait until it answers, sample real ids, NHS numbers and codes from the database,
check which search features the server honours (``_sort``, ``_include``), warm up, then drive

- each scenario alone and the weighted mix, with K concurrent clients (default 16) for a bounded
  time (default 30 s) -- by default with ``wrk`` (Debian package; a Lua script cycles through the
  pre-built URLs and counts every non-200 as an error), or with the built-in Python driver
  (threads, one keep-alive ``http.client`` connection each, per-scenario breakdown of the mix);
- page 1 vs page 100 of a large result (follow ``next`` 100 times, then time both pages);

and print a table; everything is also written as JSON to ``bench/results/``. Machine facts
(nproc, CPU model, RAM) and the load generator's own CPU use are recorded with the figures.

Example::

    python bench/search_bench.py \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search_small \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench_search \\
        --workers 2 --clients 16 --duration 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import resource as rlimit
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOINC = "http://loinc.org"
LAB_CODES = ["2339-0", "6298-4", "2947-0", "38483-4", "4548-4", "2093-3", "718-7", "6690-2"]
MIX_WEIGHTS = {
    "timeline": 20,
    "latest_code": 20,
    "reports_include": 10,
    "imaging": 5,
    "nhs_number": 10,
    "code_date_paging": 10,
    "summary_count": 5,
    "last_updated_poll": 5,
    "read": 15,
}


# ---- machine ------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except OSError:
        mem_kb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def proc_cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, from /proc/<pid>/stat."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError):
            pass
    return total / hz


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)


# ---- server -------------------------------------------------------------------------------------
class Server:
    def __init__(self, url: str, port: int, workers: int, worker_class: str, threads: int,
                 app: str = "wsgi:app", chdir: Path | None = None, extra_env: dict | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}/fhir"
        env = dict(os.environ)
        env.update(
            DATABASE_URL=url,
            SECRET_KEY="bench-secret-key",
            PUBLIC_BASE_URL=self.base,
            # Search cost without the SMART token check (measured apart): an open API is refused
            # in production, so the development config with production's settings otherwise.
            RESULTS_REPO_ENV="development",
            AUTH_REQUIRED="false",
            BULK_INPROCESS_WORKER="false",
        )
        env.update(extra_env or {})
        cmd = [
            shutil.which("gunicorn") or "gunicorn",
            "-w", str(workers),
            "-b", f"127.0.0.1:{port}",
            "--worker-class", worker_class,
            "--log-level", "warning",
            "--backlog", "2048",
        ]
        if worker_class == "gthread":
            cmd += ["--threads", str(threads)]
        if chdir is not None:
            cmd += ["--chdir", str(chdir)]
        cmd.append(app)
        self.cmd = cmd
        self.log = tempfile.NamedTemporaryFile("w+", prefix="gunicorn-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"gunicorn exited; see {self.log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/fhir/metadata")
                if c.getresponse().status == 200:
                    c.close()
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit("gunicorn did not answer within 60 s")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- samples and URLs ---------------------------------------------------------------------------
def sample(url: str, seed: int) -> dict:
    from sqlalchemy import create_engine, text

    eng = create_engine(url)
    with eng.connect() as c:
        patients = list(c.execute(text(
            "SELECT res_id FROM resource WHERE res_type = 'Patient' ORDER BY rid"
        )).scalars())
        nhs = list(c.execute(text(
            "SELECT code FROM sp_token WHERE res_type = 'Patient' AND param = 'identifier' "
            "AND system = :s ORDER BY rid"
        ), {"s": NHS}).scalars())
        imaging = list(c.execute(text(
            "SELECT DISTINCT target_id FROM sp_reference WHERE res_type = 'ImagingStudy' "
            "AND param = 'patient' ORDER BY 1"
        )).scalars())
        recent = c.execute(text(
            "SELECT last_updated FROM resource WHERE res_type = 'Observation' "
            "ORDER BY last_updated DESC OFFSET 2000 LIMIT 1"
        )).scalar()
        big_code = c.execute(text(
            "SELECT code FROM sp_token WHERE res_type = 'Observation' AND param = 'code' "
            "AND system = :s GROUP BY code ORDER BY count(*) DESC LIMIT 1"
        ), {"s": LOINC}).scalar()
        big_n = c.execute(text(
            "SELECT count(*) FROM sp_token WHERE res_type = 'Observation' AND param = 'code' "
            "AND system = :s AND code = :c"
        ), {"s": LOINC, "c": big_code}).scalar()
        obs = c.execute(text("SELECT count(*) FROM resource WHERE res_type = 'Observation'")).scalar()
    eng.dispose()
    rng = random.Random(seed)
    return {
        "patients": rng.sample(patients, min(500, len(patients))),
        "nhs": rng.sample(nhs, min(500, len(nhs))),
        "imaging_patients": rng.sample(imaging, min(300, len(imaging))),
        "recent": recent.strftime("%Y-%m-%dT%H:%M:%S") + "Z",
        "big_code": big_code,
        "big_code_count": big_n,
        "observations": obs,
        "n_patients": len(patients),
    }


def scenario_urls(s: dict, seed: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    P = s["patients"]
    tok = lambda system, code: quote(f"{system}|{code}", safe="")  # noqa: E731
    out: dict[str, list[str]] = {
        "timeline": [f"/fhir/Observation?subject=Patient/{p}&_sort=-date&_count=20" for p in P],
        "latest_code": [
            f"/fhir/Observation?subject=Patient/{p}&code={tok(LOINC, rng.choice(LAB_CODES[:4]))}"
            f"&_sort=-date&_count=1"
            for p in P
        ],
        "reports_include": [
            f"/fhir/DiagnosticReport?subject=Patient/{p}&_include=DiagnosticReport:result" for p in P
        ],
        "imaging": [f"/fhir/ImagingStudy?patient=Patient/{p}" for p in s["imaging_patients"]],
        "nhs_number": [f"/fhir/Patient?identifier={tok(NHS, n)}" for n in s["nhs"]],
        "code_date_paging": [],
        "summary_count": [
            f"/fhir/Observation?code={tok(LOINC, c)}&_summary=count" for c in LAB_CODES
        ],
        "last_updated_poll": [f"/fhir/Observation?_lastUpdated=gt{s['recent']}"],
        "read": [f"/fhir/Patient/{p}" for p in P],
    }
    for _ in range(100):
        y = rng.randrange(2009, 2024)
        out["code_date_paging"].append(
            f"/fhir/Observation?code={tok(LOINC, rng.choice(LAB_CODES))}"
            f"&date=ge{y}-01-01&date=lt{y + 1}-01-01&_count=50"
        )
    return out


def get(conn_or_base, path: str):
    u = urlsplit(conn_or_base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    t = time.perf_counter()
    c.request("GET", path, headers={"Accept": "application/fhir+json"})
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t
    c.close()
    return r.status, body, dt


def _path_of(link: str) -> str:
    u = urlsplit(link)
    return u.path + ("?" + u.query if u.query else "")


def next_link(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    for ln in doc.get("link", []):
        if ln.get("relation") == "next":
            return _path_of(ln["url"])
    return None


def add_page_two(base: str, urls: dict[str, list[str]]) -> int:
    """Follow the next link of each code+date query once; page-2 URLs join the scenario."""
    added = 0
    for p in list(urls["code_date_paging"]):
        st, body, _ = get(base, p)
        nxt = next_link(body) if st == 200 else None
        if nxt:
            urls["code_date_paging"].append(nxt)
            added += 1
    return added


def features(base: str, urls: dict[str, list[str]]) -> dict:
    """Which requested features the server honours (lenient mode ignores unknown ones)."""
    notes: dict = {}
    st, body, _ = get(base, urls["timeline"][0])
    dates = []
    if st == 200:
        for e in json.loads(body).get("entry", []):
            r = e.get("resource", {})
            d = r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start")
            if d:
                dates.append(d)
    notes["sort_by_date_desc"] = bool(dates) and dates == sorted(dates, reverse=True) and len(set(dates)) > 1
    inc = False
    for p in urls["reports_include"][:10]:
        st, body, _ = get(base, p)
        if st == 200 and any(e.get("search", {}).get("mode") == "include" for e in json.loads(body).get("entry", [])):
            inc = True
            break
    notes["include_results"] = inc
    st, body, _ = get(base, urls["summary_count"][0])
    notes["summary_count_total"] = json.loads(body).get("total") if st == 200 else f"HTTP {st}"
    st, body, _ = get(base, urls["last_updated_poll"][0])
    notes["last_updated_poll_entries"] = len(json.loads(body).get("entry", [])) if st == 200 else f"HTTP {st}"
    return notes


def mix_urls(urls: dict[str, list[str]], seed: int, n: int = 4000) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = [k for k in MIX_WEIGHTS if urls.get(k)]
    weights = [MIX_WEIGHTS[k] for k in names]
    return [(k, rng.choice(urls[k])) for k in rng.choices(names, weights, k=n)]


# ---- drivers ------------------------------------------------------------------------------------
def pct(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    i = min(len(sorted_ms) - 1, max(0, round(q / 100 * len(sorted_ms)) - 1))
    return sorted_ms[i]


def drive_python(base: str, items: list[tuple[str, str]], clients: int, duration: float, max_requests: int) -> dict:
    """Threads with one keep-alive connection each; per-scenario latencies."""
    u = urlsplit(base)
    stop = time.perf_counter() + duration
    lock = threading.Lock()
    counter = [0]
    results: list[tuple[str, float, int]] = []
    errors: list[str] = []

    def run(k: int) -> None:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        i = k * 7919
        local: list[tuple[str, float, int]] = []
        while time.perf_counter() < stop:
            with lock:
                if counter[0] >= max_requests:
                    break
                counter[0] += 1
            name, path = items[i % len(items)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("GET", path, headers={"Accept": "application/fhir+json"})
                r = conn.getresponse()
                body = r.read()
                st = r.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
                st, body = 0, str(exc).encode()
            local.append((name, (time.perf_counter() - t) * 1000, st))
            if st != 200 and len(errors) < 5:
                errors.append(f"{st} {path[:160]} -> {body[:300]!r}")
        conn.close()
        with lock:
            results.extend(local)

    ru0 = rlimit.getrusage(rlimit.RUSAGE_SELF)
    b0 = cpu_busy()
    t0 = time.perf_counter()
    ths = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.perf_counter() - t0
    ru1 = rlimit.getrusage(rlimit.RUSAGE_SELF)
    b1 = cpu_busy()
    out = summarise([(lat, st) for _, lat, st in results], wall)
    out["errors_sample"] = errors
    out["driver"] = "python"
    out["driver_cpu_cores"] = round(((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall, 2)
    out["machine_cpu_busy"] = round((b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 2)
    per: dict[str, dict] = {}
    for name in sorted({n for n, _, _ in results}):
        per[name] = summarise([(lat, st) for n, lat, st in results if n == name], wall)
    out["per_scenario"] = per
    return out


def summarise(lat_status: list[tuple[float, int]], wall: float) -> dict:
    lat = sorted(x for x, _ in lat_status)
    return {
        "requests": len(lat),
        "seconds": round(wall, 1),
        "rps": round(len(lat) / wall, 1) if wall else 0,
        "p50_ms": round(pct(lat, 50), 1),
        "p95_ms": round(pct(lat, 95), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "errors": sum(1 for _, st in lat_status if st != 200),
    }


WRK_LUA = r"""
local paths = {%s}
counter = 0
errors = 0
sample = ""
local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end
function init(args)
  counter = (id - 1) * 7919
end
function request()
  counter = counter + 1
  return wrk.format("GET", paths[(counter %% #paths) + 1], {["Accept"] = "application/fhir+json"})
end
function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    if sample == "" then sample = status .. " " .. string.sub(body or "", 1, 300) end
  end
end
function done(summary, latency, requests)
  local errs, smp = 0, ""
  for _, t in ipairs(threads) do
    errs = errs + t:get("errors")
    local s = t:get("sample")
    if smp == "" and s ~= nil then smp = s end
  end
  io.write(string.format('WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p95_us": %%d, "p99_us": %%d, "mean_us": %%f, "errors": %%d, "socket_errors": %%d, "sample": %%q}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, errs,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    smp))
end
"""


def drive_wrk(base: str, paths: list[str], clients: int, duration: float, wrk_threads: int) -> dict:
    lua = WRK_LUA % ",".join(json.dumps(p) for p in paths)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
        script = f.name
    u = urlsplit(base)
    cmd = ["wrk", "-t", str(wrk_threads), "-c", str(clients), "-d", f"{int(duration)}s",
           "--timeout", "30s", "-s", script, f"http://{u.hostname}:{u.port}"]
    ru0 = rlimit.getrusage(rlimit.RUSAGE_CHILDREN)
    b0 = cpu_busy()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = rlimit.getrusage(rlimit.RUSAGE_CHILDREN)
    b1 = cpu_busy()
    os.unlink(script)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {proc.stdout}\n{proc.stderr}")
    raw = line[len("WRKJSON "):].replace("\\\n", "\\n")
    try:
        d = json.loads(raw)
    except ValueError:
        d = json.loads(raw.split(', "sample"')[0] + "}")
        d["sample"] = "(unparsable)"
    secs = d["duration_us"] / 1e6
    return {
        "requests": d["requests"],
        "seconds": round(secs, 1),
        "rps": round(d["requests"] / secs, 1),
        "p50_ms": round(d["p50_us"] / 1000, 1),
        "p95_ms": round(d["p95_us"] / 1000, 1),
        "p99_ms": round(d["p99_us"] / 1000, 1),
        "errors": d["errors"] + d["socket_errors"],
        "errors_sample": [d["sample"]] if d["sample"] else [],
        "driver": "wrk",
        "driver_cpu_cores": round(((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / wall, 2),
        "machine_cpu_busy": round((b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 2),
    }


# ---- paging -------------------------------------------------------------------------------------
def paging(base: str, code: str, pages: int = 100, repeats: int = 15) -> dict:
    first = f"/fhir/Observation?code={quote(f'{LOINC}|{code}', safe='')}&_count=50"
    path = first
    chain = []
    for i in range(pages - 1):
        st, body, dt = get(base, path)
        chain.append(round(dt * 1000, 1))
        if st != 200:
            return {"error": f"page {i + 1}: HTTP {st} {body[:200]!r}"}
        nxt = next_link(body)
        if not nxt:
            return {"error": f"no next link after page {i + 1}"}
        path = nxt
    last = path

    def timed(p: str) -> float:
        u = urlsplit(base)
        c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            c.request("GET", p)
            r = c.getresponse()
            r.read()
            ts.append((time.perf_counter() - t) * 1000)
        c.close()
        return round(statistics.median(ts), 2)

    p1, p100 = timed(first), timed(last)
    return {
        "query": first,
        "page_size": 50,
        "page1_median_ms": p1,
        f"page{pages}_median_ms": p100,
        "ratio": round(p100 / p1, 2),
        "chain_first_ms": chain[:3],
        "chain_last_ms": chain[-3:],
    }


# ---- main ---------------------------------------------------------------------------------------
def run_database(args, url: str) -> dict:
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    print(f"\n=== {db} ===", flush=True)
    s = sample(url, args.seed)
    print(f"  {s['n_patients']} patients, {s['observations']} observations; large result: "
          f"code {s['big_code']} ({s['big_code_count']} Observations)")
    b0 = cpu_busy()
    time.sleep(3)
    b1 = cpu_busy()
    baseline = round((b1[0] - b0[0]) / max(1, b1[1] - b0[1]), 2)
    print(f"  machine CPU busy before the server starts (other work on the box): {baseline:.0%}")
    srv = Server(url, args.port, args.workers, args.worker_class, args.threads)
    try:
        base = srv.base
        urls = scenario_urls(s, args.seed)
        n2 = add_page_two(base, urls)
        feats = features(base, urls)
        feats["page_two_urls"] = n2
        print(f"  features: {feats}")
        items = mix_urls(urls, args.seed)
        use_wrk = args.driver == "wrk"
        # Warm-up: every URL of every scenario once, then a short mix.
        for lst in urls.values():
            for p in lst[:50]:
                get(base, p)
        warm = drive_python(base, items, args.clients, args.warmup, 10**9)
        print(f"  warm-up: {warm['rps']} req/s, p95 {warm['p95_ms']} ms, errors {warm['errors']}")
        res: dict = {"database": db, "observations": s["observations"], "patients": s["n_patients"],
                     "features": feats, "scenarios": {}, "baseline_machine_cpu_busy": baseline}
        if not args.skip_scenarios:
            for name, lst in urls.items():
                if args.only and name not in args.only:
                    continue
                if use_wrk:
                    r = drive_wrk(base, lst, args.clients, args.scenario_duration, args.wrk_threads)
                else:
                    r = drive_python(base, [(name, p) for p in lst], args.clients,
                                     args.scenario_duration, args.max_requests)
                    r.pop("per_scenario", None)
                res["scenarios"][name] = r
                time.sleep(3)  # let requests still queued from a slow scenario drain
                print(f"  {name:20s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f}  p95 {r['p95_ms']:6.1f}  "
                      f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}", flush=True)
                for e in r.get("errors_sample", [])[:1]:
                    print(f"      error sample: {e[:300]}")
        workers, pg = srv.worker_pids(), postgres_pids()
        c0 = (proc_cpu_seconds(workers), proc_cpu_seconds(pg), time.perf_counter())
        if use_wrk:
            res["mix"] = drive_wrk(base, [p for _, p in items], args.clients, args.duration, args.wrk_threads)
        else:
            res["mix"] = drive_python(base, items, args.clients, args.duration, args.max_requests)
        c1 = (proc_cpu_seconds(workers), proc_cpu_seconds(pg), time.perf_counter())
        n = max(1, res["mix"]["requests"])
        res["mix"]["cpu_split"] = {
            "gunicorn_workers_cores": round((c1[0] - c0[0]) / (c1[2] - c0[2]), 2),
            "postgres_cores": round((c1[1] - c0[1]) / (c1[2] - c0[2]), 2),
            "app_cpu_ms_per_request": round((c1[0] - c0[0]) / n * 1000, 2),
            "postgres_cpu_ms_per_request": round((c1[1] - c0[1]) / n * 1000, 2),
        }
        if args.mix_breakdown and use_wrk:
            res["mix_python"] = drive_python(base, items, args.clients, args.duration, args.max_requests)
        m = res["mix"]
        print(f"  {'MIX':20s} {m['rps']:8.1f} req/s  p50 {m['p50_ms']:6.1f}  p95 {m['p95_ms']:6.1f}  "
              f"p99 {m['p99_ms']:6.1f} ms  errors {m['errors']}  (driver {m['driver']} "
              f"{m['driver_cpu_cores']} cores; machine busy {m['machine_cpu_busy']:.0%})", flush=True)
        print(f"  CPU during the mix: {m['cpu_split']}")
        for e in m.get("errors_sample", [])[:2]:
            print(f"      error sample: {e[:300]}")
        if "mix_python" in res:
            mp_ = res["mix_python"]
            print(f"  mix with the Python driver: {mp_['rps']} req/s, p95 {mp_['p95_ms']} ms "
                  f"(driver {mp_['driver_cpu_cores']} cores)")
            for name, r in mp_["per_scenario"].items():
                print(f"     {name:20s} n={r['requests']:6d}  p50 {r['p50_ms']:6.1f}  p95 {r['p95_ms']:6.1f}  "
                      f"p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")
        if not args.skip_paging:
            res["paging"] = paging(base, s["big_code"])
            print(f"  paging: {res['paging']}")
    finally:
        srv.stop()
    res["server"] = {"cmd": " ".join(srv.cmd), "log": srv.log.name}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", action="append", dest="urls",
                    help="a database made by generate.py (repeatable; default bench_search)")
    ap.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    ap.add_argument("--worker-class", default="sync", help="gunicorn worker class: sync or gthread")
    ap.add_argument("--threads", type=int, default=4, help="threads per gthread worker (default 4)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--duration", type=float, default=30, help="seconds for the mix (default 30)")
    ap.add_argument("--scenario-duration", type=float, default=15, help="seconds per scenario (default 15)")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of warm-up mix (default 5)")
    ap.add_argument("--max-requests", type=int, default=10**6, help="request cap per run (python driver)")
    ap.add_argument("--driver", choices=("wrk", "python"), default="wrk" if shutil.which("wrk") else "python")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: it has 2 cores to share)")
    ap.add_argument("--mix-breakdown", action="store_true",
                    help="with wrk, also run the mix with the Python driver for per-scenario latencies")
    ap.add_argument("--only", nargs="*", help="scenarios to run alone (default all)")
    ap.add_argument("--skip-scenarios", action="store_true")
    ap.add_argument("--skip-paging", action="store_true")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--label", default="", help="suffix for the results file name")
    ap.add_argument("--results", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    urls = args.urls or ["postgresql+psycopg://postgres@127.0.0.1:5432/bench_search"]
    out = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("results",)},
        "runs": [run_database(args, u) for u in urls],
    }
    print("\n| database | Observations | mix req/s | p50 ms | p95 ms | p99 ms | errors | page1 ms | page100 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in out["runs"]:
        m, p = r["mix"], r.get("paging", {})
        print(f"| {r['database']} | {r['observations']} | {m['rps']} | {m['p50_ms']} | {m['p95_ms']} | "
              f"{m['p99_ms']} | {m['errors']} | {p.get('page1_median_ms', '-')} | {p.get('page100_median_ms', '-')} |")
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"search-{stamp}{('-' + args.label) if args.label else ''}.json"
    (res_dir / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nresults: {res_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
