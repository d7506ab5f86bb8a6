"""Kernels for runs: started ahead in a pool (forked from a zygote), limited,
optionally sandboxed with bubblewrap, watched while they run, thrown away after."""
