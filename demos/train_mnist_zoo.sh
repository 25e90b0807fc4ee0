#!/usr/bin/env bash
# The exact commands that trained the models shipped in weights/ (2-core CPU, ~1.5 hours in all).
# Each run is resumable: rerun the same command after an interruption. Tokenizers first: the
# generators train on tokens / latents the shipped tokenizers extract (cached once).
set -euo pipefail
export OMP_NUM_THREADS=1

vargen train --model vq-mnist --data mnist --steps 750 --batch-size 32 --lr 1e-3 --ema-decay 0.998 \
    --warmup-steps 50 --ckpt-every 250 --out runs/vq-mnist &
vargen train --model kl-mnist --data mnist --steps 750 --batch-size 32 --lr 1e-3 --ema-decay 0.998 \
    --warmup-steps 50 --ckpt-every 250 --out runs/kl-mnist &
wait
mkdir -p weights
cp -r runs/vq-mnist/final weights/vq-mnist
cp -r runs/kl-mnist/final weights/kl-mnist
# KL latents are scaled to unit std (MAR's convention); the factor does not enter the VAE's loss.
python - <<'PY'
import json, torch
from vargen.tokenizers import KLTokenizer
from vargen.data import MNISTDigits
kl = KLTokenizer.from_pretrained("weights/kl-mnist").eval()
with torch.no_grad():
    std = torch.cat([kl.encode(x) for x in MNISTDigits("train").images[:2000].split(500)]).std().item()
config = json.load(open("weights/kl-mnist/config.json"))
config["scale_factor"] = round(1 / std, 3)
json.dump(config, open("weights/kl-mnist/config.json", "w"), indent=2, sort_keys=True)
print("kl-mnist scale_factor", config["scale_factor"])
PY
# The shipped vq-mnist / kl-mnist were trained by the commands above at commit bdf7671, when the
# tokenizers still used the official key names, then re-keyed to diffusers' blocks (same ids and
# latents: tests/test_rekeyed_shipped.py). On a folder trained since, re-keying changes nothing; a
# run at a later commit starts from another random init, so its tokenizers (and the generators
# trained on their tokens below) differ from the shipped ones.
python demos/rekey_tokenizer.py weights/vq-mnist weights/vq-mnist
python demos/rekey_tokenizer.py weights/kl-mnist weights/kl-mnist
# MingTok (needs the shipped digit-classifier as its frozen feature target; trains through
# MingTok.training_loss, which the training package calls). Latent normalisation constants from
# the train split afterwards, as the release's mean / scaling_factor.
vargen train --model mingtok-mnist --data mnist --steps 1800 --batch-size 32 --lr 1e-3 --ema-decay 0.998 \
    --warmup-steps 100 --ckpt-every 100 --out runs/mingtok-mnist
python - <<'PY'
from vargen.tokenizers import MingTok
from vargen.data import MNISTDigits
tok = MingTok.from_pretrained("runs/mingtok-mnist/final").eval()
print("mingtok-mnist latent mean, scale", tok.fit_latent_normalization(MNISTDigits("train").images, decimals=5))
tok.save_pretrained("weights/mingtok-mnist")
PY
cp runs/mingtok-mnist/final/README.md weights/mingtok-mnist/README.md

common="--data mnist --steps 2000 --batch-size 64 --lr 5e-4 --ema-decay 0.999 --warmup-steps 100 \
    --schedule cosine --min-lr 5e-5 --ckpt-every 250 --log-every 50"
vargen train --model llamagen-mnist --tokenizer weights/vq-mnist $common --out runs/llamagen-mnist &
vargen train --model nar-mnist --tokenizer weights/vq-mnist $common --out runs/nar-mnist &
# xAR: 3000 steps at lr 1e-3 (no dropout in the xar-mnist config; see its registration in models/xar.py).
vargen train --model xar-mnist --tokenizer weights/kl-mnist $common --steps 3000 --lr 1e-3 \
    --warmup-steps 200 --ckpt-every 500 --out runs/xar-mnist &
wait
for m in llamagen nar xar; do cp -r runs/$m-mnist/final weights/$m-mnist; done
# The video tokenizer: Moving-MNIST clips (16 x 32 x 32) -> 4 x 8 x 8 ids (26 min on one core).
vargen train --model video-vq-mnist --data moving-mnist --steps 3000 --batch-size 16 --lr 1e-3 \
    --warmup-steps 50 --ckpt-every 100 --out runs/video-vq-mnist
cp -r runs/video-vq-mnist/final weights/video-vq-mnist
# The video generators on its ids of moving-mnist-4x (16000 clips: four motions per training
# digit): NAR video decoding frame by frame (shipped as nar-video-mnist), NAR video in the paper's
# planes (nar-video-mnist-diagonal) and their raster baseline, same six-block trunk and recipe
# (LARP_AR's lr 6e-4, cosine; EMA 0.999 added as for the image models); 2600 steps, one core each
# (60.0, 60.5 and 50.1 min; the raster run started first, the three shared the 2 cores part of
# the time). docs/video.md: the ablations behind these choices (demos/ablate_video.py).
video="--data moving-mnist-4x --tokenizer video-vq-mnist --steps 2600 --batch-size 32 --ema-decay 0.999 \
    --warmup-steps 100 --ckpt-every 100 --keep-every 600 --log-every 50"
