#!/usr/bin/env python3
"""Bounded load test of `hipserve serve` in the style of `vllm bench serve` (stdlib only, loopback only).

Sends a fixed number of streaming /v1/completions requests with at most --concurrency in flight, each
generating exactly --max-tokens tokens (ignore_eos), and reports requests/s, tokens/s, latency percentiles,
time to first token (TTFT), time per output token (TPOT), inter-token latency (ITL) and failures. It also reads
/metrics before and after to report the server's aggregate decode throughput (decode rows / time in batched
decode forward passes), which isolates the batching gain from prefill and HTTP overhead.

    ./build/hipserve serve -np 4 &                       # or: --hipserve build/hipserve to start one here
    python3 tools/load_test.py --url http://127.0.0.1:8080 --requests 16 --concurrency 4 --max-tokens 128
    python3 tools/load_test.py --hipserve build/hipserve --sweep 1,4 --repeat 3 --json out.json
"""
import argparse
import http.client
import json
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

PROMPTS = [
    "Write a short story about a robot learning to paint.",
    "Explain how a bicycle works to a child.",
    "Describe the water cycle in detail.",
    "List some ideas for a weekend trip in the mountains.",
    "What are the benefits of reading books every day?",
    "Tell me about the history of the printing press.",
    "How do airplanes stay in the air?",
    "Write a letter to a friend about your new garden.",
]


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def get_metrics(host, port):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/metrics")
    body = c.getresponse().read().decode()
    c.close()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def one_request(host, port, prompt, max_tokens, result):
    """Streams one completion; fills result with t_start, ttft, token arrival times, error."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}})
    result["t_start"] = time.perf_counter()
    arrivals = []
    try:
        c = http.client.HTTPConnection(host, port, timeout=600)
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
        buf, done, usage = b"", False, None
        while not done:
            chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
            if not chunk:
                break
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                data = event[len(b"data: "):]
                if data == b"[DONE]":
                    done = True
                    break
                j = json.loads(data)
                if "error" in j:
                    raise RuntimeError(j["error"]["message"])
                if j.get("usage"):
                    usage = j["usage"]
                if j["choices"] and j["choices"][0].get("text"):
                    arrivals.append(time.perf_counter())
        c.close()
        if not done:
            raise RuntimeError("stream ended without [DONE]")
        result["completion_tokens"] = usage["completion_tokens"] if usage else len(arrivals)
        result["prompt_tokens"] = usage["prompt_tokens"] if usage else 0
    except Exception as e:  # counted as a failed request
        result["error"] = str(e)
    result["t_end"] = time.perf_counter()
    result["arrivals"] = arrivals


def run_benchmark(host, port, n_requests, concurrency, max_tokens):
    m0 = get_metrics(host, port)
    results = [dict() for _ in range(n_requests)]
    sem = threading.Semaphore(concurrency)
    threads = []
    t0 = time.perf_counter()
    for i in range(n_requests):
        sem.acquire()

        def work(i=i):
            try:
                one_request(host, port, PROMPTS[i % len(PROMPTS)], max_tokens, results[i])
            finally:
                sem.release()

        th = threading.Thread(target=work)
        th.start()
        threads.append(th)
    for th in threads:
        th.join()
    duration = time.perf_counter() - t0
    m1 = get_metrics(host, port)

    ok = [r for r in results if "error" not in r]
    failed = [r for r in results if "error" in r]
    out_tokens = sum(r["completion_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    ttft = [(r["arrivals"][0] - r["t_start"]) * 1000 for r in ok if r["arrivals"]]
    e2e = [(r["t_end"] - r["t_start"]) * 1000 for r in ok]
    tpot = [(r["arrivals"][-1] - r["arrivals"][0]) * 1000 / (len(r["arrivals"]) - 1) for r in ok
            if len(r["arrivals"]) > 1]
    itl = [(b - a) * 1000 for r in ok for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    d_rows = m1["hipserve_generation_tokens_total"] - m0["hipserve_generation_tokens_total"]
    d_secs = m1["hipserve_generation_seconds_total"] - m0["hipserve_generation_seconds_total"]
    d_steps = m1["hipserve_decode_steps_total"] - m0["hipserve_decode_steps_total"]
    return {
        "requests": n_requests, "concurrency": concurrency, "max_tokens": max_tokens,
        "successful": len(ok), "failed": len(failed), "errors": [r["error"] for r in failed][:5],
        "duration_s": duration,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "ttft_ms": {"mean": statistics.fmean(ttft) if ttft else float("nan"), "p50": percentile(ttft, 50),
                    "p99": percentile(ttft, 99)},
        "tpot_ms": {"mean": statistics.fmean(tpot) if tpot else float("nan"), "p50": percentile(tpot, 50),
                    "p99": percentile(tpot, 99)},
        "itl_ms": {"mean": statistics.fmean(itl) if itl else float("nan"), "p50": percentile(itl, 50),
                   "p99": percentile(itl, 99)},
        "e2e_latency_ms": {"mean": statistics.fmean(e2e) if e2e else float("nan"), "p50": percentile(e2e, 50),
                           "p99": percentile(e2e, 99)},
        # Server side: tokens per second of batched decode forward passes only (prefill excluded).
        "server_decode_tokens_per_s": d_rows / d_secs if d_secs > 0 else float("nan"),
        "server_mean_decode_batch": d_rows / d_steps if d_steps > 0 else float("nan"),
    }


def print_report(r):
    print(f"============ Serving Benchmark Result (concurrency {r['concurrency']}) ============")
    print(f"{'Successful requests:':<40}{r['successful']:>10}")
    print(f"{'Failed requests:':<40}{r['failed']:>10}")
    print(f"{'Benchmark duration (s):':<40}{r['duration_s']:>10.2f}")
    print(f"{'Request throughput (req/s):':<40}{r['request_throughput']:>10.2f}")
    print(f"{'Output token throughput (tok/s):':<40}{r['output_token_throughput']:>10.2f}")
    print(f"{'Total token throughput (tok/s):':<40}{r['total_token_throughput']:>10.2f}")
    for key, name in [("ttft_ms", "Time to First Token"), ("tpot_ms", "Time per Output Token (excl. 1st)"),
                      ("itl_ms", "Inter-token Latency"), ("e2e_latency_ms", "End-to-end Latency")]:
        print(f"{'-' * 20}{name}{'-' * 20}")
        for stat in ("mean", "p50", "p99"):
            print(f"{stat.upper() + ' (ms):':<40}{r[key][stat]:>10.2f}")
    print(f"{'Server decode throughput (tok/s):':<40}{r['server_decode_tokens_per_s']:>10.2f}")
    print(f"{'Server mean decode batch:':<40}{r['server_mean_decode_batch']:>10.2f}")
    if r["errors"]:
        print("errors:", r["errors"])
    print("=" * 70)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (loopback only)")
    ap.add_argument("--hipserve", help="start this hipserve binary (serve --port 0) for the run instead of --url")
    ap.add_argument("--server-args", default="-np 4 -c 2048", help="extra `serve` flags with --hipserve")
    ap.add_argument("--requests", type=int, default=16, help="requests per benchmark (fixed, bounded)")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at most")
    ap.add_argument("--sweep", help="comma-separated concurrencies to run in turn, e.g. 1,4 (overrides)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each benchmark (spread on noisy machines)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", help="write all results to this file")
    args = ap.parse_args()
    if args.requests < 1 or args.requests > 10000:
        sys.exit("--requests must be in [1, 10000]")

    proc = None
    if args.hipserve:
        log = tempfile.NamedTemporaryFile(prefix="hipserve-load-", suffix=".log", delete=False)
        proc = subprocess.Popen([args.hipserve, "serve", "--port", "0", *args.server_args.split()],
                                stdout=log, stderr=subprocess.STDOUT)
        port, deadline = None, time.time() + 60
        while port is None and time.time() < deadline and proc.poll() is None:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", open(log.name).read())
            port = int(m.group(1)) if m else None
            time.sleep(0.05)
        if port is None:
            sys.exit("server did not start; log: " + log.name)
        host = "127.0.0.1"
    else:
        u = urllib.parse.urlparse(args.url)
        host, port = u.hostname, u.port or 80
        if host not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("refusing a non-loopback host: this tool only loads local servers")
    try:
        deadline = time.time() + 120
        while True:  # wait for /health
            try:
                c = http.client.HTTPConnection(host, port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("server not ready")
            time.sleep(0.1)
        concurrencies = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.concurrency]
        # Warm-up: one short request (first-touch of the KV pages, thread start-up).
        run_benchmark(host, port, 1, 1, 8)
        all_results = []
        for rep in range(args.repeat):
            for conc in concurrencies:
                r = run_benchmark(host, port, args.requests, conc, args.max_tokens)
                r["repeat"] = rep
                print_report(r)
                all_results.append(r)
        if len(concurrencies) > 1:
            base = concurrencies[0]
            print("Aggregate throughput relative to concurrency", base)
            for conc in concurrencies[1:]:
                for key in ("server_decode_tokens_per_s", "output_token_throughput"):
                    ratios = []
                    for rep in range(args.repeat):
                        a = [r for r in all_results if r["repeat"] == rep and r["concurrency"] == base][0]
                        b = [r for r in all_results if r["repeat"] == rep and r["concurrency"] == conc][0]
                        ratios.append(b[key] / a[key])
                    print(f"  {key} x{conc}/x{base}: " + ", ".join(f"{x:.2f}" for x in ratios) +
                          f"  (mean {statistics.fmean(ratios):.2f}, min {min(ratios):.2f}, max {max(ratios):.2f})")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(all_results, f, indent=1)
        failed = sum(r["failed"] for r in all_results)
        return 1 if failed else 0
    finally:
        if proc:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    sys.exit(main())
