"""Models: ViT, attentional poolers, text towers, CoCa with the VideoCoCa variants, decoding, and
the hooks projects extend them with."""
