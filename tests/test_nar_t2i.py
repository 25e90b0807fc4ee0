"""NAR text-to-image (issue 28): the released NAR-XL-t2i key tree converted strictly (the null
caption ``uncond_embedding`` carried over), the proximity mask with caption padding as the fixed
official code builds it (NAR issue #2), cached diagonal decoding equal to the teacher-forced
masked forward with and without CFG on the null caption, seeds independent of the batch, 2n - 1
passes, and prompts through the pipeline with a tiny T5 built here."""
import json
from pathlib import Path

import pytest
import torch

import vargen
from vargen.hub import WeightsError, load_state_dict_strict
from vargen.models.nar import NAR
from vargen.pipeline import Pipeline
from vargen.registry import create_model, get_pipeline_spec
from vargen.samplers import NeighborSampler
from vargen.samplers.guidance import cfg_labels
from vargen.seeding import SampleRNG

from helpers import count_network_passes, randomised
from test_nar import llama_block_keys
from test_t2i import tiny_text_encoder

TOY = "nar-t2i-tiny"  # 120 caption tokens of width 16, 4x4 codes out of 64
FIXTURES = Path(__file__).parent / "fixtures"


def official_nar_t2i_keys(dim: int, n_layer: int, hidden: int, vocab: int, caption_dim: int) -> dict:
    """Hand-written from the official NAR ``gpt.py`` built with ``model_type='t2i'``: the
    ``CaptionEmbedder`` (bias-free ``cap_proj`` MLP caption_dim -> dim -> dim; the buffer
    ``uncond_embedding [token_num=120, caption_dim]``), ``tok_embeddings``, ``n_layer +
    medusa_attention_num (1)`` blocks, ``norm``/``output`` and ``medusa_norm``/``medusa_output``.
    No ``freqs_cis`` (a plain attribute there), no proximity mask (a plain attribute too)."""
    keys = {"cls_embedding.cap_proj.fc1.weight": (dim, caption_dim),
            "cls_embedding.cap_proj.fc2.weight": (dim, dim),
            "cls_embedding.uncond_embedding": (120, caption_dim),
            "tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,), "output.weight": (vocab, dim),
            "medusa_norm.weight": (dim,), "medusa_output.weight": (vocab, dim)}
    for i in range(n_layer + 1):
        keys.update(llama_block_keys(i, dim, hidden))
    return keys


def captions(batch: int, seed: int = 0) -> torch.Tensor:
    """Random caption features ``[batch, 120, 16]``: left padded, right padded, unpadded, ..."""
    feats = torch.randn(batch, 120, 16, generator=torch.Generator().manual_seed(seed))
    feats[0, :100] = 0
    if batch > 1:
        feats[1, 30:] = 0
    return feats


# ----------------------------------------------------------------------------- weights
def test_released_nar_t2i_xl_key_tree_converts_strictly():
    # GPT-XL: SwiGLU hidden int(2 * 4 * 1280 / 3) = 3413 -> multiple of 256 = 3584
    official = official_nar_t2i_keys(dim=1280, n_layer=36, hidden=3584, vocab=16384, caption_dim=2048)
    # ... which is LlamaGen's recorded t2i-XL tree plus NAR's extra block and below head
    llamagen = json.loads((FIXTURES / "llamagen_t2i_keys.json").read_text())["t2i_XL_stage1_256"]
    shared = {k: tuple(s) for k, s in official.items() if k in llamagen}
    assert shared == {k: tuple(s) for k, s in llamagen.items()}
    extra = set(official) - set(shared)
    assert sorted(extra) == sorted(["medusa_norm.weight", "medusa_output.weight",
                                    *llama_block_keys(36, 1280, 3584)])
    with torch.device("meta"):
        model = vargen.create_model("nar-t2i-xl")
    state = {k: torch.empty(s, device="meta") for k, s in official.items()}
    converted = vargen.get_entry("nar-t2i-xl").weights.converter({**state, "freqs_cis": torch.empty(1144, 32, 2)})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours  # every key, uncond_embedding too


def test_tiny_checkpoint_loads_strictly_with_its_null_caption(tmp_path):
    keys = official_nar_t2i_keys(dim=64, n_layer=2, hidden=192, vocab=64, caption_dim=16)
    state = {k: torch.randn(s) for k, s in keys.items()}
    torch.save({"model": state}, tmp_path / "last_version.pt")
    model = create_model(TOY, pretrained=str(tmp_path / "last_version.pt"))
    assert isinstance(model, NAR) and model.is_text_conditioned
    loaded = model.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert torch.equal(model.null_class, state["cls_embedding.uncond_embedding"])  # converted, not re-drawn
    missing = {k: v for k, v in state.items() if k != "cls_embedding.uncond_embedding"}
    with pytest.raises(WeightsError, match="uncond_embedding"):
        load_state_dict_strict(create_model(TOY), missing)


def test_a_llamagen_t2i_checkpoint_is_refused_naming_the_below_head(tmp_path):
    # NAR's README links LlamaGen's own t2i_XL_stage1_256.pt as "NAR-XL stage 1".
    torch.save({"model": create_model("llamagen-t2i-tiny").state_dict()}, tmp_path / "t2i.pt")
    with pytest.raises(WeightsError, match=r"medusa_norm\.weight.*medusa_output\.weight.*layers\.2\."):
        create_model(TOY, pretrained=str(tmp_path / "t2i.pt"))


