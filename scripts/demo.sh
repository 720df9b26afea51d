#!/usr/bin/env bash
# A first look without downloads: a small random model, a tokenizer trained on a few
# captions, and embeddings of a generated image and two texts.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${DEMO_OUT:-demo-out}
mkdir -p "$out"
tipsv2=.venv/bin/tipsv2

.venv/bin/python - "$out" <<'PY'
import sys
import numpy as np
from PIL import Image, ImageDraw

out = sys.argv[1]
img = Image.new("RGB", (320, 240), (235, 235, 220))
draw = ImageDraw.Draw(img)
draw.ellipse((40, 60, 150, 170), fill=(220, 30, 30))
draw.rectangle((190, 80, 290, 180), fill=(30, 60, 220))
img.save(f"{out}/shapes.png")
colours = ["red", "green", "blue", "yellow", "purple"]
shapes = ["circle", "square", "triangle", "star"]
with open(f"{out}/captions.txt", "w") as f:
    for c in colours:
        for s in shapes:
            f.write(f"a {c} {s} on a plain background\nA photo of a small {c} {s}.\n")
PY

$tipsv2 model init --variant nano14 --out "$out/nano14" --force  # the demo owns $out
$tipsv2 tokenizer train --corpus "$out/captions.txt" --out "$out/tokenizer.model" --vocab-size 64
$tipsv2 embed image --checkpoint "$out/nano14" --image-size 224 --patch-tokens "$out/shapes.png" --output "$out/image.npz"
$tipsv2 embed text --checkpoint "$out/nano14" --tokenizer "$out/tokenizer.model" \
  "a red circle" "a blue square" --output "$out/text.json"
$tipsv2 convert "$out/nano14" "$out/official/tips_v2_nano14" --force
echo "demo: outputs in $out/"
