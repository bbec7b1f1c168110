#!/usr/bin/env python3
"""Sampling check for an exported DiT: DDIM 50 steps, CFG 4, one row per class, one column per
seed (column j uses torch.Generator().manual_seed(j) noise for every row).

  python3 train/sample_dit.py [--model train/dit_emoji.safetensors] [--out train/samples.png]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dit_model import DiT, Diffusion, ddim_sample, load_safetensors  # noqa: E402


def load_model(path):
    tensors, meta = load_safetensors(path)
    if meta.get("family") != "dit":
        raise ValueError(f"Cannot load {path}: metadata family is {meta.get('family')!r}, not 'dit'")
    cfg = json.loads(meta["model_config"])
    model = DiT(cfg)
    model.load_state_dict(tensors)
    return model.eval(), cfg


def sample_classes(model, cfg, seeds, steps, cfg_scale):
    """DDIM samples of every class, clamped to [-1, 1]: [classes, seeds, 3, H, W]; seed j's noise
    is torch.Generator().manual_seed(j), the same for every class."""
    size = cfg["input_size"]
    noise = torch.stack([torch.randn(3, size, size, generator=torch.Generator().manual_seed(s))
                         for s in range(seeds)])
    rows = []
    for c in range(cfg["num_classes"]):
        labels = torch.full((seeds,), c, dtype=torch.long)
        rows.append(ddim_sample(model, Diffusion(), labels, noise.clone(), steps, cfg_scale))
    return torch.stack(rows).clamp(-1, 1)


def write_grid(model_path, out_path, seeds=8, steps=50, cfg_scale=4.0, scale=2):
    t0 = time.time()
    model, cfg = load_model(model_path)
    names, n_cls, size = cfg["class_names"], cfg["num_classes"], cfg["input_size"]
    imgs = sample_classes(model, cfg, seeds, steps, cfg_scale)  # [classes, seeds, 3, H, W]
    imgs = ((imgs + 1) * 127.5).round().to(torch.uint8)
    imgs = imgs.permute(0, 3, 1, 4, 2).reshape(n_cls * size, seeds * size, 3).numpy()
    grid = Image.fromarray(np.ascontiguousarray(imgs)).resize(
        (seeds * size * scale, n_cls * size * scale), Image.NEAREST)
    margin = 84
    sheet = Image.new("RGB", (grid.width + margin, grid.height), (255, 255, 255))
    sheet.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(names):
        draw.text((4, c * size * scale + size * scale // 2 - 5), name, fill=(0, 0, 0))
    sheet.save(out_path)
    print(f"wrote {out_path}: {n_cls} classes x {seeds} seeds, DDIM {steps} steps, "
          f"CFG {cfg_scale}, {time.time() - t0:.1f} s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=os.path.join(HERE, "dit_emoji.safetensors"))
    p.add_argument("--out", default=os.path.join(HERE, "samples.png"))
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    write_grid(a.model, a.out, a.seeds, a.steps, a.cfg)


if __name__ == "__main__":
    main()
