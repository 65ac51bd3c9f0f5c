"""Reliability probes: the HTTP service attacked as issue 13 did it, on a real loopback server; each probe holds or not.

A tiny export (rgb, 4x16x16, 10 timesteps; trained and exported once under --work, ~5 s, or --export DIR) is
served by a real uvicorn server in this process (`serving.server.running_server`), with the default limits.
The probes:

- wide / tall images: PNGs of 1000000x16, 16000000x1 and 4000000x4 pixels (a few KB each, within the pixel
  limit) must be answered 4xx within seconds, the server's memory growing by less than --max-rss-mb;
- disconnecting clients: with every denoising step slowed to --step-delay s, three clients send a 10-step request
  and hang up after 1 s each; the next request must be answered within 3 steps of the last hang-up, and the
  hung-up generations must stop between steps;
- null fields: `steps` and `guidance` sent as `null` or empty (the schema declares them nullable) are the defaults;
- the fuzzer: when `schemathesis` is installed ([dev] extra), `st run` on /openapi.json with --examples cases per
  operation and every response check; held when it reports no failure (no 500, no status, content type, header
  or body outside the schema, negative data refused). A second run reports schema-valid requests refused (ST202)
  without counting them: an upload declared as bytes must still be an image, and the steps/guidance/prompt
  upper bounds depend on the settings and the model, which the schema does not state.

Prints a table and writes the JSON summary (probes tried / held, each probe's numbers):

    python benchmarks/probe_service.py [--json benchmarks/results/probe_service.json] [--examples 25]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_json import write_results  # noqa: E402
from test_serving_app import export_tiny_model, png  # noqa: E402
from test_serving_limits import send_generate_request, slow_down  # noqa: E402

from serving.app import create_app  # noqa: E402
from serving.server import running_server  # noqa: E402
from serving.settings import ServeSettings  # noqa: E402

BAD_SHAPES = ((1_000_000, 16), (16_000_000, 1), (4_000_000, 4))  # width x height, as the issue sent them


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


class PeakRss:
    """The process's peak RSS while the block runs, sampled every 5 ms (the server runs in this process)."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.base


def encoded_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 200)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def generate(url: str, image: bytes, timeout: float = 300.0, **fields: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/generate", files={"image": ("probe.png", image, "image/png")},
                      data={"prompt": "a circle", **fields}, timeout=timeout)


def probe_image_shapes(url: str, max_rss_mb: float) -> list[dict[str, Any]]:
    results = []
    for width, height in BAD_SHAPES:
        image = encoded_png(width, height)
        with PeakRss() as rss:
            started = time.perf_counter()
            r = generate(url, image, steps="1")
            seconds = time.perf_counter() - started
        held = 400 <= r.status_code < 500 and seconds < 10 and rss.growth < max_rss_mb
        results.append({"probe": f"image {width}x{height} ({len(image)} bytes)", "held": held,
                        "status": r.status_code, "seconds": round(seconds, 3), "rss_growth_mb": round(rss.growth, 1),
                        "detail": r.json().get("detail", "")[:160] if r.headers.get("content-type") ==
                        "application/json" else r.headers.get("content-type")})
    return results


def probe_disconnects(app: Any, url: str, step_delay: float, clients: int = 3, hang_up_after: float = 1.0
                      ) -> dict[str, Any]:
    """`clients` 10-step requests, each hung up `hang_up_after` s after it is sent, then one 1-step request."""
    slow = slow_down(app.state.manager.current.pipeline, step_delay)
    admission = app.state.admission
    try:
        socks = []
        for seed in range(clients):  # one after another: each hangs up while it runs or waits for the slot
            socks.append(send_generate_request(url, steps=10, seed=seed))
        time.sleep(hang_up_after)
        for sock in socks:
            sock.close()
        hung_up = time.perf_counter()
        deadline = hung_up + 10 * clients * step_delay + 30
        while admission.admitted and time.perf_counter() < deadline:
            time.sleep(0.005)
        freed = time.perf_counter() - hung_up
        steps_run = slow.calls
        r = generate(url, png(), steps="1")
        answered = time.perf_counter() - hung_up
    finally:
        app.state.manager.current.pipeline.sessions["denoiser"] = slow.session
    held = r.status_code == 200 and answered < 4 * step_delay and steps_run < clients * 10
    return {"probe": f"{clients} clients hang up a 10-step request after {hang_up_after:g} s", "held": held,
            "status": r.status_code, "seconds": round(answered, 3), "slots_freed_after_s": round(freed, 3),
            "steps_run": steps_run, "steps_requested": clients * 10, "step_delay_s": step_delay,
            "detail": f"next request answered {answered:.2f} s after the hang-up; {steps_run} of {clients * 10} "
                      f"requested steps ran"}


