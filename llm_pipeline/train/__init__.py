"""The model, the data loader and the DeepSpeed trainer (the `trained_checkpoint` stage)."""
