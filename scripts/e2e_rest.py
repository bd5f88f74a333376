"""End-to-end timings over REST, as a user sees them: starts the release server on a checkpoint,
sends decompose and edit requests, and prints one JSON line per request with the wall time
(request in → answer out), the server's per-phase seconds (its "layers decomposed" / "layer
edited" / "model loaded" log lines), the GPU memory peak over the request (nvidia-smi, sampled
every 100 ms, above the level before the server started) and the server's peak RSS.

Runs the same on the CPU with the tiny checkpoints (a rehearsal of the GPU call) and on the GPU
machine with full-size ones (scripts/gpu_bench.sh, stage e2e).

usage: e2e_rest.py SERVER_BIN --layered DIR --edit DIR [--offload on|off] [--cases LIST]
  [--steps 50] [--cfg 4] [--layers 4] [--port 7861] [--log FILE] [--server-args "ARGS"]
LIST: comma-separated of decompose640, decompose1024, edit (default decompose640,decompose640,edit,edit:
the first of each kind loads its model, the second is warm), and burstN: N 640² decompositions
started at once as jobs (POST /jobs), timed from the first request to the last result (the
throughput of several workers, issue 21; the queue is made deep enough).
--server-args: more server flags, e.g. "--devices 0,1 --parallel latency".
"""
import argparse
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from PIL import Image, ImageDraw

ANSI = re.compile(r"\x1b\[[0-9;]*m")
FIELD = re.compile(r"(\w+)=([-0-9.e]+)\b")
# The per-phase peaks of `vram_peak_gib=PhaseVram { encode_prompt: Some(3.1), … }`.
VRAM = re.compile(r"(\w+): Some\(([-0-9.e]+)\)")