def probe_null_fields(url: str) -> list[dict[str, Any]]:
    results = []
    for value in ("null", ""):
        r = generate(url, png(), steps=value, guidance=value)
        held = r.status_code == 200 and "x-steps" in r.headers
        results.append({"probe": f"steps and guidance sent as {value!r}", "held": held, "status": r.status_code,
                        "detail": f"x-steps {r.headers.get('x-steps')}, x-guidance {r.headers.get('x-guidance')}"
                        if held else r.text[:160]})
    return results


UNRELATED_CHECKS = "ignored_auth,use_after_free,ensure_resource_availability,object_level_authorization"  # no auth, no resources


def probe_fuzzer(url: str, examples: int, work: Path) -> list[dict[str, Any]]:
    """Two bounded `st run`s (schemathesis' CLI) against this server only: every response check (held when none
    fails), then positive-data acceptance (ST202) alone, reported but not counted: the schema declares the
    image as any bytes and the upper bounds of steps/guidance/prompt come from the settings and the model,
    so schema-valid requests the service must refuse exist (415 not an image, 422 out of range)."""
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        return [{"probe": "schemathesis", "held": None, "detail": "not installed (pip install 'dvdm[dev]')"}]
    runs = (("responses", ["--checks", "all", "--exclude-checks", f"positive_data_acceptance,{UNRELATED_CHECKS}"],
             "responses as documented, no 500"),
            ("acceptance", ["--checks", "positive_data_acceptance"], "schema-valid requests accepted"))
    results = []
    for name, checks, what in runs:
        report = work / f"schemathesis-{name}.json"
        cmd = [st, "run", f"{url}/openapi.json", "--max-examples", str(examples), *checks, "--continue-on-failure",
               "--workers", "1", "--seed", "0", "--request-timeout", "120", "--no-color", "--generation-database",
               "none", "--report", "json", "--report-json-path", str(report)]
        started = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=work)
        seconds = time.perf_counter() - started
        summary = json.loads(report.read_text()) if report.is_file() else {}
        failures = summarise_fuzz_report(summary)
        statuses = sorted(set(re.findall(r"^\[(\d{3})\] ", run.stdout, re.MULTILINE)))
        cases = summary.get("test_cases", {}).get("generated")
        outcome = ("; ".join(failures) + (f" (answered {', '.join(statuses)})" if statuses else "") if failures
                   else f"{cases} cases, no failure" if run.returncode == 0 else run.stdout.strip()[-300:])
        results.append({"probe": f"schemathesis: {what}", "held": run.returncode == 0 if name == "responses" else None,
                        "status": run.returncode, "seconds": round(seconds, 1), "cases": cases,
                        "failures": failures, "failing_statuses": statuses, "detail": f"{outcome}"[:400]})
    return results


def summarise_fuzz_report(data: dict[str, Any]) -> list[str]:
    """'<code> <operation>: <title>' for each distinct failure in schemathesis' JSON report."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "title" in node and ("code" in node or "check" in node):
                where = ", ".join(node.get("operations", [])) or node.get("operation", "")
                found.add(f"{node.get('code', node.get('check'))} {where}: {node['title']}"[:200])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return sorted(found)


def table(results: list[dict[str, Any]]) -> str:
    mark: Callable[[Any], str] = lambda held: {True: "held", False: "FAILED", None: "info"}[held]
    width = max(len(r["probe"]) for r in results)
    lines = [f"{'probe':<{width}}  result   status  detail", "-" * (width + 60)]
    lines += [f"{r['probe']:<{width}}  {mark(r['held']):<7}  {str(r.get('status', '')):<6}  {r.get('detail', '')}"
              for r in results]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--export", type=Path, help="an export folder to serve (default: a tiny one built under --work)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "dvdm-probe-service")
    ap.add_argument("--examples", type=int, default=25, help="schemathesis cases per operation")
    ap.add_argument("--step-delay", type=float, default=0.3, help="seconds added to each denoising step")
    ap.add_argument("--max-rss-mb", type=float, default=256.0, help="memory growth a refused image may cause")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "probe_service.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    export = args.export or export_tiny_model(args.work / "tiny")
    settings = ServeSettings(provider="cpu", threads=1, poll_interval=0, max_steps=10)
    app = create_app(export, settings=settings)
    results: list[dict[str, Any]] = []
    with running_server(app) as url:
        results += probe_image_shapes(url, args.max_rss_mb)
        results.append(probe_disconnects(app, url, args.step_delay))
        results += probe_null_fields(url)
        results += probe_fuzzer(url, args.examples, args.work)
    print(table(results))
    tried = [r for r in results if r["held"] is not None]
    held = sum(bool(r["held"]) for r in tried)
    print(f"\n{held} of {len(tried)} probes held")
    write_results(args.json, "probe_service", {"tried": len(tried), "held": held, "probes": results,
                                               "settings": settings.limits(), "export": str(export)},
                  schemathesis=_version("schemathesis"), fastapi=_version("fastapi"))
    return 0 if held == len(tried) else 1


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # not installed
        return None


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
