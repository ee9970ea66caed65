"""Triton kernels for the chunked memory updates and scans, each beside its plain PyTorch reference.

Installed as ``memnets.kernels`` (never as a top-level ``kernels`` module, a name another package owns).
Kernel modules import ``triton`` themselves; importing this package needs only torch."""
