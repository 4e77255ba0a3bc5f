"""Input: TFDS datasets, tf.data pipelines, tokenizer, video ingestion. The only TensorFlow users."""
