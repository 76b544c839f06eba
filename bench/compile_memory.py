"""Host memory of the LSGQuant pipeline per pass, in copies of the model's weights (CPU; issues 16, 21).

    python bench/compile_memory.py                 # CogVideoX1.5 at full width, 4 of its 42 blocks
    python bench/compile_memory.py --layers 2      # quicker

Why: on the H200 the CogVideoX1.5-5B pipeline peaked at 60.0 GiB in `compile` and 67.2 GiB in
`save` for 10.4 GiB of bf16 weights (`bench/results/quantize_cog5b/`, 5.8x and 6.5x), so
Wan2.1-14B (26 GiB of bf16 weights) does not fit one H200 by that ratio. This measures where the
copies come from, pass by pass, on the CPU (same code path, real model width, few blocks, tiny
token count so activations are negligible): each pass's peak resident memory (Linux ``VmHWM``,
reset before the pass through ``/proc/self/clear_refs``; glibc's mmap threshold fixed so that
freed tensors leave the resident set) minus the resident memory before
``compile_quantized``, divided by the model's bf16 weight bytes. Then ``to_module_form`` and
``save_pretrained`` the same way. Writes ``bench/results/compile_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_scale as gs  # noqa: E402


MMAP_THRESHOLD = 131072


def rss_gib(key: str = "VmRSS") -> float:
    """Resident (``VmRSS``) or peak resident (``VmHWM``) memory of this process, GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"{key} not in /proc/self/status")


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks of CogVideoX1.5 (42 in the model)")
    ap.add_argument("--out", default="bench/results/compile_memory.json")
    args = ap.parse_args()
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != str(MMAP_THRESHOLD):
        # glibc otherwise raises its mmap threshold after the first large frees and keeps later freed
        # tensors in the heap: resident memory would then count dead tensors. A fixed threshold puts
        # every tensor over 128 KiB in its own mapping, returned on free, so resident = live.
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
        os.execv(sys.executable, [sys.executable, *sys.argv])
    try:
        reset_peak()
    except OSError as e:
        raise SystemExit(f"needs Linux /proc/self/clear_refs to reset the peak resident size ({e})")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    import diffusers
    from torch.fx.passes.infra.pass_base import PassBase

    from lsgq_compiler import QuantConfig, compile_quantized, save_pretrained
    from lsgq_compiler.deploy import to_module_form

    spec = gs.CONFIGS["cogvideox-5b"]
    cfg = dict(spec["cfg"], num_layers=args.layers)
    torch.manual_seed(0)
    model = diffusers.CogVideoXTransformer3DModel(**cfg).to(torch.bfloat16).eval()
    wbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    tokens = 2 * 4 * 4  # 4 latent frames (patch 2 in time) x 8 x 8 latent pixels (patch 2)
    theta = torch.rand(tokens, cfg["attention_head_dim"], generator=g) * 6.28

    def batch() -> dict:
        return dict(hidden_states=torch.randn(1, 4, 16, 8, 8, generator=g, dtype=torch.bfloat16),
                    encoder_hidden_states=torch.randn(1, 226, 4096, generator=g, dtype=torch.bfloat16),
                    timestep=torch.tensor([399]), image_rotary_emb=(theta.cos(), theta.sin()))

    inputs, calib = batch(), [batch(), batch()]
    rows: list[dict] = []
    base = rss_gib()
    orig_call = PassBase.__call__

    def measured(self, gm):  # each pass: its peak resident memory above the start, in model copies
        reset_peak()
        t0 = time.perf_counter()
        try:
            return orig_call(self, gm)
        finally:
            peak = rss_gib("VmHWM") - base
            rows.append({"stage": type(self).__name__, "time_s": round(time.perf_counter() - t0, 2),
                         "peak_above_start_gib": round(peak, 3), "model_copies": round(peak * 2**30 / wbytes, 2),
                         "after_gib": round(rss_gib() - base, 3)})
            print(f"  {rows[-1]['stage']:<28} peak +{peak:6.2f} GiB = {rows[-1]['model_copies']:5.2f} x weights",
                  flush=True)

    cfgq = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, target="cuda-sm90", attention_bits=8,
                       options={"sensitivity": "qerror", "light_iters": 2, "full_iters": 3, "observe_tokens": 32})
    print(f"CogVideoX1.5 width 3072, {args.layers} blocks: {wbytes / 2**30:.2f} GiB of bf16 weights "
          f"(resident before compile: {base:.2f} GiB)", flush=True)
    PassBase.__call__ = measured
    try:
        reset_peak()
        qm = compile_quantized(model, inputs, cfgq, calib_data=calib, progress=False)
    finally:
        PassBase.__call__ = orig_call
    # each pass reset the peak: the whole call's peak is the largest of theirs and of what followed the last
    whole = max([rss_gib("VmHWM") - base] + [r["peak_above_start_gib"] for r in rows])
    rows.append({"stage": "compile_quantized (whole, capture included)", "peak_above_start_gib": round(whole, 3),
                 "model_copies": round(whole * 2**30 / wbytes, 2), "after_gib": round(rss_gib() - base, 3)})
    for name, fn in (("to_module_form", lambda: to_module_form(qm, model)),
                     ("save_pretrained", lambda: save_pretrained(qm, Path(tmp) / "ck", model))):
        with tempfile.TemporaryDirectory() as tmp:
            before = rss_gib()
            reset_peak()
            t0 = time.perf_counter()
            obj = fn()
            peak = rss_gib("VmHWM") - base
            rows.append({"stage": name, "time_s": round(time.perf_counter() - t0, 2),
                         "peak_above_start_gib": round(peak, 3), "model_copies": round(peak * 2**30 / wbytes, 2),
                         "peak_above_its_start_gib": round(rss_gib("VmHWM") - before, 3)})
            del obj
    for r in rows[-3:]:
        print(f"  {r['stage']:<28} peak +{r['peak_above_start_gib']:6.2f} GiB = {r['model_copies']:5.2f} x weights")
    res = {"command": "python bench/compile_memory.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
           "machine": "CPU", "model": f"CogVideoX1.5 config (width 3072, FFN 12288), {args.layers} blocks, random bf16",
           "weight_bytes": wbytes, "video_tokens": tokens, "calibration_batches": len(calib),
           "config": cfgq.to_dict(), "resident_before_gib": round(base, 3),
           "note": "peak resident memory above the resident size before compile_quantized (the model itself "
                   "excluded), per pass (VmHWM reset before each); model_copies = that / the bf16 weight bytes",
           "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp_out, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
