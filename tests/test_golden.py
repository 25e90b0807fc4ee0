"""Golden outputs recorded before the contracts refactor (issue 11): a refactor of samplers,
trunk, training or registry must not change a single token, latent, initial weight or trained
weight. Each value is a sha256 over the exact bytes; the tables were written by running this
module's helpers on the code of commit bdf7671 (they do not depend on the thread count)."""
from __future__ import annotations

import hashlib

import pytest
import torch

import vargen
from vargen.data import cache
from vargen.samplers import create_sampler
from vargen.seeding import SampleRNG


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def state_digest(state: dict) -> str:
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(f"{k}:{tuple(v.shape)}:{v.dtype}".encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


# Tokens (ids or latents) of every shipped pipeline's default sampler, classes 0-9, seed 0.
PIPELINES = {
    "llamagen-mnist": "1904f78550ef6ab8e6c9e359e635905ae0c02680fa8371310e4adfea2a1868d4",
    "nar-mnist": "da8b85bcedd58728a997b6b5dd481134122c3fe63c7f0ea57c0d46dda0e0b2b7",
    "xar-mnist": "5f4832e7c715271255f420d6c4f534620e40e76f1ea73fe11f9c239b75e4c12e",
}
# The other samplers on a shipped pipeline (its default logits settings).
PIPELINE_SAMPLERS = {
    ("llamagen-mnist", "sjd"): "6f087202573eb91fb763c554d8306e2df873c401316438ad40fab5e7acd936a8",
    ("llamagen-mnist", "gsd"): "210ad3e00b5b54870cc824784b17e57dd930a1cbba1364460c27454f2c2e0d07",
}
# State dicts built under torch.manual_seed(0): initialisation order and key names.
# The VQ/KL tokenizer rows changed once, on purpose: their conv stacks moved onto diffusers' blocks
# (other key names and init order; issue 16). The shipped vq-mnist / kl-mnist files were re-keyed
# and give the same ids / latents (tests/test_rekeyed_shipped.py); every other row is unchanged.
INIT = {
    "digit-classifier-tiny": "94f9785619991a12e24cc9a1c70e314978aaecf39acfa37fd897aad7c03130a9",
    "llamagen-tiny": "89c3515ee4e95a9047b3f28278de8dba2eee5ee2758f41d12b249c1f84f0eed5",
    "llamagen-vq-tiny": "76f852fdaf7456c2affc10a48587281e159cf9528e2186174a1c735896599929",
    "mar-kl-tiny": "c07033787ff2e85c9f8acaeedb0f1bcea28ac96249bda62132f13924761d3a81",
    "nar-tiny": "926e4fb86ac901f6898ee55f7cd585229e8410acf2312ff84a508da85686c0d9",
    "nar-video-tiny": "3bd5597d49dca2e10becfb52cd7ce1fc9705fe204fe69d3864e600e326078b96",
    "xar-tiny": "56ac6c393d59e42a10d87f799d5074576242c3732e36666010f2a7513ac7e1b8",
    "kl-mnist": "4f7356c3558907957c28923c1ca76482d4ac50b173bebe4551898d3458f12627",
    "llamagen-mnist": "ecd930b1265ec9e907ee538dfbf56b44ebf6b8c1a0d15cd3a2c3790c60926295",
    "nar-mnist": "823947f06ec324de000ee2b8fda5ff77d482aebff0b11e9d3a2184d228b46670",
    "vq-mnist": "d035b85f8a44f4e465bafe5ed6053b94c0c430be10105803c85b3fb7257323b2",
    "xar-mnist": "c552bb26058aabd81ef49d3ea32ef7d58022695db0ab6fc9a44ffbb67e88d2f9",
}
# Tiny models with perturbed weights (so the zero-initialised heads do not make every logit
# equal) under CFG and filtering: the exact guidance arithmetic of each sampler.
SAMPLERS = [
    ("llamagen-tiny", "raster", dict(cfg_scale=2.0, top_k=20),
     "8ddecfd1b79734bcbf8cfc7f8c9fe6162e4f6fc3a4bed96e2be731b43de67d33"),
    ("llamagen-tiny", "sjd", dict(cfg_scale=2.0, cfg_schedule="linear", window=4),
     "5a0147d933a30ad9abc6a5f1b9512b8803d47b5a27368bb3d38d2c36906c6d0a"),
    ("llamagen-tiny", "gsd", dict(cfg_scale=1.5, window=4, init="copy-left"),
     "e267968e9671d580c20a36a9354b3808b1e788675b10dc63efc560ef50df36ca"),
    ("nar-tiny", "neighbor", dict(cfg_scale=2.0, top_p=0.9),
     "fe93a1acb1843215b23bd6f752ae757b89b656f1594cf9d6188ced8490d0257d"),
    ("nar-video-tiny", "neighbor", dict(cfg_scale=3.0, cfg_schedule="linear"),
     "6cb4eddd442d5e11c0a269e20aa0eb9c52428a33a8509b6fb6a94d37f986e564"),
    ("xar-tiny", "flow", dict(cfg_scale=2.0, num_steps=4),
     "4bc416f6bfbaa5ab917f4345b96e104b0098a19f2bee466496ab75d4809ee38c"),
    ("xar-tiny", "flow", dict(cfg_scale=1.5, num_steps=3, method="heun", cfg_schedule="constant"),
     "3477dcd60aae178daf2cfd03ea0ea012a167669527aba62e96b6185e45f414ed"),
]
# Weights exported by 3 training steps of `vargen train` (EMA on, class dropout on, seed 0):
# generators on a fixed token file, tokenizers and the classifier on MNIST's heldout digits.
TRAINED = {
    "digit-classifier-tiny": "22902036288ad17e6e190912ea24fc43e1729b05b39d3628c61ea8e26f39b9ac",
    "llamagen-tiny": "662ae91c8844aefcd2924e1b0c4a6a233c1f7340fb202a5e18605b5a3c6fa57a",
    "llamagen-vq-tiny": "553a4dbf0fb6b13a4eab8f48b91e793156ec120000dcbc55e2b3e3c4835d8642",
    "mar-kl-tiny": "b3b4b5fba15a3d043e207b5319587081a482bfa91a01b2e0f8c2265323adae96",
    "nar-tiny": "d636b8e2deeee3dd8b531c466cb91806c2471b95148bb31766f6ef343c9c6ff4",
    "nar-video-tiny": "697ebf9061b6bf1f53eacd62747226a668603b8789428cf76fe3b09bfc8c39b8",
    "xar-tiny": "aa1467f0341189098de51e334c9984a11b6c38042751d8b7f13665e998f099d0",
}


def perturbed(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = vargen.create_model(name).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_shipped_pipeline_tokens(name):
    pipe = vargen.load_pipeline(name)
    with torch.no_grad():
        tokens = pipe.make_sampler()(pipe.transformer, torch.arange(10), SampleRNG(0, range(10)))
    assert digest(tokens) == PIPELINES[name]


@pytest.mark.parametrize("name,sampler", sorted(PIPELINE_SAMPLERS))
def test_shipped_pipeline_tokens_other_samplers(name, sampler):
    pipe = vargen.load_pipeline(name)
    with torch.no_grad():
        tokens = pipe.make_sampler(sampler)(pipe.transformer, torch.arange(10), SampleRNG(0, range(10)))
    assert digest(tokens) == PIPELINE_SAMPLERS[name, sampler]


@pytest.mark.parametrize("name", sorted(INIT))
def test_initial_state_dict(name):
    torch.manual_seed(0)
    assert state_digest(vargen.create_model(name).state_dict()) == INIT[name]


@pytest.mark.parametrize("name,sampler,options,expected", SAMPLERS,
                         ids=[f"{n}-{s}-{i}" for i, (n, s, _, _) in enumerate(SAMPLERS)])
def test_sampler_tokens_under_guidance(name, sampler, options, expected):
    model = perturbed(name)
    with torch.no_grad():
        out = create_sampler(sampler, **options)(model, torch.arange(4), SampleRNG(0, range(4)))
    assert digest(out) == expected


def train_tiny(name: str, out, tokens_file) -> dict:
    from safetensors.torch import load_file
    from vargen.training import TrainConfig, train
    kind = vargen.get_entry(name).kind
    data = str(tokens_file(name)) if kind == "generator" else "mnist"
    # Every optimiser option explicit (the recipes in force when the table was written; the old
    # "llamagen*" glob gave llamagen-vq-tiny the generator's weight decay), so the table pins the
    # training arithmetic, not the recipes.
    wd, betas = {"xar-tiny": (0.02, (0.9, 0.96)), "mar-kl-tiny": (0.0, (0.9, 0.95))}.get(
        name, (0.05, (0.9, 0.95)))
    train(TrainConfig(model=name, out=str(out), data=data, split="heldout", steps=3, batch_size=4,
                      lr=1e-3, weight_decay=wd, betas=betas, grad_clip=1.0, ema_decay=0.9,
                      schedule="constant", ckpt_every=2, log_every=1, progress=False))
    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    """A token file of 16 random grids (ids or latents) shaped for a tiny generator."""
    def make(name: str):
        model = vargen.create_model(name)
        g = torch.Generator().manual_seed(0)
        shape = (16, *model.token_shape)
        tokens = (torch.randint(0, model.vocab_size, shape, generator=g) if model.is_discrete
                  else torch.randn(shape, generator=g))
        path = tmp_path_factory.mktemp("tokens") / f"{name}.safetensors"
        cache.save_token_file(path, tokens, torch.randint(0, model.num_classes, (16,), generator=g))
        return path
    return make


@pytest.fixture
def two_threads():
    """The table was recorded with 2 intra-op threads. A conv's weight gradient (the classifier's)
    is summed in per-thread chunks, so its float rounding, and so the exact bytes, depend on the
    thread count; the arithmetic is pinned to the recorded split, whatever the machine's count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("name", sorted(TRAINED))
def test_trained_weights(name, tmp_path, tokens_file, two_threads):
    assert state_digest(train_tiny(name, tmp_path, tokens_file)) == TRAINED[name]
