"""`hetero-qwen quantize` and `hetero-qwen info`."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Optional

import typer

from .common import say


def quantize(src: Path = typer.Argument(..., help="Checkpoint directory to read"),
             dst: Path = typer.Argument(..., help="New directory to write"),
             dtype: str = typer.Option("int8", "--dtype", help="int8 | int4")) -> None:
    """Write a pre-quantized copy of a checkpoint that loads without re-quantizing."""
    from ..quantized_checkpoint import quantize_checkpoint

    def progress(it):
        if not sys.stderr.isatty():
            return it
        from tqdm import tqdm
        return tqdm(it, desc="quantizing", unit="tensor", leave=False, file=sys.stderr)
    quantize_checkpoint(src, dst, dtype, progress=progress)
    say(f"wrote {dtype} checkpoint to {dst}")


def checkpoint_info(model: Path) -> dict:
    """The quantized format a checkpoint directory is in, and whether it kept MTP and vision."""
    from ..checkpoint import Checkpoint
    from ..config import load_config
    ckpt = Checkpoint(model, load_config(model))
    return {"path": str(model), "format": ckpt.format_info.describe(), **ckpt.facts}


def info(as_json: bool = typer.Option(False, "--json"),
         model: Optional[Path] = typer.Option(None, "--model",
                                              help="Also name this checkpoint's weight format")) -> None:
    """Versions, CPU kernel backend and ISA, threads, CUDA devices; with --model, its weight format."""
    import torch

    from .. import __version__
    from ..kernels import kernel_info
    out = {"hetero_qwen": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.cuda.is_available(),
           "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
           "kernels": kernel_info()}
    if model is not None:
        out["checkpoint"] = checkpoint_info(model)
    if as_json:
        print(json.dumps(out, indent=2))
        return
    k = out["kernels"]
    print(f"hetero-qwen {out['hetero_qwen']}  python {out['python']}  torch {out['torch']}")
    print(f"cpu: {k['cpu']}  isa: {' '.join(k.get('cpu_isa', []))}")
    print(f"cpu kernels: backend {k['backend']}{' (forced)' if k['forced'] else ''}, "
          f"c++ {'isa ' + str(k['cpp_isa']) if k['cpp_available'] else 'not built: ' + str(k.get('cpp_error'))}, "
          f"threads {k['threads']}, int8-weight activations {k['int8_activations']}, "
          f"prefill {k['prefill_backend']}")
    print("cuda: " + (", ".join(out["cuda_devices"]) if out["cuda"] else "none (the GPU tier is simulated)"))
    if model is not None:
        c = out["checkpoint"]
        kept = lambda k: "kept" if c[k] else "absent (off)"  # noqa: E731
        print(f"checkpoint: {c['path']}\n  weights: {c['format']}\n  mtp: {kept('has_mtp')}  "
              f"vision: {kept('has_vision')}")
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
    app.command("info")(info)
