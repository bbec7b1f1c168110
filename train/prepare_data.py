#!/usr/bin/env python3
"""Prepare the 32x32 emoji training set for the bundled default DiT.

Source: the npm package `emoji-datasource-google` (version pinned below), installed with npm
into train/.cache/npm (no package.json is created). Each 64x64 RGBA Noto Emoji PNG
(img/google/64/*.png, Apache-2.0 art) is alpha-composited on white, box-downsampled 2x to
32x32 RGB, and labelled with one of the curated classes below (a class is a union of the
package's subcategories). Skin-tone variations are included for the `hand` and `person`
classes. Emoji in subcategories not listed here are left out.

Writes train/.cache/data/:
  images.npy  uint8 [N, 32, 32, 3] (RGB, row-major)
  labels.npy  int64 [N]
  meta.json   {package, version, class_names, class_counts, items: [{image, name, label}]}
  preview.png one row per class (up to 16 examples), for a visual check

Usage: python3 train/prepare_data.py   (from the repository root; needs python3-numpy, python3-pil)
"""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

PACKAGE = "emoji-datasource-google"
VERSION = "16.0.0"
HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
NPM_DIR = os.path.join(CACHE, "npm")
PKG_DIR = os.path.join(NPM_DIR, "node_modules", PACKAGE)
OUT_DIR = os.path.join(CACHE, "data")
SIZE = 32

SMILEY_FACES = [
    "face-smiling", "face-affection", "face-tongue", "face-hand", "face-neutral-skeptical",
    "face-sleepy", "face-unwell", "face-hat", "face-glasses", "face-concerned",
    "face-negative", "face-costume",
]
# Class name -> package subcategories. Order = class index.
CLASSES = [
    ("smiley", SMILEY_FACES),
    ("heart", ["heart"]),
    ("hand", ["hand-fingers-open", "hand-fingers-partial", "hand-single-finger",
              "hand-fingers-closed", "hands", "hand-prop"]),
    ("person", ["person", "person-gesture", "person-role", "person-fantasy",
                "person-activity", "person-sport", "person-resting"]),
    ("mammal", ["animal-mammal"]),
    ("bird", ["animal-bird"]),
    ("sea-animal", ["animal-marine"]),
    ("plant", ["plant-flower", "plant-other"]),
    ("fruit", ["food-fruit"]),
    ("vegetable", ["food-vegetable"]),
    ("food", ["food-prepared", "food-asian"]),
    ("sweet", ["food-sweet"]),
    ("drink", ["drink"]),
    ("vehicle", ["transport-ground", "transport-water", "transport-air"]),
    ("building", ["place-building", "place-religious"]),
    ("weather", ["sky & weather"]),
    ("clock", ["time"]),
    ("flag", ["country-flag", "flag", "subdivision-flag"]),
    ("ball", ["sport"]),
    ("clothing", ["clothing"]),
    ("sign", ["alphanum", "arrow", "av-symbol", "keycap", "zodiac"]),
    ("shape", ["geometric"]),
]
WITH_SKIN_TONES = {"hand", "person"}


def ensure_package():
    if os.path.exists(os.path.join(PKG_DIR, "emoji.json")):
        with open(os.path.join(PKG_DIR, "package.json")) as f:
            if json.load(f)["version"] == VERSION:
                return
    os.makedirs(NPM_DIR, exist_ok=True)
    cmd = ["npm", "install", "--no-save", "--no-package-lock", "--prefix", NPM_DIR,
           f"{PACKAGE}@{VERSION}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def load_32(path):
    rgba = Image.open(path).convert("RGBA")
    if rgba.size != (64, 64):
        raise ValueError(f"Cannot prepare {path}: expected 64x64, got {rgba.size}")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return np.asarray(rgb.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def main():
    ensure_package()
    with open(os.path.join(PKG_DIR, "emoji.json")) as f:
        emoji = json.load(f)
    emoji.sort(key=lambda e: e["sort_order"])
    sub_to_class = {}
    for ci, (_, subs) in enumerate(CLASSES):
        for s in subs:
            sub_to_class[s] = ci
    known = {e["subcategory"] for e in emoji}
    missing = [s for s in sub_to_class if s not in known]
    if missing:
        sys.exit(f"Cannot prepare data: subcategories {missing} are not in {PACKAGE}@{VERSION}")

    images, labels, items = [], [], []
    img_dir = os.path.join(PKG_DIR, "img", "google", "64")
    for e in emoji:
        ci = sub_to_class.get(e["subcategory"])
        if ci is None or not e["has_img_google"]:
            continue
        entries = [(e["image"], e["short_name"])]
        if CLASSES[ci][0] in WITH_SKIN_TONES:
            for key, v in sorted(e.get("skin_variations", {}).items()):
                if v["has_img_google"]:
                    entries.append((v["image"], f"{e['short_name']}:{key.lower()}"))
        for image, name in entries:
            images.append(load_32(os.path.join(img_dir, image)))
            labels.append(ci)
            items.append({"image": image, "name": name, "label": ci})

    images = np.stack(images)
    labels = np.asarray(labels, dtype=np.int64)
    names = [c for c, _ in CLASSES]
    counts = np.bincount(labels, minlength=len(names)).tolist()
    os.makedirs(OUT_DIR, exist_ok=True)
    np.save(os.path.join(OUT_DIR, "images.npy"), images)
    np.save(os.path.join(OUT_DIR, "labels.npy"), labels)
    meta = {"package": PACKAGE, "version": VERSION, "size": SIZE, "class_names": names,
            "class_counts": counts, "items": items}
    with open(os.path.join(OUT_DIR, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)

    cols = 16
    sheet = Image.new("RGB", (cols * SIZE, len(names) * SIZE), (255, 255, 255))
    for ci in range(len(names)):
        idx = np.nonzero(labels == ci)[0]
        pick = idx[np.linspace(0, len(idx) - 1, min(cols, len(idx))).astype(int)]
        for j, k in enumerate(pick):
            sheet.paste(Image.fromarray(images[k]), (j * SIZE, ci * SIZE))
    sheet.save(os.path.join(OUT_DIR, "preview.png"))

    print(f"{len(labels)} images, {len(names)} classes -> {OUT_DIR}")
    for n, c in zip(names, counts):
        print(f"  {n:12s} {c:5d}")


if __name__ == "__main__":
    main()
