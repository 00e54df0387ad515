"""Other implementations of HTT, for parity tests and as benchmark baselines.

`torch_htt`: an independent PyTorch model written from the reference's facts (optional extra
`torch`). `torch_benchmark`: times it, in a process of its own (see its docstring).
Nothing is imported here, so that importing this package needs no PyTorch.
"""
