"""TensorFlow Datasets builders for FPHA, H2O and the synthetic dataset (`tfds build`).

Each dataset is a folder in the layout `tfds build` discovers (`<name>/<name>_dataset_builder.py`,
class `Builder`); the code they share is `common.py`. Run, for example:

  python -m data_pipeline.tfds build data_pipeline/tfds/fpha --manual_dir=/data/fpha \
      --data_dir=/data/tfds --config=paper

(`tfds build ...` where the `tfds` command can start: see __main__.py.)

The examples are the TFRecord storage windows of `data_pipeline/schema.py`, the same records as
`scripts/prepare_data.py` writes, and every split gets a `<split>.manifest.json` next to its
shards, so `config.dataset.data_dir=<data_dir>/fpha/<config>/<version>` trains on them directly.

Nothing is imported here: a builder module loads TensorFlow and registers its dataset name with
TFDS, so code that wants one imports it (`from data_pipeline.tfds.fpha import
fpha_dataset_builder`), and `tfds build` loads it from its folder.
"""
