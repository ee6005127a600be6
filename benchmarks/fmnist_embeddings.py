"""Fashion-MNIST as embeddings for ``benchmarks/index.py --npy``: all 70,000 images through
an exported encoder (resnet18 at 32 px, untrained unless ``--run`` names a trained run).

    python benchmarks/fmnist_embeddings.py --out .bench/fmnist-70k.npy
    python benchmarks/index.py --npy .bench/fmnist-70k.npy
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import export_untrained  # noqa: E402
from fashion_mnist import write_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".bench/fmnist-70k.npy"))
    parser.add_argument("--run", type=Path, help="a trained run to export instead")
    parser.add_argument("--data-dir", type=Path, default=Path(".bench/fmnist"))
    args = parser.parse_args()

    from groco.encoder.export import export_encoder
    from groco.encoder.runtime import Encoder
    from groco.images import find_images

    folders = [write_folder(args.data_dir, "train"), write_folder(args.data_dir, "t10k")]
    files = [f for folder in folders for f in find_images(folder)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            encoder_path = Path(tmp) / "encoder.onnx"
            export_encoder(args.run, encoder_path)
        else:
            encoder_path = export_untrained(Path(tmp), "resnet18", 32)
        encoder = Encoder(encoder_path)
        started = time.perf_counter()
        embeddings = encoder.embed(files, batch_size=256)
        seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, embeddings.astype(np.float32))
    print(f"{len(files)} images → {embeddings.shape} in {seconds:.0f} s "
          f"({len(files) / seconds:.0f} images/s) → {args.out}")


if __name__ == "__main__":
    main()