# ----------------------------------------------------------------------------- the mask
def official_t2i_mask(grid: int, keep: torch.Tensor) -> torch.Tensor:
    """The fixed official mask, rebuilt from its description: causal over ``L + N``, the image
    block replaced by the proximity mask (diagonal c sees diagonals 0..c), the caption padding
    keys zeroed for every query, then the identity set (``setup_caches`` + ``generate``)."""
    L, n = keep.shape[1], keep.shape[1] + grid * grid
    mask = torch.ones(n, n).tril()
    block = torch.zeros(grid * grid, grid * grid)
    for a in range(grid * grid):
        for b in range(grid * grid):
            block[a, b] = float(b // grid + b % grid <= a // grid + a % grid)
    mask[L:, L:] = block
    mask = mask[None].repeat(keep.shape[0], 1, 1)
    mask[:, :, :L] *= keep[:, None, :].float()
    mask = torch.maximum(mask, torch.eye(n))
    return mask.bool()[:, None]


def test_training_mask_is_the_fixed_official_proximity_mask_with_caption_padding():
    model = create_model(TOY)
    feats = captions(3)
    with model.caption_rows(feats):
        mask = model.padding_mask(model.attention_mask(), 120 + 16)
    assert torch.equal(mask, official_t2i_mask(4, feats.ne(0).any(-1)))
    assert model._keep is None  # only for that forward
    assert torch.equal(model.padding_mask(model.attention_mask(), 136), model.attention_mask())  # unpadded: as is


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_cached_diagonal_decoding_equals_the_teacher_forced_masked_forward(cfg_scale):
    model = randomised(TOY)
    feats = captions(3)
    tokens = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    null = cfg_labels(feats, model.null_class)[3:]  # the null caption, each caption's padding kept
    assert torch.equal(null[2], model.cls_embedding.uncond_embedding) and not null[0, :100].any()
    with torch.no_grad():
        cond, uncond = model(tokens, feats), model(tokens, null)  # one masked forward each
    expected = uncond + cfg_scale * (cond - uncond)
    got = NeighborSampler(cfg_scale=cfg_scale).teacher_forced_logits(model, tokens, feats)
    assert (got - expected).abs().max() <= 1e-5
    assert model._keep is None  # cleared with the cache


@pytest.mark.parametrize("grid", [4, 5])
def test_decoding_takes_2n_minus_1_passes(grid):
    model = randomised(TOY, grid_size=grid)
    calls = count_network_passes(model)
    sampler = NeighborSampler(cfg_scale=7.5)
    tokens = sampler(model, captions(2), SampleRNG(0, 2))
    assert tokens.shape == (2, grid, grid)
    assert len(calls) == sampler.stats["forward_passes"] == 2 * grid - 1


def test_same_seed_and_caption_same_tokens_alone_or_in_a_batch_of_4():
    model = randomised(TOY)
    sampler = NeighborSampler(cfg_scale=7.5, top_k=20, temperature=1.3)
    feats = captions(4)
    batch = sampler(model, feats, SampleRNG(7, [10, 11, 12, 13]))
    for row in range(4):
        assert torch.equal(batch[row:row + 1], sampler(model, feats[row:row + 1], SampleRNG(7, [10 + row])))
    assert not torch.equal(batch, sampler(model, feats, SampleRNG(8, [10, 11, 12, 13])))
    with pytest.raises(TypeError, match="caption features"):  # class ids to a text model
        sampler(model, torch.tensor([1]), SampleRNG(0, 1))


def test_captions_train_the_text_model():
    model = randomised(TOY).train()
    loss, _ = model.training_loss(torch.randint(0, 64, (2, 16)), captions(2))
    loss.backward()
    assert torch.isfinite(loss) and model.cls_embedding.cap_proj.fc1.weight.grad.any()


# ----------------------------------------------------------------------------- pipeline
def test_pipeline_generates_from_prompts(tmp_path):
    pipe = Pipeline(vargen.create_model("llamagen-vq-tiny"), randomised(TOY), "neighbor",
                    dict(cfg_scale=7.5), "nar-t2i-test", text_encoder=tiny_text_encoder(tmp_path))
    prompts = ["a red bicycle", "the number seven", "a cat", "two dogs"]
    batch = pipe(prompt=prompts, seed=0, output_type="latent").images
    alone = pipe("the number seven", seed=0, sample_offset=1, output_type="latent").images
    assert batch.shape == (4, 4, 4) and torch.equal(alone[0], batch[1])
    images = pipe(prompts[:2], seed=0, output_type="pt").images
    assert images.shape == (2, 3, 32, 32)
    negative = pipe(prompt=prompts, negative_prompt="blurry", seed=0, output_type="latent").images
    assert not torch.equal(negative, batch) and pipe.transformer.negative_condition is None


def test_registered_defaults_are_the_releases():
    spec = get_pipeline_spec("nar-t2i-xl")
    assert (spec.tokenizer, spec.text_encoder) == ("llamagen-vq16-t2i", "google/flan-t5-xl")
    assert spec.sampler == "neighbor"
    assert spec.sampler_options == dict(cfg_scale=7.5, top_k=0, top_p=1.0, temperature=1.0)  # sample_t2i.py
    c = vargen.model_config("nar-t2i-xl")
    assert (c.model_type, c.cls_token_num, c.caption_dim) == ("t2i", 120, 2048)
    assert (c.grid_size, c.n_layer, c.n_head, c.dim) == (32, 36, 20, 1280)  # 512 px / 16; GPT-XL
    assert vargen.get_entry("nar-t2i-xl").weights.location == "yefly/NAR-XL-t2i-stage2/last_version.pt"
