"""`tfds build` without the `beam` extra: python -m data_pipeline.tfds build DATASET [FLAGS].

  python -m data_pipeline.tfds build data_pipeline/tfds/fpha --manual_dir=/data/fpha \
      --data_dir=/data/tfds --config=paper

Why: the `tfds` command of tensorflow-datasets 4.9.10 imports all of its subcommands when it
starts: `convert_format` subclasses `apache_beam.DoFn` and `build_croissant` imports
`mlcroissant`, so `tfds build` fails with "No module named 'apache_beam'" unless both are
installed (the `beam` extra: `pip install -e '.[beam]'`). This runs TFDS's own `build` command
(the same flags, dataset discovery and generation code), nothing else, so an environment without
the extra can still build the datasets in one process. With the extra, `tfds build` does the same.
"""

import sys

from absl import app
from tensorflow_datasets.scripts.cli import build
from tensorflow_datasets.scripts.cli import cli_utils


def parse_flags(argv):
  # Accept the `build` word so commands read like `tfds build ...`; it is the only command.
  if len(argv) > 1 and argv[1] == "build":
    argv = argv[:1] + argv[2:]
  return cli_utils.make_flags_parser(build.Args, description=__doc__.splitlines()[0])(argv)


def main(args: build.Args) -> None:
  args.execute()


if __name__ == "__main__":
  sys.argv[0] = "python -m data_pipeline.tfds"
  app.run(main, flags_parser=parse_flags)
