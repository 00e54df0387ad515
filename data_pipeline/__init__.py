"""Dataset sources (FPHA, H2O, synthetic) -> windowed clips -> TFRecord shards, and TFDS builders."""
