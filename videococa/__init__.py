"""videococa: contrastive captioners (CoCa, VideoCoCa) in JAX/Flax, sharded over device meshes."""
