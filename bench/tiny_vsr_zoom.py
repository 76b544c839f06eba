"""A 4x-zoomed strip of the shipped TinyVSR model's output, to see whether a token grid shows.

For each chosen built-in eval clip (``lsgq_compiler.vsr.data.eval_set()``; photos that never train
the model), one frame's crop is shown 4x enlarged (nearest neighbour): ground truth, bicubic, and
each weights file given, with its absolute error amplified (x4) below. A patch 1x2x2 model predicts
8x8-pixel blocks, and its error then shows their seams; the grid score (``space8``, the mean error
jump across 8-pixel borders over that across the 4-pixel cell borders between them, whole clips;
1.0 = no seam) says the same in one number. Writes ``OUT.png`` and ``OUT.json``. CPU, float32::

    python bench/tiny_vsr_zoom.py                                   # the shipped weights
    python bench/tiny_vsr_zoom.py --weights former=OLD.safetensors  # and another file beside them
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def space8(out: np.ndarray, hq: np.ndarray) -> float:
    """Grid score of ``out`` against ``hq`` (both ``(T, H, W, 3)`` uint8): 1.0 = no 8-pixel seam."""
    e = out.astype(np.float64) - hq.astype(np.float64)
    dx = np.abs(np.diff(e, axis=2)).mean(axis=(0, 1, 3))
    dy = np.abs(np.diff(e, axis=1)).mean(axis=(0, 2, 3))
    return float((dx[7::8].mean() + dy[7::8].mean()) / (dx[3::8].mean() + dy[3::8].mean()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", action="append", default=[], metavar="NAME=FILE",
                    help="another TinyVSR weights file to show beside the shipped one (repeatable)")
    ap.add_argument("--clips", default="eval_04_brick,eval_05_coins", help="comma-separated eval_set() clip names")
    ap.add_argument("--frame", type=int, default=3)
    ap.add_argument("--crop", type=int, default=48, help="crop side in HQ pixels (shown 4x)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tiny_vsr_zoom"))
    args = ap.parse_args(argv)

    import torch

    from lsgq_compiler.vsr.data import bicubic_upscale, eval_set
    from lsgq_compiler.vsr.models import load_tiny_vsr, upscale_clip

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    models = {"shipped": None}
    for spec in args.weights:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"--weights {spec!r}: expected NAME=FILE with an existing .safetensors file")
        models[name] = path
    clips = {c.name: c for c in eval_set()}
    names = [n.strip() for n in args.clips.split(",") if n.strip()]
    unknown = [n for n in names if n not in clips]
    if unknown:
        raise SystemExit(f"--clips: unknown {unknown}; the eval clips are {sorted(clips)}")

    vsrs = {m: load_tiny_vsr(path).eval() for m, path in models.items()}  # float32 (the loader's default)
    rows: list[tuple[str, list[np.ndarray]]] = []
    record: dict[str, dict] = {}
    for n in names:
        c = clips[n]
        outs = {"ground truth": c.hq, "bicubic": bicubic_upscale(c.lq)}
        with torch.no_grad():
            outs.update({m: upscale_clip(vsr, c.lq) for m, vsr in vsrs.items()})
        h, w = c.hq.shape[1:3]
        y0, x0 = (h - args.crop) // 2 // 8 * 8, (w - args.crop) // 2 // 8 * 8  # crops aligned to the token grid
        crop = lambda a: a[args.frame, y0:y0 + args.crop, x0:x0 + args.crop]  # noqa: E731
        top = [crop(a) for a in outs.values()]
        err = [np.clip(4.0 * np.abs(crop(a).astype(np.float32) - crop(c.hq).astype(np.float32)), 0, 255).astype(np.uint8)
               for a in outs.values()]
        rows.append((n, [np.concatenate(top, 1), np.concatenate(err, 1)]))
        record[n] = {k: {"psnr": float(10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - c.hq) ** 2)))
                         if k != "ground truth" else None, "space8": space8(a, c.hq) if k != "ground truth" else None}
                     for k, a in outs.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(record[names[0]])
    dpi, px = 100, 4 * args.crop  # about one screen pixel per zoomed pixel
    fig, axes = plt.subplots(len(rows), 1, figsize=(len(labels) * px / dpi + 1.0, len(rows) * (2 * px / dpi + 0.9)),
                             squeeze=False)
    for ax, (n, (top, err)) in zip(axes[:, 0], rows):
        img = np.concatenate([top, err], 0).repeat(4, 0).repeat(4, 1)
        ax.imshow(img, interpolation="nearest")
        ax.set_xticks([(i + 0.5) * args.crop * 4 for i in range(len(labels))])
        ax.set_xticklabels([f"{k}\n" + ("" if record[n][k]["psnr"] is None else
                                        f"{record[n][k]['psnr']:.2f} dB, space8 {record[n][k]['space8']:.3f}")
                            for k in labels], fontsize=8)
        ax.set_yticks([args.crop * 2, args.crop * 6])
        ax.set_yticklabels(["output", "|error| x4"], fontsize=8)
        ax.set_title(f"{n}, frame {args.frame}, {args.crop}x{args.crop} HQ pixels at 4x", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, out.with_suffix(".png"))
    data = {"command": "python bench/" + Path(__file__).name + "".join(f" --weights {s}" for s in args.weights),
            "weights": {k: v or "lsgq_compiler/vsr/models/weights/tiny_vsr.safetensors" for k, v in models.items()},
            "frame": args.frame, "crop": args.crop, "clips": record}
    tmpj = out.with_name(out.name + ".tmp.json")
    tmpj.write_text(json.dumps(data, indent=1))
    os.replace(tmpj, out.with_suffix(".json"))
    print(f"wrote {out.with_suffix('.png')} and .json")
    for n in names:
        print(n, {k: v for k, v in record[n].items() if v["psnr"] is not None})
    return 0


if __name__ == "__main__":
    sys.exit(main())
