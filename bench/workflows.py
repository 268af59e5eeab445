"""Wall and CPU time of each shapes-model example workflow through the real server and executor, as a user runs it
(Queue once: models load, every node runs). Workflows interleaved, `--reps` rounds, the executor's caches and models
dropped before every run (POST /free), so each run does all the work. CPU time is the server process's
(user + system), which a loaded machine inflates less than wall time.
    .venv/bin/python -m bench.workflows [--reps 3] [names...]   -> table + out/bench/workflows.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from tools.support import examples  # noqa: E402
from tools.support.comfy_server import ComfyServer  # noqa: E402
from tools.support.workflow_api import ui_to_api  # noqa: E402

NAMES = ["regiondrag", "ledits", "dragondiffusion_move", "dragondiffusion_drag", "dragdiffusion"]


def _cpu(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("names", nargs="*", default=NAMES)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    srv = ComfyServer(extra_nodes=False).start()
    rows: dict = {n: {"wall_s": [], "cpu_s": []} for n in a.names}
    try:
        info = srv.get("/object_info")
        prompts = {n: ui_to_api(json.loads(examples.path(n).read_text()), info)
                   for n in a.names}
        for r in range(a.reps):
            for n in a.names:
                srv.post("/free", {"unload_models": True, "free_memory": True})
                time.sleep(1.0)
                c0, t0 = _cpu(srv.proc.pid), time.perf_counter()
                srv.run_prompt(prompts[n], timeout=1800)
                rows[n]["wall_s"].append(time.perf_counter() - t0)
                rows[n]["cpu_s"].append(_cpu(srv.proc.pid) - c0)
                print(f"[{r + 1}/{a.reps}] {n}: wall {rows[n]['wall_s'][-1]:.1f} s, cpu {rows[n]['cpu_s'][-1]:.1f} s",
                      flush=True)
    finally:
        srv.cleanup()
    load = os.getloadavg()
    out = {"machine": {"cpus": os.cpu_count(), "loadavg": load, "omp_threads": os.environ.get("OMP_NUM_THREADS")},
           "workflows": {}}
    print(f"\nexample workflows on the Shapes Demo Model, {a.reps} runs each (load average {load[0]:.1f} on "
          f"{os.cpu_count()} CPUs)")
    print(f"{'workflow':24s} {'wall median':>12s} {'wall min-max':>14s} {'cpu median':>11s} {'cpu min-max':>13s}")
    for n, v in rows.items():
        w, c = v["wall_s"], v["cpu_s"]
        out["workflows"][n] = {"wall_median_s": statistics.median(w), "wall_s": w,
                               "cpu_median_s": statistics.median(c), "cpu_s": c}
        print(f"{n:24s} {statistics.median(w):11.1f}s {min(w):6.1f}-{max(w):5.1f}s {statistics.median(c):10.1f}s "
              f"{min(c):6.1f}-{max(c):5.1f}s")
    dest = ROOT / "out" / "bench" / "workflows.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"-> {dest.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
