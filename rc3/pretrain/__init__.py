"""Pretraining: the objectives (MCLM, ITM, XTCL, R-XVtCL) and their pure losses, the per-step task
streams, the DeepSpeed loop and its checkpoints."""
