"""Re-key a VQ / KL tokenizer folder saved before vargen's tokenizers moved onto diffusers' blocks.

Until commit bdf7671 ``VQTokenizer`` and ``KLTokenizer`` kept the official key trees (LlamaGen's and
LDM's); now their keys are diffusers' (``encoder.down_blocks.*``, ...). This reads a
``save_pretrained`` folder, renames the weights with the official converters (which leave keys that
are already diffusers' unchanged, so re-keying twice is harmless), loads them strictly and writes a
folder again. The shipped ``weights/vq-mnist`` and ``weights/kl-mnist`` were made this way::

    python demos/rekey_tokenizer.py runs/vq-mnist/final weights/vq-mnist
    python demos/rekey_tokenizer.py runs/kl-mnist/final weights/kl-mnist

SRC and OUT may be the same folder (files are replaced atomically; a model card is kept).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vargen.hub import CONFIG_NAME, WEIGHTS_NAME, load_safetensors, load_state_dict_strict, read_config
from vargen.tokenizers import KLTokenizer, VQTokenizer, convert_llamagen_vq, convert_mar_kl16

CONVERTERS = {VQTokenizer: convert_llamagen_vq, KLTokenizer: convert_mar_kl16}


def rekey(src: Path, out: Path) -> None:
    saved = json.loads((src / CONFIG_NAME).read_text()).get("_class_name")
    cls = next((c for c in CONVERTERS if c.__name__ == saved), None)
    if cls is None:
        raise SystemExit(f"{src / CONFIG_NAME} holds a {saved}; expected one of "
                         f"{[c.__name__ for c in CONVERTERS]}")
    model = cls(read_config(cls, src / CONFIG_NAME))
    state = CONVERTERS[cls](load_safetensors(src / WEIGHTS_NAME))
    load_state_dict_strict(model, state, source=src / WEIGHTS_NAME)
    model.save_pretrained(out)
    print(f"{src} -> {out / WEIGHTS_NAME} ({len(state)} tensors, {cls.__name__})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="save_pretrained folder with the old key names")
    parser.add_argument("out", type=Path, help="folder to write (may equal src)")
    args = parser.parse_args()
    rekey(args.src, args.out)


if __name__ == "__main__":
    main()
