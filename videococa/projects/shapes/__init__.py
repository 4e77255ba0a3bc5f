"""The shapes project: VideoCoCa learning motion on the embedded `shapes_video` data.

  scenes.py      the scene generator behind `data/shapes_video` (motions, captions, prompts);
  pp_ops.py      `motion_negatives`, `motion_phrases` (caption rewrites by the clip's motion);
  losses.py      the verb-phrase loss term (`config.loss.terms.verb_phrase`);
  patch_skip.py  the `patch_skip` token adapter, with frame differences and normal flow;
  main.py        the main job behind `./run.sh` and the variant study (`./run.sh study`).
Configs: `configs/proj/shapes/`. The study and its results: `docs/shapes_motion_study.md`.
"""
