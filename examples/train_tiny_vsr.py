"""Train the shipped TinyVSR weights (``lsgq_compiler/vsr/models/weights/tiny_vsr.{safetensors,json}``).

Data: 8-frame 128x128 HQ clips filmed from the TRAINING photographs only
(``lsgq_compiler.vsr.data.training_photos()``, disjoint from the evaluation photos) by
``pan_zoom_clip`` with seeded random camera paths, augmented (random transpose, horizontal and
vertical flips, time reversal, RGB channel order, per-channel gains that tint the gray photos
half the time, a photo shrink 30% of the time) before being degraded by the project's seeded
pipeline ``degrade_clip`` (blur, x4 down, noise, JPEG, H.264). Pairs are produced by a pool of worker
processes into a fixed list (pair ``i`` is a pure function of ``--seed`` and ``i``); step ``k``
samples its batch uniformly from the first ``min(pool, warm + k * fresh)`` pairs and waits for
them if the workers lag, so the batches do not depend on worker timing. Batches get a second,
random dihedral/time-reversal augmentation on the device.

Model: ``tiny_vsr_config()`` (Wan transformer, width 384 = 6 heads x 64, 6 blocks, FFN 1536,
patch (1, 2, 2), text 8 x 64, timestep 399, ~15.6 M parameters), residual over the bicubic
latent, ``proj_out`` zero-initialised (step 0 = bicubic).

Recipe: AdamW (betas 0.9/0.99, weight decay 0.02 on matrices only), peak LR 5e-4, 300 linear
warm-up steps then cosine to 2% of the peak, gradient clipping at 1.0, batch 32, bf16 autocast
on CUDA (float32 on CPU), Charbonnier loss (eps 1e-3) on pixels (computed on the
space-to-depth latent, a permutation of the pixels), EMA of the weights (decay 0.999). At the
end the raw and EMA weights are scored on a held-out slice (training photos, unseen seeds);
the better one is saved in fp16 and then scored, reloaded in float32, on ``eval_set()``.

Reproduce (what produced the shipped file; the run is seeded, GPU nondeterminism aside; the
shipped run used ``--time-budget 8 --steps 30000``, which settled on 3878 steps)::

    python examples/train_tiny_vsr.py --device cuda --steps 3878 --workers 15 --eval-every 1000 \\
        --out lsgq_compiler/vsr/models/weights

CPU smoke run (a few steps, to check the pipeline)::

    python examples/train_tiny_vsr.py --device cpu --steps 4 --batch 2 --pool 8 --warm 4 --fresh 1 \\
        --workers 2 --heldout 2 --eval-clips 1 --out /tmp/tiny_vsr

Shipped run: see ``TRAINING RECORD`` at the bottom of this docstring.

TRAINING RECORD (the shipped weights):

* hardware: one NVIDIA H200 (lent device machine, 16 CPU cores for the data workers),
  PyTorch 2.11 + CUDA 13, diffusers 0.42.1, PyAV 18.1; bf16 autocast.
* seed 0, 3878 steps x batch 32 (124k clip samples from 32768 distinct pairs), peak LR 5e-4;
  470 s of training (about 93 ms/step once the pair pool is full; the first ~200 steps run
  slower while the main process unpickles the workers' pairs), 487 s end to end.
* held-out slice (48 clips, training photos, unseen seeds): 30.08 dB vs bicubic 27.38 dB
  (+2.70 dB; the EMA weights scored 29.95 dB, so the raw weights were kept).
* ``eval_set()`` (6 clips, 8 x 128 x 128, eval-only photos), shipped fp16 weights run in float32
  (the same numbers on the H200 and on a CPU):

  =============================  =======  =======  =====
  clip                           model    bicubic  gain
  =============================  =======  =======  =====
  eval_00_coffee                 22.42    21.75    +0.67
  eval_01_rocket                 25.18    24.68    +0.50
  eval_02_motorcycle_left        24.92    22.38    +2.54
  eval_03_immunohistochemistry   26.89    25.09    +1.79
  eval_04_brick                  26.97    24.78    +2.19
  eval_05_coins                  24.31    21.60    +2.71
  mean                           25.12    23.38    +1.73
  =============================  =======  =======  =====

* an earlier, shorter run (peak LR 4e-4, 1438 steps) reached +1.80 dB held-out and +1.20 dB on
  ``eval_set()``: the gain still grows with training time.
* CPU float32 (2 cores): ~0.6 s per 2048-token clip (8 x 128 x 128 HQ) on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

FRAMES = 8
HQ_SIZE = 128


# ---------------------------------------------------------------------------- data (worker side)
def _worker_init() -> None:
    """Workers: one thread each for OpenCV and BLAS (the pool gives the parallelism)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2

    cv2.setNumThreads(1)


