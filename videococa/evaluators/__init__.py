"""Zero-shot evaluators (classification, retrieval, captioning) and their metrics."""
