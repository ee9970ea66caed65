"""Triton kernels for the chunked memory updates and scans, each beside its plain PyTorch reference.

The folder lives inside the package: a top-level ``kernels`` folder in the repository would be imported
as ``kernels`` wherever the repository root is on ``sys.path`` (``python train.py``, ``python -m pytest``)
and shadow Hugging Face's ``kernels``, which ``transformers`` imports. Kernel modules import ``triton``
themselves; importing this package needs only torch."""