def make_pair(task: tuple[int, int, tuple[str, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """Pair number ``index`` of the run seeded ``seed``: a pure function of its arguments.

    Args:
        task: ``(seed, index, photos)``.

    Returns:
        ``hq`` ``(T, 128, 128, 3)`` uint8 and ``lq`` ``(T, 32, 32, 3)`` uint8.
    """
    from lsgq_compiler.vsr.data import degrade_clip, load_photo, pan_zoom_clip

    seed, index, photos = task
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 0x7195]))
    import cv2

    name = photos[int(rng.integers(len(photos)))]
    cam_seed, deg_seed = (int(v) for v in rng.integers(0, 2**31 - 1, size=2))
    u = rng.random(3)
    photo = load_photo(name)
    if u[0] < 0.3:  # content scale: shrink the photo (area), keeping room for the camera window
        ph, pw = photo.shape[:2]
        f = max(0.5 + 0.5 * u[1], 1.6 * HQ_SIZE / min(ph, pw))
        if f < 0.98:
            photo = cv2.resize(photo, (round(pw * f), round(ph * f)), interpolation=cv2.INTER_AREA)
    photo = photo[:, :, rng.permutation(3)]  # colour: channel order
    if u[2] < 0.5:  # colour: per-channel gains (tints the gray photos)
        gains = 0.7 + 0.3 * rng.random(3)
        photo = np.clip(photo.astype(np.float32) * gains.astype(np.float32), 0, 255).round().astype(np.uint8)
    hq = pan_zoom_clip(np.ascontiguousarray(photo), FRAMES, (HQ_SIZE, HQ_SIZE), seed=cam_seed)
    flips = rng.random(4) < 0.5
    if flips[0]:
        hq = hq.transpose(0, 2, 1, 3)
    if flips[1]:
        hq = hq[:, :, ::-1]
    if flips[2]:
        hq = hq[:, ::-1]
    if flips[3]:
        hq = hq[::-1]
    hq = np.ascontiguousarray(hq)
    return hq, degrade_clip(hq, seed=deg_seed)


