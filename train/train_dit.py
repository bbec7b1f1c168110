#!/usr/bin/env python3
"""Train the bundled default DiT on the prepared 32x32 emoji set (CPU, Debian python3-torch).

  OMP_NUM_THREADS=1 python3 train/train_dit.py train            # resumes from .cache/ckpt.pt
  python3 train/train_dit.py export                              # EMA -> dit_emoji.safetensors
See train/README.md for the exact run, hyper-parameters and results.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from dit_model import DiT, Diffusion, save_safetensors  # noqa: E402
from sample_dit import write_grid  # noqa: E402

CACHE = os.path.join(HERE, ".cache")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["train", "export"])
    p.add_argument("--data", default=os.path.join(CACHE, "data"))
    p.add_argument("--ckpt", default=os.path.join(CACHE, "ckpt.pt"))
    p.add_argument("--log", default=os.path.join(CACHE, "train.log"))
    p.add_argument("--out", default=os.path.join(HERE, "dit_emoji.safetensors"))
    p.add_argument("--samples", default=os.path.join(HERE, "samples.png"))
    p.add_argument("--seed", type=int, default=20240611)
    p.add_argument("--steps", type=int, default=3000, help="total optimizer steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--lr-min", type=float, default=3e-5)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=1.5)
    p.add_argument("--min-snr-gamma", type=float, default=5.0,
                   help="Min-SNR-gamma weighting of the eps MSE (0 = plain MSE)")
    p.add_argument("--min-snr-from", type=int, default=0,
                   help="first step that uses the Min-SNR weighting")
    p.add_argument("--restart", default="",
                   help="STEP:LR[,STEP:LR...] — the previous cycle's cosine ends at STEP; a new cycle warms\n"
                        "up over 100 steps to LR and decays (cosine) to --lr-min at the next STEP or --steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every-s", type=float, default=300)
    p.add_argument("--max-minutes", type=float, default=0, help="stop early (0 = no limit)")
    p.add_argument("--no-export", action="store_true", help="train only (smoke runs)")
    p.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    return p.parse_args()


def load_data(path):
    images = np.load(os.path.join(path, "images.npy"))
    labels = np.load(os.path.join(path, "labels.npy"))
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, torch.from_numpy(labels), meta["class_names"]


def model_config(args, class_names):
    return {
        "hidden_size": args.hidden, "depth": args.depth, "num_heads": args.heads,
        "patch_size": args.patch, "in_channels": 3, "input_size": 32,
        "num_classes": len(class_names), "mlp_ratio": args.mlp_ratio, "learn_sigma": True,
        "class_names": class_names, "frequency_embedding_size": 256,
        "class_dropout_prob": 0.1,
    }


def cosine(lr, lr_min, step, warmup, start, end):
    if step < start + warmup:
        return lr_min + (lr - lr_min) * (step - start + 1) / warmup if start else lr * (step + 1) / warmup
    frac = min(1.0, (step - start - warmup) / max(1, end - start - warmup))
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * frac))


def lr_at(args, step):
    """First cycle: warm-up + cosine to --lr-min; each --restart STEP:LR starts a new cycle at STEP
    (100 warm-up steps from --lr-min to LR, cosine back to --lr-min where the next cycle starts or
    at --steps)."""
    cycles = sorted((int(at), float(lr)) for at, lr in
                    (r.split(":") for r in args.restart.split(",") if r))
    starts = [0] + [at for at, _ in cycles]
    ends = [at for at, _ in cycles] + [args.steps]
    lrs = [args.lr] + [lr for _, lr in cycles]
    i = max(i for i, start in enumerate(starts) if step >= start)  # starts[0] = 0 <= step
    warmup = args.warmup if i == 0 else 100
    return cosine(lrs[i], args.lr_min, step, warmup, starts[i], ends[i])


def save_ckpt(path, state):
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(args, cfg, ema_state):
    model = DiT(cfg)
    model.load_state_dict(ema_state)
    dt = torch.float16 if args.dtype == "f16" else torch.float32
    tensors = {k: v.to(dt) for k, v in model.state_dict().items()}
    meta = {"model_config": json.dumps(cfg), "family": "dit",
            "source": "emoji-datasource-google@16.0.0 (Noto Emoji, Apache-2.0), train/README.md"}
    save_safetensors(args.out, tensors, meta)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes, "
          f"{sum(v.numel() for v in tensors.values())} values)", flush=True)
    write_grid(args.out, args.samples, seeds=8)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    x_all, y_all, class_names = load_data(args.data)
    cfg = model_config(args, class_names)
    torch.manual_seed(args.seed)
    model = DiT(cfg)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=args.lr, betas=(0.9, 0.999), weight_decay=0.0)
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    if os.path.exists(args.ckpt):
        st = torch.load(args.ckpt)
        if st["config"] != cfg:
            sys.exit(f"Cannot resume from {args.ckpt}: its config differs; delete it or pass --ckpt")
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        step = st["step"]
        print(f"resumed from {args.ckpt} at step {step}", flush=True)
    if args.mode == "export":
        export(args, cfg, ema.state_dict())
        return

    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = torch.bincount(y_all, minlength=len(class_names)).float()
    weights = 1.0 / counts[y_all]  # every class equally likely per draw
    diffusion = Diffusion()
    log = open(args.log, "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    say(f"# start step={step} params={n_params} images={len(y_all)} args={vars(args)}")
    t_start = t_ckpt = time.time()
    t_win, win = time.time(), []
    model.train()
    while step < args.steps:
        idx = torch.multinomial(weights, args.batch, replacement=True, generator=gen)
        for g in opt.param_groups:
            g["lr"] = lr_at(args, step)
        gamma = args.min_snr_gamma if step >= args.min_snr_from else 0.0
        loss, mse, vb = diffusion.losses(model, x_all[idx], y_all[idx], gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        step += 1
        win.append((loss.item(), mse.item(), vb.item(), gnorm.item()))
        if step % 25 == 0 or step == args.steps:
            a = np.mean(win, axis=0)
            dt = (time.time() - t_win) / len(win)
            say(f"step {step} loss {a[0]:.4f} mse {a[1]:.4f} vb {a[2]:.4f} gnorm {a[3]:.3f} "
                f"lr {lr_at(args, step - 1):.2e} s/step {dt:.3f} "
                f"elapsed_min {(time.time() - t_start) / 60:.1f}")
            t_win, win = time.time(), []
        out_of_time = args.max_minutes > 0 and time.time() - t_start > args.max_minutes * 60
        if time.time() - t_ckpt > args.ckpt_every_s or step == args.steps or out_of_time:
            save_ckpt(args.ckpt, {"config": cfg, "model": model.state_dict(),
                                  "ema": ema.state_dict(), "opt": opt.state_dict(),
                                  "gen": gen.get_state(), "rng": torch.get_rng_state(),
                                  "step": step})
            say(f"# checkpoint step {step}")
            t_ckpt = time.time()
        if out_of_time:
            say(f"# stopped at --max-minutes {args.max_minutes} (step {step})")
            break
    if not args.no_export:
        ema.eval()
        export(args, cfg, ema.state_dict())


if __name__ == "__main__":
    main()
