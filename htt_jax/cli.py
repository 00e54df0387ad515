"""How the scripts end: a user's mistake as one `error: ...` line, a bug as a traceback.

Every scripts/*.py calls `cli.run(main)` instead of absl's `app.run(main)`. A user's mistake ends
the process with `error: <message>` on stderr and exit status 1, and nothing else: the library's
messages already name the key, flag or file to change, and thirty lines of stack above them
only hide it. Anything else keeps its traceback, because it is a bug to report.

A user's mistake is, precisely:
- `config_lib.ConfigError`: a config key or flag with a wrong value, a config that does not match
  the prepared data, an input file with the wrong contents (the library raises it for these;
  `data_pipeline.schema.DataError`, a damaged shard, is one);
- an `OSError` about a path the user named: missing (FileNotFoundError), in the way
  (FileExistsError, IsADirectoryError, NotADirectoryError) or not allowed (PermissionError);
- absl's `app.UsageError` raised by a script's own flag checks;
- whatever extra types a script passes as `user_errors`, for calls whose every failure is about
  the input (e.g. reading a PyTorch checkpoint in convert_torch_checkpoint.py).

No JAX or TensorFlow import here: scripts must set XLA flags before JAX starts.
"""

from typing import Callable, Sequence, Tuple, Type

from absl import app

from htt_jax import config_lib

ConfigError = config_lib.ConfigError

PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
USER_ERRORS = (ConfigError, app.UsageError) + PATH_ERRORS


def error_line(error: BaseException) -> str:
  """'error: <message>' (the exception's type when it has no message)."""
  return f"error: {str(error).strip() or type(error).__name__}"


def guard(main: Callable[[Sequence[str]], object],
          user_errors: Tuple[Type[BaseException], ...] = ()) -> Callable[[Sequence[str]], object]:
  """`main` with the user's mistakes turned into SystemExit('error: ...')."""
  caught = USER_ERRORS + tuple(user_errors)

  def guarded(argv):
    try:
      return main(argv)
    except caught as e:
      # SystemExit with a string prints it to stderr and exits with status 1; `from None` drops
      # the chained exception, which would only ever show in a debugger.
      raise SystemExit(error_line(e)) from None

  return guarded


def require_data_dir(config) -> None:
  """Raises ConfigError when config.dataset.data_dir is empty (scripts that read records)."""
  if not config.dataset.data_dir:
    raise ConfigError("config.dataset.data_dir is empty: set --config.dataset.data_dir to the "
                      "folder scripts/prepare_data.py wrote")


def run(main: Callable[[Sequence[str]], object],
        user_errors: Tuple[Type[BaseException], ...] = ()) -> None:
  """absl's app.run(main), reporting the user's mistakes as one `error: ...` line."""
  app.run(guard(main, user_errors))

