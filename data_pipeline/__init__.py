"""Dataset sources (FPHA, H2O, synthetic) -> windowed clips -> TFRecord shards, and TFDS builders.

`data_pipeline.read_clips(output_dir, split, all_train_offsets=False)` reads prepared shards back
one clip at a time (see `reader.py`); it is imported lazily because it needs TensorFlow.
"""


def __getattr__(name):
  if name == "read_clips":
    from data_pipeline.reader import read_clips  # pylint: disable=g-import-not-at-top
    return read_clips
  raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
