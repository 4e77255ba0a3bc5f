"""Command-line tools on top of the core: evaluation, checkpoint conversion (open_clip, image ->
video inflation), reports and benchmarks."""
