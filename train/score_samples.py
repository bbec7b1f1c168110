#!/usr/bin/env python3
"""Class accuracy of a model's samples: a number for "are the samples recognisable".

A small CNN classifier is trained on 80% of the training set (split by emoji, so that the
skin-tone variants of one emoji stay on one side) and checked on the other 20%. Then the DiT
samples N images per class (DDIM, classifier-free guidance, seeds 0..N-1) and the classifier
says which class each sample looks like. A class whose samples are classified as that class
is drawn recognisably *to this classifier*: it also accepts class-typical colours and textures,
so its figure is an upper bound on what a person would recognise.

  python3 train/score_samples.py [--model train/dit_emoji.safetensors] [--per-class 16]
                                 [--steps 50] [--cfg 4] [--threads 1]

The classifier is cached in train/.cache/classifier.pt (keyed by the data and its own settings).
Prints a table (markdown) of per-class accuracy: held-out real images, then samples.
"""

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from sample_dit import load_model, sample_classes  # noqa: E402
import train_dit  # noqa: E402

CACHE = os.path.join(HERE, ".cache")
SEED = 20241123
EPOCHS = 40


class Classifier(nn.Module):
    """Three conv stages (32, 64, 128 channels; 32→16→8→4 pixels), global pooling, linear."""

    def __init__(self, n_classes):
        super().__init__()

        def stage(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2))

        self.body = nn.Sequential(stage(3, 32), stage(32, 64), stage(64, 128))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, n_classes))

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def load_data(path):
    """The training set as train_dit.py reads it, plus each image's emoji name (skin tones
    stripped), so that the variants of one emoji stay on one side of the split."""
    x, y, names = train_dit.load_data(path)
    with open(os.path.join(path, "meta.json")) as f:
        groups = [item["name"].split(":")[0] for item in json.load(f)["items"]]
    return x, y, names, groups


def split(labels, groups, n_classes, held=0.2):
    """Per class, a seeded 20% of its emoji (with all their variants) are held out."""
    rng = np.random.default_rng(SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in range(n_classes):
        names = sorted({groups[i] for i in range(len(labels)) if labels[i] == c})
        k = max(1, round(held * len(names)))
        out = set(rng.choice(names, size=k, replace=False).tolist())
        for i in range(len(labels)):
            if labels[i] == c and groups[i] in out:
                test[i] = True
    return torch.from_numpy(~test), torch.from_numpy(test)


def augment(x, gen):
    """Random shifts of up to 2 pixels (white padding) and horizontal flips."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=1.0)
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def train_classifier(x, y, n_classes, log):
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = Classifier(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    counts = torch.bincount(y, minlength=n_classes).float()
    weights = 1.0 / counts[y]  # balanced: every class equally likely per draw
    steps_per_epoch = max(1, len(y) // 64)
    total = EPOCHS * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=total)
    model.train()
    t0 = time.time()
    for step in range(total):
        idx = torch.multinomial(weights, 64, replacement=True, generator=gen)
        loss = F.cross_entropy(model(augment(x[idx], gen)), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % (10 * steps_per_epoch) == 0:
            log(f"classifier epoch {(step + 1) // steps_per_epoch}/{EPOCHS}: loss "
                f"{loss.item():.3f} ({time.time() - t0:.0f} s)")
    return model.eval()


@torch.no_grad()
def predict(model, x):
    return torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])


def per_class_accuracy(pred, y, n_classes):
    return [(pred[y == c] == c).float().mean().item() if (y == c).any() else float("nan")
            for c in range(n_classes)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=os.path.join(HERE, "dit_emoji.safetensors"))
    p.add_argument("--data", default=os.path.join(CACHE, "data"))
    p.add_argument("--per-class", type=int, default=16)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    if not os.path.exists(os.path.join(a.data, "images.npy")):
        sys.exit(f"No training data in {a.data}: run python3 train/prepare_data.py first")
    x, y, names, groups = load_data(a.data)
    n_classes = len(names)
    key = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()
                         + f"{SEED}/{EPOCHS}/v2".encode()).hexdigest()[:16]
    path = os.path.join(CACHE, "classifier.pt")
    tr, te = split(y.numpy(), groups, n_classes)
    clf = Classifier(n_classes)
    if os.path.exists(path) and torch.load(path).get("key") == key:
        clf.load_state_dict(torch.load(path)["state"])
        clf.eval()
        log(f"classifier from {path}")
    else:
        log(f"training the classifier on {int(tr.sum())} images ({EPOCHS} epochs)")
        clf = train_classifier(x[tr], y[tr], n_classes, log)
        torch.save({"key": key, "state": clf.state_dict()}, path)
    real = per_class_accuracy(predict(clf, x[te]), y[te], n_classes)

    model, cfg = load_model(a.model)
    if cfg["class_names"] != names:
        sys.exit(f"{a.model} has other classes than the data in {a.data}")
    t0 = time.time()
    n = a.per_class
    samples = sample_classes(model, cfg, n, a.steps, a.cfg).flatten(0, 1)
    labels = torch.arange(n_classes).repeat_interleave(n)
    log(f"sampled {n_classes}x{n} images in {time.time() - t0:.0f} s")
    gen_acc = per_class_accuracy(predict(clf, samples), labels, n_classes)

    print(f"Class accuracy, {os.path.basename(a.model)}: DDIM {a.steps} steps, CFG {a.cfg}, "
          f"{n} samples per class; held-out real emoji for comparison.\n")
    print("| class | held-out real | samples |")
    print("| ----- | ------------: | ------: |")
    for c in range(n_classes):
        print(f"| {names[c]} | {real[c]:.2f} | {gen_acc[c]:.2f} |")
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    print(f"| **mean** | **{mean(real):.2f}** | **{mean(gen_acc):.2f}** |")
    print(f"\nchance: {1 / n_classes:.3f}; classes with ≥ 50% of samples right: "
          f"{sum(v >= 0.5 for v in gen_acc)} of {n_classes}")


if __name__ == "__main__":
    main()
