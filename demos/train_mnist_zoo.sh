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

common="--data mnist --steps 2000 --batch-size 64 --lr 5e-4 --ema-decay 0.999 --warmup-steps 100 \
    --schedule cosine --min-lr 5e-5 --ckpt-every 250 --log-every 50"
vargen train --model llamagen-mnist --tokenizer weights/vq-mnist $common --out runs/llamagen-mnist &
vargen train --model nar-mnist --tokenizer weights/vq-mnist $common --out runs/nar-mnist &
# xAR: 3000 steps at lr 1e-3 (no dropout in the xar-mnist config; see models/mnist.py).
vargen train --model xar-mnist --tokenizer weights/kl-mnist $common --steps 3000 --lr 1e-3 \
    --warmup-steps 200 --ckpt-every 500 --out runs/xar-mnist &
wait
for m in llamagen nar xar; do cp -r runs/$m-mnist/final weights/$m-mnist; done
sha256sum weights/*/model.safetensors   # -> SHIPPED_SHA256 in models/mnist.py
python demos/evaluate_mnist_zoo.py --num-samples 1000 --json runs/zoo-eval.json
