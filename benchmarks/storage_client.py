"""CPU cost of the S3 read path: s3fs (through fsspec, as raymerge reads) against obstore.

A local endpoint fast enough not to be the limit: nginx serving a file tree path-style
(``GET /bucket/key`` with ``Range``), which is all a ranged GetObject is (falls back to a
threaded Python server, much slower, when nginx is not installed). Each client reads the same
1 GiB object in ``--range-mib`` ranges, ``--concurrency`` at a time, ``--repeats`` times; reported:
wall time, this process's CPU seconds (user + system, all threads) and GB per CPU-second.

    python benchmarks/storage_client.py [--size-gib 1] [--range-mib 16] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BUCKET, KEY = "bench", "blob"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nginx(root: Path, port: int) -> subprocess.Popen | None:
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if nginx is None:
        return None
    conf = root.parent / "nginx.conf"
    conf.write_text(f"""
worker_processes 2; daemon off; error_log stderr error; pid {root.parent}/nginx.pid;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
  client_body_temp_path {root.parent}/tmp; proxy_temp_path {root.parent}/tmp;
  fastcgi_temp_path {root.parent}/tmp; uwsgi_temp_path {root.parent}/tmp;
  scgi_temp_path {root.parent}/tmp;
  server {{ listen 127.0.0.1:{port}; root {root}; location / {{ }} }} }}
""")
    (root.parent / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(root.parent)])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


def start_python_server(root: Path, port: int) -> ThreadingHTTPServer:
    class Ranged(SimpleHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            path = root / self.path.lstrip("/").split("?")[0]
            rng = self.headers.get("Range", "")
            data = path.read_bytes()
            if rng.startswith("bytes="):
                a, b = rng[6:].split("-")
                data = data[int(a) : int(b) + 1]
                self.send_response(206)
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", port), partial(Ranged, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def ranges(size: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(s + step, size)) for s in range(0, size, step)]


def read_s3fs(endpoint: str, size: int, step: int, concurrency: int) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="k", secret="s", skip_instance_cache=True)
    rs = ranges(size, step)
    got = fs.cat_ranges([f"{BUCKET}/{KEY}"] * len(rs), [a for a, _ in rs], [b for _, b in rs],
                        batch_size=concurrency)  # fmt: skip
    return sum(len(g) for g in got)


def read_obstore(endpoint: str, size: int, step: int, concurrency: int) -> int:
    from obstore import get_range_async
    from obstore.store import S3Store

    store = S3Store(BUCKET, endpoint=endpoint, access_key_id="k", secret_access_key="s",
                    region="us-east-1", client_options={"allow_http": True})  # fmt: skip

    async def go() -> int:
        gate = asyncio.Semaphore(concurrency)

        async def one(a: int, b: int) -> int:
            async with gate:
                return len(await get_range_async(store, KEY, start=a, end=b))

        return sum(await asyncio.gather(*(one(a, b) for a, b in ranges(size, step))))

    return asyncio.run(go())


def measure(fn, repeats: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = cpu(), time.perf_counter()
        n = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(cpu() - c0)
    w, c = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
    return {
        "bytes": n,
        "wall_s": w,
        "cpu_s": c,
        "gb_per_cpu_s": n / 1e9 / c,
        "gb_per_s": n / 1e9 / w,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--range-mib", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    size, step = int(args.size_gib * (1 << 30)), args.range_mib << 20
    tmp = Path(tempfile.mkdtemp(prefix="rm-s3cpu-"))
    tmp.chmod(0o755)  # nginx's workers run as another user
    root = tmp / "root"
    (root / BUCKET).mkdir(parents=True)
    with open(root / BUCKET / KEY, "wb") as f:
        for _ in range(size >> 24):
            f.write(os.urandom(1 << 24))
    port = free_port()
    server = start_nginx(root, port)
    kind = "nginx"
    if server is None:
        server, kind = start_python_server(root, port), "python http.server"
    endpoint = f"http://127.0.0.1:{port}"
    try:
        rows = {}
        for name, fn in (("s3fs", read_s3fs), ("obstore", read_obstore)):
            fn(endpoint, step, step, 1)  # warm-up: imports, connections, page cache
            rows[name] = measure(partial(fn, endpoint, size, step, args.concurrency), args.repeats)
    finally:
        if isinstance(server, subprocess.Popen):
            server.terminate()
        else:
            server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"endpoint: {kind}; {args.size_gib:g} GiB in {args.range_mib} MiB ranges, "
          f"{args.concurrency} at a time, median of {args.repeats}")  # fmt: skip
    print(f"{'client':<8} {'wall s':>7} {'CPU s':>7} {'GB/CPU-s':>9} {'GB/s':>6}")
    for name, r in rows.items():
        print(f"{name:<8} {r['wall_s']:>7.2f} {r['cpu_s']:>7.2f} {r['gb_per_cpu_s']:>9.2f} "
              f"{r['gb_per_s']:>6.2f}")  # fmt: skip
    ratio = rows["obstore"]["gb_per_cpu_s"] / rows["s3fs"]["gb_per_cpu_s"]
    print(f"obstore reads {ratio:.2f}x the bytes per CPU-second of s3fs")
    print(json.dumps({"endpoint": kind, "rows": rows, "ratio": ratio}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
