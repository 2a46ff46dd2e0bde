"""The server past its capacity: does admission keep admitted requests fast?

    python benchmarks/overload.py [--update BENCHMARKS.md] [--seconds 10] [--rounds 2]

For the demo CNN artifact, the wide MLP of benchmarks/serve.py and the MiniLM artifact
(`src/slimserve/examples/minilm.yaml`, built into runs/bench/minilm when absent; its V2
route and its OpenAI embeddings route), each served by `slimserve serve` in its own
process with the default admission (--max-queue-ms: the measured model time queued ahead
of a request, at most 8 single-row runs) and with the count limit alone
(--max-queue-ms 0: two batches, 64 requests), in interleaved rounds:

1. unloaded p99: `slimserve loadtest` closed loop at concurrency 1;
2. capacity: closed loop at concurrency 32 (requests/s);
3. overload: open loop (`loadtest --rate`, requests sent on schedule whatever the
   answers) at 2x that capacity for --seconds: what was admitted (200) and how fast
   (p99 from the scheduled send time), what was refused (503 with Retry-After);
4. then a soak of 10,000 requests at concurrency 16 on the same server: it recovered.

The load generator runs in its own process, on the same 2 cores as the server.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _record import update

import slimserve as ss
from serve import ARTIFACT, BIN, WIDE_MLP, free_port, median, wait_ready, wide_mlp
from slimserve.core.cpu import cpu_features
from slimserve.measure.report import markdown_table

EXPLAINED = (
    "Where the model's run is most of a request's cost (the wide MLP), the default queue "
    "of two batches keeps admitted requests near the unloaded latency while the excess "
    "gets 503s; a long queue (256) admits a little more and makes every admitted request "
    "wait it out. Where HTTP handling is most of the cost (the demo CNN: ~0.1 ms of "
    "event-loop CPU per request against ~0.01 ms of model per row), refusing a request "
    "costs about as much as serving it, so at twice the capacity the event loop itself "
    "is the queue (requests wait in socket buffers, not in the batcher) and no queue "
    "limit can bound their latency; the 503s are answered from the request head to make "
    "them as cheap as possible. The soak after each overload shows the server recovered."
)
ADMISSIONS = ("time", "count")  # the default, and --max-queue-ms 0 (the count limit alone)
MINILM = Path("runs/bench/minilm")


def start(served: Path, name: str, admission: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [str(BIN / "slimserve"), "serve", str(served), "--port", str(port), "--http-only"]
    if admission == "count":
        command += ["--max-queue-ms", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(process, url, name)
    return process, url


def loadtest(url: str, name: str, *args: str) -> dict[str, object]:
    command = [str(BIN / "slimserve"), "loadtest", url, "-m", name, "--json", *args]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 1):
        raise RuntimeError(out.stderr)
    summary: dict[str, object] = json.loads(out.stdout)
    return summary


def measure(url: str, name: str, seconds: float, route: str) -> dict[str, float]:
    on = ("--route", route)
    unloaded = loadtest(url, name, *on, "-c", "1", "-n", "1000000", "--duration", "3")
    capacity = loadtest(url, name, *on, "-c", "32", "-n", "1000000", "--duration", "4")
    rate = 2 * float(capacity["requests_per_s"])  # type: ignore[arg-type]
    over = loadtest(
        url, name, *on, "--rate", f"{rate:.0f}", "-n", "10000000", "--duration", str(seconds)
    )
    codes: dict[str, int] = over["codes"]  # type: ignore[assignment]
    soak = loadtest(url, name, *on, "-c", "16", "-n", "2000", "--duration", "60")
    row = {
        "unloaded_p99": float(unloaded["p99_ms"]),  # type: ignore[arg-type]
        "capacity": float(capacity["requests_per_s"]),  # type: ignore[arg-type]
        "offered": rate,
        "ok_per_s": float(over["ok_per_s"]),  # type: ignore[arg-type]
        "ok_p99": float(over["ok_p99_ms"]),  # type: ignore[arg-type]
        "ok_sent_p99": float(over["ok_sent_p99_ms"] or 0.0),  # type: ignore[arg-type]
        "refused": float(codes.get("503", 0)),
        "other_errors": float(sum(v for k, v in codes.items() if k not in ("200", "503"))),
        "sent": float(over["requests"]),  # type: ignore[arg-type]
        "soak_requests": float(soak["requests"]),  # type: ignore[arg-type]
        "soak_errors": float(soak["errors"]),  # type: ignore[arg-type]
    }
    print(name, json.dumps(row))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="Overload duration.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds (median).")
    parser.add_argument("--mlp-hidden", type=int, default=3072)
    parser.add_argument("--update", type=Path)
    args = parser.parse_args()
    if not (ARTIFACT / "manifest.json").is_file():
        subprocess.run([str(BIN / "slimserve"), "demo", "--repeats", "20"], check=True)
    wide_mlp(args.mlp_hidden)
    if not (MINILM / "manifest.json").is_file():
        recipe = ss.load_recipe(Path(ss.__file__).parent / "examples" / "minilm.yaml")
        ss.run_recipe(recipe, MINILM.parent)
    minilm = ss.load_artifact(MINILM).manifest.name
    models = {  # label: (artifact, model name, route)
        "demo CNN": (ARTIFACT, ss.load_artifact(ARTIFACT).manifest.name, "v2"),
        "wide MLP": (WIDE_MLP, WIDE_MLP.stem, "v2"),
        "MiniLM, V2": (MINILM, minilm, "v2"),
        "MiniLM, OpenAI route": (MINILM, minilm, "openai"),
    }
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for label, (served, name, route) in models.items():
            for admission in ADMISSIONS:
                process, url = start(served, name, admission)
                try:
                    results.setdefault((label, admission), []).append(
                        measure(url, name, args.seconds, route)
                    )
                finally:
                    process.terminate()
                    process.wait(timeout=60)
    rows = []
    for (label, admission), runs in results.items():

        def m(field: str, runs: list[dict[str, float]] = runs) -> float:
            return median(runs, field)

        ratio = m("ok_sent_p99") / m("unloaded_p99")
        rows.append(
            [
                label,
                "time (default)" if admission == "time" else "count only (--max-queue-ms 0)",
                f"{m('unloaded_p99'):.2f}",
                f"{m('capacity'):,.0f}",
                f"{m('offered'):,.0f}",
                f"{m('ok_per_s'):,.0f}",
                f"{m('ok_sent_p99'):.1f}",
                f"{ratio:.1f}x",
                f"{m('ok_p99'):,.0f}",
                f"{sum(r['refused'] for r in runs):,.0f}",
                f"{sum(r['other_errors'] for r in runs):,.0f}",
                f"{sum(r['soak_requests'] for r in runs):,.0f} / {sum(r['soak_errors'] for r in runs):,.0f}",  # noqa: E501
            ]
        )
    headers = [
        "model",
        "admission",
        "unloaded p99 ms (c=1)",
        "capacity req/s (c=32)",
        "offered req/s (open loop)",
        "admitted req/s",
        "admitted p99 ms, from send",
        "vs unloaded (goal ≤ 10x)",
        "admitted p99 ms, from schedule",
        "503s",
        "other errors",
        "soak after: requests / errors",
    ]
    table = markdown_table(headers, rows)
    flags = ", ".join(sorted(cpu_features())) or "none of avx2/avx512/amx"
    print(table)
    if args.update:
        body = (
            "Command: `python benchmarks/overload.py --update BENCHMARKS.md` (run by `make "
            f"bench`). CPU flags: {flags}. Each server in its own process with batching "
            f"(32, 2 ms); overload = open loop at 2x the measured c=32 capacity for "
            f"{args.seconds:g} s over at most 256 connections; admitted latency from the "
            "request's send on its connection (the server's time, its queue included) and "
            "from its scheduled time (adds the client's wait for a free connection); "
            f"{args.rounds} rounds, medians (503s, errors and soak summed). Load generator "
            "and server share the machine's 2 cores.\n\n" + table + "\n\n" + EXPLAINED
        )
        update(args.update, "overload", body)


if __name__ == "__main__":
    main()