def test_photo(size=1024):
    """A scene with a backdrop and a few overlapping objects (what decomposition separates)."""
    img = Image.new("RGB", (size, size))
    px = img.load()
    for y in range(size):
        for x in range(size):
            px[x, y] = (40 + 150 * y // size, 90 + 100 * x // size, 200 - 120 * y // size)
    d = ImageDraw.Draw(img)
    s = size / 640
    d.ellipse([int(80 * s), int(300 * s), int(330 * s), int(560 * s)], fill=(220, 60, 40))
    d.rectangle([int(300 * s), int(120 * s), int(560 * s), int(420 * s)], fill=(250, 210, 60))
    d.polygon([(int(420 * s), int(620 * s)), (int(620 * s), int(380 * s)), (int(600 * s), int(630 * s))], fill=(30, 160, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def opaque_pixels(data_url):
    img = Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGBA")
    return sum(1 for a in img.getchannel("A").getdata() if a > 0)


class Sampler:
    """GPU memory in use (nvidia-smi) and the server's RSS, every 100 ms, with timestamps."""

    def __init__(self):
        self.samples = []  # (time, gpu MiB or None, rss MiB or None)
        self.pid = None
        self.stop = threading.Event()
        self.smi = None
        self.gpu_now = None
        if shutil.which("nvidia-smi"):
            self.smi = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read_smi, daemon=True).start()
            time.sleep(0.5)
        self.gpu_base = self.gpu_now
        threading.Thread(target=self._loop, daemon=True).start()

    def _read_smi(self):
        for line in self.smi.stdout:
            try:
                self.gpu_now = float(line.split(",")[0])
            except ValueError:
                pass

    def _rss(self):
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def _loop(self):
        while not self.stop.is_set():
            self.samples.append((time.time(), self.gpu_now, self._rss()))
            time.sleep(0.1)

    def peaks(self, t0, t1):
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        gpu = [g for _, g, _ in window if g is not None]
        rss = [r for _, _, r in window if r is not None]
        base = self.gpu_base or 0.0
        return {"peak_vram_gib": round((max(gpu) - base) / 1024, 2) if gpu else None,
                "peak_rss_gib": round(max(rss) / 1024, 2) if rss else None}

    def close(self):
        self.stop.set()
        if self.smi:
            self.smi.terminate()


def request(url, body=None, timeout=3600):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.headers.get("content-type", ""), r.read()


def log_events(path, offset):
    """The server log's phase lines written since `offset`: [(message, {field: value})]."""
    with open(path, errors="replace") as f:
        f.seek(offset)
        text = f.read()
        end = f.tell()
    events = []
    for line in ANSI.sub("", text).splitlines():
        for message in ("layers decomposed", "layer edited", "decompose model loaded", "edit model loaded"):
            if message in line:
                rest = line.split(message, 1)[1]
                fields = {k: float(v) for k, v in FIELD.findall(rest)}
                if "vram_peak_gib=" in rest:
                    peaks = VRAM.findall(rest.split("vram_peak_gib=", 1)[1])
                    fields.update({f"vram_{k}_gib": float(v) for k, v in peaks})
                events.append((message, fields))
    return events, end


def decompose_body(photo, resolution, args):
    return {"image": photo, "prompt": "a red ball, a yellow box and a green sail in front of a gradient sky",
            "layer_num": args.layers, "resolution": resolution, "steps": args.steps,
            "cfg_scale": args.cfg, "seed": 7}


def burst(base, photo, n, args):
    """Starts `n` 640² decompositions at once and waits for all: the wall time from the first
    request to the last result, and each job's time from its start to its result."""
    body = decompose_body(photo, 640, args)
    t0 = time.time()
    ids = [json.loads(request(base + "/jobs", body)[2])["id"] for _ in range(n)]
    done, states = {}, {}
    while len(done) < n:
        time.sleep(0.5)
        for job in ids:
            if job in done:
                continue
            st = json.loads(request(f"{base}/jobs/{job}")[2])
            if st["state"] not in ("queued", "running"):
                done[job] = time.time() - t0
                states[st["state"]] = states.get(st["state"], 0) + 1
    wall = time.time() - t0
    return {"run": "e2e_burst", "tag": args.tag, "jobs": n, "server_args": args.server_args,
            "wall_s": round(wall, 2), "jobs_per_min": round(60 * n / wall, 3), "states": states,
            "first_done_s": round(min(done.values()), 2), "last_done_s": round(max(done.values()), 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("--layered", required=True)
    p.add_argument("--edit", required=True)
    p.add_argument("--offload", choices=["on", "off"], default="off")
    p.add_argument("--cases", default="decompose640,decompose640,edit,edit")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--log", default=None)
    p.add_argument("--tag", default="")
    p.add_argument("--server-args", default="")
    args = p.parse_args()
    bursts = [int(c[len("burst"):]) for c in args.cases.split(",") if c.startswith("burst")]

    sampler = Sampler()
    data_dir = tempfile.mkdtemp(prefix="e2e-data-")
    log_path = args.log or os.path.join(data_dir, "server.log")
    log = open(log_path, "w")
    started = time.time()
    server = subprocess.Popen(
        [args.server, "--qwen-image-model-path", args.layered, "--qwen-image-edit-model-path", args.edit,
         f"--qwen-image-cpu-offload={'true' if args.offload == 'on' else 'false'}", "--port", str(args.port),
         "--data-dir", data_dir, "--queue-depth", str(max(bursts + [1])), "--request-timeout-secs", "3600"]
        + args.server_args.split(),
        stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, NO_COLOR="1", RUST_LOG="info"))
    sampler.pid = server.pid
    base = f"http://127.0.0.1:{args.port}/api/qwen-image"
    try:
        while True:
            if server.poll() is not None:
                sys.exit(f"server exited ({server.returncode}); log: {open(log_path).read()[-3000:]}")
            try:
                request(base + "/status", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        print(json.dumps({"run": "e2e_server_start", "tag": args.tag, "offload": args.offload,
                          "server_args": args.server_args,
                          "workers": json.loads(request(base + "/status")[2]).get("workers", []),
                          "seconds": round(time.time() - started, 2)}), flush=True)
        photo = test_photo()
        offset = 0
        _, offset = log_events(log_path, offset)
        layer = None
        seen = set()
        for case in args.cases.split(","):
            if case.startswith("burst"):
                print(json.dumps(burst(base, photo, int(case[len("burst"):]), args)), flush=True)
                _, offset = log_events(log_path, offset)
                continue
            if case.startswith("decompose"):
                resolution = int(case[len("decompose"):])
                body = decompose_body(photo, resolution, args)
                path = "/decompose"
            elif case == "edit":
                # The most opaque layer of the last decompose (random weights can leave a layer
                # empty, which an edit that keeps alpha refuses), else the photo itself.
                layer = layer or photo
                body = {"layer_image": layer, "instruction": "make it blue", "steps": args.steps,
                        "cfg_scale": args.cfg, "seed": 7}
                path = "/edit-layer"
            else:
                sys.exit(f"unknown case {case}")
            t0 = time.time()
            try:
                status, ctype, raw = request(base + path, body)
            except urllib.error.HTTPError as e:
                status, ctype, raw = e.code, "", e.read()
            t1 = time.time()
            time.sleep(0.3)  # the log line of the run's end
            events, offset = log_events(log_path, offset)
            row = {"run": "e2e", "tag": args.tag, "case": case, "offload": args.offload,
                   "first_of_kind": case not in seen, "status": status, "wall_s": round(t1 - t0, 3),
                   "request_mib": round(len(json.dumps(body)) / 2**20, 2), "answer_mib": round(len(raw) / 2**20, 2)}
            seen.add(case)
            row.update(sampler.peaks(t0, t1))
            for message, fields in events:
                row[message.replace(" ", "_")] = fields
            if status != 200:
                row["error"] = raw[:500].decode(errors="replace")
            elif case.startswith("decompose"):
                answer = json.loads(raw)
                row["generation_time"] = answer["generation_time"]
                row["size"] = [answer["width"], answer["height"]]
                layer = max((l["image"] for l in answer["layers"][1:]), key=opaque_pixels)
            else:
                row["edited_png_ok"] = ctype.startswith("image/png") and raw[:8] == b"\x89PNG\r\n\x1a\n"
            print(json.dumps(row), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        sampler.close()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
