"""Capture coverage on diffusers' own transformer-test configs: every config, MinMax W8A8 and
LSGQuant W4A4 on the issue's list.

    python bench/capture_coverage.py [--out bench/results/capture_coverage.json] [--only Wan,Flux]

Configs and inputs: ``tests/capture_coverage/diffusers_configs.py`` (the tiny ``init_dict`` and
dummy-input shapes of ``tests/models/transformers/test_models_transformer_*.py`` in
huggingface/diffusers, for the installed diffusers). Each model is compiled on its seed-0 inputs
(calibration: seeds 0 and 2) and judged on fresh seed-1 inputs against the float model: form
(graph or module), every output present with the model's own structure, SQNR per output.
CPU, 2 threads. Writes the JSON atomically.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "capture_coverage"))

from coverage_runner import MIN_SQNR_DB, run  # noqa: E402
from diffusers_configs import CONFIGS, LSGQUANT, NEEDS  # noqa: E402

from lsgq_compiler.plan import atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "capture_coverage.json"))
    ap.add_argument("--only", default="", help="comma-separated config names")
    a = ap.parse_args()
    torch.set_num_threads(2)
    names = [n for n in (a.only.split(",") if a.only else CONFIGS)]
    rows, t0 = [], time.perf_counter()
    for n in names:
        jobs = [("minmax", 8)] + ([("lsgquant", 4)] if n in LSGQUANT else [])
        for recipe, bits in jobs:
            if n in NEEDS:
                mod, why = NEEDS[n]
                try:
                    __import__(mod)
                except ImportError:
                    rows.append({"config": n, "class": CONFIGS[n][0], "recipe": f"{recipe}-w{bits}a{bits}",
                                 "skipped": f"needs {mod} (not installed): {why}"})
                    print(f"{n:24s} skipped: needs {mod}", flush=True)
                    continue
            try:
                r = run(n, recipe, bits)
            except Exception as e:  # a failure is a result here, recorded as such
                r = {"config": n, "class": CONFIGS[n][0], "recipe": f"{recipe}-w{bits}a{bits}",
                     "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
            rows.append(r)
            print(f"{n:24s} {r['recipe']:14s} {r.get('form', '-'):6s} "
                  f"{r.get('sqnr_db', float('nan')):6.1f} dB  outputs={r.get('n_outputs')} "
                  f"structure={r.get('structure_ok')} {r.get('error', '')}", flush=True)
    w8 = [r for r in rows if r["recipe"] == "minmax-w8a8" and "skipped" not in r]
    ok = [r for r in w8 if r.get("structure_ok") and (r.get("sqnr_db") or 0) >= MIN_SQNR_DB]
    summary = {"configs": len(w8), "classes": len({r["class"] for r in w8}),
               "w8a8_pass": len(ok), "w8a8_pass_classes": len({r["class"] for r in ok}),
               "graph": sum(r.get("form") == "graph" for r in w8), "module": sum(r.get("form") == "module" for r in w8),
               "min_w8a8_sqnr_db": min((r["sqnr_db"] for r in w8 if r.get("sqnr_db") is not None), default=None),
               "threshold_db": MIN_SQNR_DB, "total_s": round(time.perf_counter() - t0, 1)}
    import diffusers

    out = {"command": "python bench/capture_coverage.py" + (f" --only {a.only}" if a.only else ""),
           "env": {"torch": torch.__version__, "diffusers": diffusers.__version__, "python": platform.python_version(),
                   "threads": torch.get_num_threads()},
           "summary": summary, "results": rows}
    atomic_write_text(Path(a.out), json.dumps(out, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
