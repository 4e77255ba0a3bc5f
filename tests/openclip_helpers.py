"""Shared helpers of the open_clip parity tests (they import torch: only for tests)."""
import torch


def perturbed(model, seed=0):
  """`model` in float32 eval mode with every parameter redrawn at random (LayerNorm scales ~1).

  open_clip's own initialisation leaves e.g. the CoCa decoder's output nearly uniform; random
  parameters of a trained model's scale make every output (and every argmax) depend on them.
  """
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(1.0 if p.ndim == 1 and name.endswith("weight") else 0.0,
                0.1 if p.ndim <= 1 else 0.02, generator=gen)
  return model.float().eval()
