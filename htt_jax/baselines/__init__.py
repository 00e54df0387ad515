"""Other implementations of HTT, for parity tests and as benchmark baselines.

`torch_htt`: an independent PyTorch model written from docs/reference.md (optional extra
`torch`). `torch_benchmark`: times it, in a process of its own (see its docstring), and through
`torch_backbone` its ResNet-18 or that network's convolutions alone (the benchmark's backbone
modes).
Nothing is imported here, so that importing this package needs no PyTorch.
"""
