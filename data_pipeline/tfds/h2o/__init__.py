"""`h2o_dataset_builder.py`: the TFDS builder (imported only on request, see
data_pipeline/tfds/__init__.py)."""