class PairStream:
    """Pairs ``0 .. total-1`` made in order by a process pool, consumed from a background thread."""

    def __init__(self, seed: int, total: int, photos: tuple[str, ...], workers: int, offset: int = 0) -> None:
        import multiprocessing as mp

        self.q: queue.Queue = queue.Queue(maxsize=4096)
        ctx = mp.get_context("spawn")  # no fork after CUDA/threads
        self.pool = ctx.Pool(workers, initializer=_worker_init)
        tasks = [(seed, offset + i, photos) for i in range(total)]
        self.thread = threading.Thread(target=self._run, args=(tasks,), daemon=True)
        self.thread.start()

    def _run(self, tasks: list) -> None:
        try:
            for pair in self.pool.imap(make_pair, tasks, chunksize=4):
                self.q.put(pair)
        except Exception as e:  # surface worker errors in the main thread
            self.q.put(e)

    def get(self, block: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            item = self.q.get(block=block)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.pool.terminate()


# ---------------------------------------------------------------------------- metrics
def psnr_u8(ref: np.ndarray, out: np.ndarray) -> float:
    """PSNR in dB of two uint8 clips over all pixels and channels (peak 255)."""
    mse = float(np.mean((ref.astype(np.float64) - out.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def score(vsr: Any, clips: list[tuple[str, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """PSNR of the model and of bicubic on ``(name, hq, lq)`` clips; per clip and mean."""
    import torch

    from lsgq_compiler.vsr.data import bicubic_upscale
    from lsgq_compiler.vsr.models import upscale_clip

    per = {}
    with torch.no_grad():
        for name, hq, lq in clips:
            per[name] = {"model": psnr_u8(hq, upscale_clip(vsr, lq)), "bicubic": psnr_u8(hq, bicubic_upscale(lq))}
    m = float(np.mean([v["model"] for v in per.values()]))
    b = float(np.mean([v["bicubic"] for v in per.values()]))
    return {"model": m, "bicubic": b, "gain": m - b, "per_clip": per}


# ---------------------------------------------------------------------------- training
def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    """Linear warm-up then cosine decay to ``floor * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    ap.add_argument("--steps", type=int, default=3600, help="optimizer steps (upper bound with --time-budget)")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="minutes of training; if > 0, --steps is cut to fit, from the speed of steps 150..250")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool", type=int, default=32768, help="distinct training pairs")
    ap.add_argument("--warm", type=int, default=1024, help="pairs available at step 0")
    ap.add_argument("--fresh", type=int, default=16, help="pairs added to the sampling range per step")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--heldout", type=int, default=48, help="held-out clips (training photos, unseen seeds)")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--eval-clips", type=int, default=-1, help="eval_set() clips to score at the end (-1: all)")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--init", default="", help="start from these TinyVSR weights (.safetensors) instead of scratch")
    ap.add_argument("--out", default="tiny_vsr_out", help="folder for tiny_vsr.safetensors/.json and train_log.json")
    args = ap.parse_args(argv)

    t_start = time.time()
    from lsgq_compiler.vsr.data import eval_set, training_photos

    photos = tuple(training_photos())
    print(f"training photos ({len(photos)}): {', '.join(photos)}", flush=True)
    # The pools start before CUDA is touched.
    heldout_stream = PairStream(args.seed + 1_000_003, args.heldout, photos, min(args.workers, 8), offset=10**9)
    stream = PairStream(args.seed, args.pool, photos, args.workers)

    import torch

    from lsgq_compiler.vsr.models import build_tiny_vsr, load_tiny_vsr, save_tiny_vsr, tiny_vsr_config

    dev = torch.device(args.device)
    torch.manual_seed(args.seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}", flush=True)
    config = tiny_vsr_config()
    vsr = (load_tiny_vsr(args.init) if args.init else build_tiny_vsr(config, seed=args.seed)).to(dev)
    if args.init:
        print(f"starting from {args.init}", flush=True)
    vsr.train()
    n_params = sum(p.numel() for p in vsr.transformer.parameters())
    print(f"params: {n_params / 1e6:.2f} M", flush=True)

    decay, no_decay = [], []
    for _, p in vsr.transformer.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.02}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), fused=fused)
    params = [p for p in vsr.transformer.parameters()]
    ema = [p.detach().clone().float() for p in params]

    heldout = []
    for i in range(args.heldout):
        hq, lq = heldout_stream.get()
        heldout.append((f"heldout{i:03d}", hq, lq))
    heldout_stream.close()

    pool_n = args.pool
    hq_pool = torch.empty((pool_n, FRAMES, HQ_SIZE, HQ_SIZE, 3), dtype=torch.uint8, device=dev)
    lq_pool = torch.empty((pool_n, FRAMES, HQ_SIZE // 4, HQ_SIZE // 4, 3), dtype=torch.uint8, device=dev)
    have = 0

    def fill(need: int) -> None:
        nonlocal have
        hqs, lqs = [], []
        while have + len(hqs) < pool_n:
            item = stream.get(block=have + len(hqs) < need)
            if item is None:
                break
            hqs.append(torch.from_numpy(item[0]))
            lqs.append(torch.from_numpy(item[1]))
            if len(hqs) >= 64 and have + len(hqs) >= need:  # ingest a little per step: keeps the GPU fed
                break
        if hqs:
            k = len(hqs)
            hq_pool[have:have + k] = torch.stack(hqs).to(dev, non_blocking=True)
            lq_pool[have:have + k] = torch.stack(lqs).to(dev, non_blocking=True)
            have += k
        if have < need:
            fill(need)

    gen = torch.Generator().manual_seed(args.seed + 17)
    total = args.steps
    log: list[dict[str, Any]] = []
    charb_eps2 = 1e-6
    t_train = time.time()
    t_mark = None
    # Steps timed for --time-budget: late enough that start-up ingestion is over, before warm-up ends
    # (so the cosine schedule, which depends on the total, has not started yet).
    t0_step, t1_step = (150, 250) if args.warmup >= 250 else (20, 40)

    def eval_now(tag: str) -> dict[str, Any]:
        vsr.eval()
        r = score(vsr, heldout)
        vsr.train()
        print(f"[{tag}] held-out PSNR model {r['model']:.2f} dB, bicubic {r['bicubic']:.2f} dB, "
              f"gain {r['gain']:+.2f} dB", flush=True)
        return r

    step = 0
    while step < total:
        need = min(pool_n, args.warm + step * args.fresh)
        fill(need)
        idx = torch.randint(0, need, (args.batch,), generator=gen)
        aug = torch.randint(0, 2, (4,), generator=gen).tolist()
        idx_d = idx.to(dev)
        hq = hq_pool[idx_d].permute(0, 4, 1, 2, 3).float().div_(255.0)  # (B, 3, T, H, W)
        lq = lq_pool[idx_d].permute(0, 4, 1, 2, 3).float().div_(255.0)
        if aug[0]:
            hq, lq = hq.transpose(3, 4), lq.transpose(3, 4)
        if aug[1]:
            hq, lq = hq.flip(4), lq.flip(4)
        if aug[2]:
            hq, lq = hq.flip(3), lq.flip(3)
        if aug[3]:
            hq, lq = hq.flip(2), lq.flip(2)
        target = vsr.video_to_latent(hq.contiguous())
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, args.lr, args.warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            pred = vsr.predict_latent(lq.contiguous())
        loss = torch.sqrt((pred.float() - target) ** 2 + charb_eps2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            d = 0.0 if step < args.warmup else args.ema
            torch._foreach_lerp_(ema, [p.detach().float() for p in params], 1.0 - d)
        step += 1

        if step == t0_step:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t_mark = time.time()
        if step == t1_step and t_mark is not None:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            per = (time.time() - t_mark) / (t1_step - t0_step)
            if args.time_budget > 0:
                left = args.time_budget * 60 - (time.time() - t_train)
                total = max(step + 1, min(args.steps, step + int(left / per)))
            mem = (f", peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.1f} GiB"
                   if dev.type == "cuda" else "")
            print(f"step time {per * 1000:.1f} ms ({args.batch / per:.0f} clips/s); total steps {total}{mem}",
                  flush=True)
        if step % 100 == 0 or step == total:
            el = time.time() - t_train
            print(f"step {step}/{total} loss {loss.item():.5f} gnorm {float(gnorm):.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} "
                  f"pairs {have}/{need} {el:.0f}s", flush=True)
            log.append({"step": step, "loss": loss.item(), "time_s": el})
        if args.time_budget > 0 and time.time() - t_train > 1.1 * 60 * args.time_budget and step < total:
            print(f"stopping early at step {step}: 1.1x the time budget is spent (data workers too slow?)", flush=True)
            total = step
        if args.eval_every and step % args.eval_every == 0 and step < total:
            r = eval_now(f"step {step}")
            log.append({"step": step, "heldout": {k: v for k, v in r.items() if k != "per_clip"}})
    stream.close()
    train_s = time.time() - t_train

    raw = eval_now("final raw")
    backup = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    ema_r = eval_now("final EMA")
    use_ema = ema_r["model"] >= raw["model"]
    if not use_ema:
        with torch.no_grad():
            for p, b in zip(params, backup):
                p.copy_(b)
    vsr.eval()

    out = Path(args.out)
    meta = {"script": "examples/train_tiny_vsr.py", "init": args.init or None, "seed": args.seed, "steps": step,
            "batch": args.batch,
            "lr": args.lr, "warmup": args.warmup, "pool": pool_n, "weights": "ema" if use_ema else "raw",
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "train_seconds": round(train_s, 1), "training_photos": list(photos)}
    path = save_tiny_vsr(vsr.cpu(), out / "tiny_vsr.safetensors", config, dtype=torch.float16, extra_meta=meta)
    print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB), {'EMA' if use_ema else 'raw'} weights", flush=True)

    shipped = load_tiny_vsr(path, dtype=torch.float32).to(dev)
    ho = score(shipped, heldout)
    clips = eval_set()
    if args.eval_clips >= 0:
        clips = clips[:args.eval_clips]
    ev = score(shipped, [(c.name, c.hq, c.lq) for c in clips]) if clips else None
    print(f"fp16 weights, float32 compute: held-out gain {ho['gain']:+.2f} dB "
          f"({ho['model']:.2f} vs {ho['bicubic']:.2f})", flush=True)
    if ev:
        for name, v in ev["per_clip"].items():
            print(f"  eval {name}: model {v['model']:.2f} dB, bicubic {v['bicubic']:.2f} dB, "
                  f"gain {v['model'] - v['bicubic']:+.2f}", flush=True)
        print(f"eval_set ({len(clips)} clips): model {ev['model']:.2f} dB, bicubic {ev['bicubic']:.2f} dB, "
              f"gain {ev['gain']:+.2f} dB", flush=True)
    summary = {"meta": meta, "params": n_params, "log": log, "heldout_raw": raw["model"], "heldout_ema": ema_r["model"],
               "heldout_shipped": {k: v for k, v in ho.items() if k != "per_clip"},
               "eval_set": ev, "wall_seconds": round(time.time() - t_start, 1)}
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {time.time() - t_start:.0f}s (training {train_s:.0f}s, {step} steps)", flush=True)
    return 0


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


if __name__ == "__main__":
    sys.exit(main())