vargen train --model nar-video-mnist --override decode_order=frame $video --out runs/nar-video-mnist &
vargen train --model nar-video-mnist $video --out runs/nar-video-mnist-diagonal &
vargen train --model raster-video-mnist $video --out runs/raster-video-mnist &
wait
for m in nar-video-mnist nar-video-mnist-diagonal raster-video-mnist; do cp -r runs/$m/final weights/$m; done
# Continuous-token AR (Ming-UniVision-style), constant lr: on kl-mnist latents (Linear input) and
# on mingtok-mnist latents (through MingTok's frozen causal semantic decoder).
cont="--data mnist --steps 1500 --batch-size 32 --lr 1e-3 --ema-decay 0.999 --warmup-steps 100 \
    --ckpt-every 100 --log-every 20"
vargen train --model cont-ar-mnist --tokenizer weights/kl-mnist $cont --out runs/cont-ar-mnist &
vargen train --model cont-ar-mingtok-mnist --tokenizer mingtok-mnist $cont --out runs/cont-ar-mingtok-mnist &
wait
for m in cont-ar cont-ar-mingtok; do cp -r runs/$m-mnist/final weights/$m-mnist; done
# RAR on vq-mnist ids (models/rar.py: rar-mnist, random orders annealed to raster over steps
# 1000 -> 1500, rar.yaml's 50% -> 75%), llamagen-mnist's steps, schedule and EMA 0.999 so the two
# differ only in the model and its order schedule (rar.yaml has no EMA); stored in fp16.
vargen train --model rar-mnist --tokenizer weights/vq-mnist --data mnist --steps 2000 --batch-size 64 \
    --lr 5e-4 --ema-decay 0.999 --warmup-steps 50 --schedule cosine --min-lr 5e-5 --ckpt-every 100 --log-every 50 --out runs/rar-mnist
python - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
Path("weights/rar-mnist").mkdir(parents=True, exist_ok=True)
state = load_file("runs/rar-mnist/final/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, "weights/rar-mnist/model.safetensors")
shutil.copy("runs/rar-mnist/final/config.json", "weights/rar-mnist/config.json")
shutil.copy("runs/rar-mnist/final/README.md", "weights/rar-mnist/README.md")  # + the measured section
PY
# MAR on kl-mnist latents (models/mar.py: mar-mnist, 64 tokens, DiffLoss head repeated 4x per token,
# training mask ratios N(1, 0.5) on [0, 1] from the registered config).
vargen train --model mar-mnist --tokenizer weights/kl-mnist --data mnist --steps 3000 --batch-size 64 \
    --lr 1e-3 --ema-decay 0.999 --warmup-steps 200 --schedule cosine --min-lr 5e-5 --ckpt-every 250 \
    --log-every 50 --out runs/mar-mnist
cp -r runs/mar-mnist/final weights/mar-mnist
# VAR: the multi-scale VQVAE (scales 1,2,3,4,6,8 of an 8x8 map, cosine lookup; tokenizers/var_vqvae.py),
# then the next-scale transformer on its ids (models/var.py: var-mnist, cosine lr); the transformer is
# stored in fp16. The VQVAE's constant lr makes a run stopped at a checkpoint and resumed with more
# --steps the same as one run with that many steps (the shipped one: 700, then resumed to 1500, 2500).
vargen train --model var-vqvae-mnist --data mnist --steps 2500 --batch-size 32 --lr 1e-3 --ema-decay 0.998 \
    --warmup-steps 50 --ckpt-every 100 --log-every 25 --out runs/var-vqvae-mnist
cp -r runs/var-vqvae-mnist/final weights/var-vqvae-mnist
vargen train --model var-mnist --data mnist --tokenizer weights/var-vqvae-mnist --steps 2000 --batch-size 64 \
    --lr 5e-4 --ema-decay 0.998 --warmup-steps 50 --schedule cosine --min-lr 5e-5 --ckpt-every 100 --log-every 25 --out runs/var-mnist
python - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
Path("weights/var-mnist").mkdir(parents=True, exist_ok=True)
state = load_file("runs/var-mnist/final/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, "weights/var-mnist/model.safetensors")
for f in ("config.json", "README.md"):
    shutil.copy(f"runs/var-mnist/final/{f}", f"weights/var-mnist/{f}")
PY
sha256sum weights/*/model.safetensors   # -> the sha256 of each Weights.shipped(...) registration
python demos/evaluate_mnist_zoo.py --num-samples 1000 --json runs/zoo-eval.json
OMP_NUM_THREADS=2 python demos/evaluate_video_zoo.py --num-clips 256 --json runs/video-eval.json \
    --gif docs/video_nar_vs_raster.gif
# Text-to-image digits (docs/t2i.md): a frozen random byte-level T5 (seed 0), then llamagen-mnist's
# trunk on vq-mnist ids conditioned on its features of template captions ("a handwritten seven",
# "the number 7", ...; two templates held out of training); evaluated on seen vs held-out templates.
python demos/make_t2i_mnist_t5.py weights/t2i-mnist-t5
vargen train --model t2i-mnist --tokenizer weights/vq-mnist --captions mnist-templates --text-encoder t2i-mnist-t5 \
    $common --out runs/t2i-mnist
cp -r runs/t2i-mnist/final weights/t2i-mnist
sha256sum weights/t2i-mnist/model.safetensors   # -> Weights.shipped("t2i-mnist", ...) in models/llamagen.py
python demos/evaluate_t2i_mnist.py --num-samples 1000 --json runs/t2i-eval.json
