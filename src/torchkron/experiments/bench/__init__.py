"""``torchkron bench``: the timing suite of the Kronecker map and its contenders, CPU and CUDA."""
