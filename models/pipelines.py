"""Named pipelines: which tokenizer, generator and default sampler settings go together.

Official ImageNet-256 pipelines use the sampling settings of each paper's FID runs (LlamaGen
README: cfg 2.0 for B/L, 1.75 XL/XXL, 1.65 3B; NAR: cfg 2.0; xAR: 40 SDE steps, cfg 2.7 for B).
``mar-kl16`` has no Hub weights (MAR ships ``kl16.ckpt`` on Dropbox), so ``xar-*`` pipelines need
``load_pipeline("xar-b", tokenizer_weights="kl16.ckpt")``.
"""
from vargen.registry import register_pipeline

for _size, _cfg in (("b", 2.0), ("l", 2.0), ("xl", 1.75), ("xxl", 1.75), ("3b", 1.65)):
    _vq = "llamagen-vq16"
    register_pipeline(f"llamagen-{_size}", tokenizer=_vq, generator=f"llamagen-{_size}",
                      sampler="raster", cfg_scale=_cfg)
for _size in ("b", "m", "l", "xl", "xxl"):
    register_pipeline(f"nar-{_size}", tokenizer="llamagen-vq16", generator=f"nar-{_size}",
                      sampler="neighbor", cfg_scale=2.0)
for _size, _cfg, _steps in (("b", 2.7, 40), ("l", 2.3, 50), ("h", 2.2, 50)):
    register_pipeline(f"xar-{_size}", tokenizer="mar-kl16", generator=f"xar-{_size}",
                      sampler="flow", cfg_scale=_cfg, num_steps=_steps)
# NAR video (UCF-101, NAR Table 2): LARP's 1024 tokens in NAR's 4x16x16 order, T+H+W-2 = 34
# passes, cfg 1.25 (paper and the NAR-videos README; top-k/top-p off, temperature 1). No NAR video
# checkpoint is published: load_pipeline("nar-video-l", generator_weights=...).
for _size in ("l", "lp"):
    register_pipeline(f"nar-video-{_size}", tokenizer="larp-l-long", generator=f"nar-video-{_size}",
                      sampler="neighbor", cfg_scale=1.25)

# The models shipped in weights/ (models/mnist.py).
register_pipeline("llamagen-mnist", tokenizer="vq-mnist", generator="llamagen-mnist",
                  sampler="raster", cfg_scale=2.0)
register_pipeline("nar-mnist", tokenizer="vq-mnist", generator="nar-mnist",
                  sampler="neighbor", cfg_scale=2.0)
# xAR-B's evaluation settings: 40 SDE steps per cell, cfg 2.7 ramped linearly over the cells.
register_pipeline("xar-mnist", tokenizer="kl-mnist", generator="xar-mnist",
                  sampler="flow", cfg_scale=2.7, cfg_schedule="linear", num_steps=40)
# Continuous-token AR (Ming-UniVision-style): Ming's 16 Euler steps per token, CFG on the head.
register_pipeline("cont-ar-mnist", tokenizer="kl-mnist", generator="cont-ar-mnist",
                  sampler="token-flow", cfg_scale=3.0, num_steps=16)
register_pipeline("cont-ar-mingtok-mnist", tokenizer="mingtok-mnist", generator="cont-ar-mingtok-mnist",
                  sampler="token-flow", cfg_scale=3.0, num_steps=16)
# Video on Moving-MNIST: NAR (18 passes) and its raster baseline (256 passes) on the same trunk,
# both at cfg 3.0 (the best per-frame class accuracy of 1.0 / 1.5 / 2.0 / 3.0 for both, 60 clips).
register_pipeline("nar-video-mnist", tokenizer="video-vq-mnist", generator="nar-video-mnist",
                  sampler="neighbor", cfg_scale=3.0)
register_pipeline("raster-video-mnist", tokenizer="video-vq-mnist", generator="raster-video-mnist",
                  sampler="raster", cfg_scale=3.0)
