"""Training: the loop (`python -m videococa.train`), train step, losses, optimizers, checkpoints,
sharding, multi-process set-up and metric writing."""
