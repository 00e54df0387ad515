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
  the input (e.g. reading a PyTorch checkpoint in convert_torch_checkpoint.py);
- any failure to parse the command line (`parse_flags`): an unknown flag or config key, a value
  of the wrong type, a `--config` file that is missing or whose `get_config` refuses its
  argument. absl would print its own two lines for some of these and a traceback for the others
  (ml_collections defers a config file's failure to the first use of the config, in `main`).

No JAX or TensorFlow import here: scripts must set XLA flags before JAX starts.
"""

from typing import Callable, Sequence, Tuple, Type

from absl import app
from absl import flags

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


def _chain(error: BaseException):
  while error is not None:
    yield error
    error = error.__cause__ or error.__context__


def command_line_error(error: BaseException) -> str:
  """The `error: ...` line for a command line that did not parse: the flag absl names, with the
  innermost cause (ml_collections wraps a config file's own message in a traceback's text)."""
  chain = list(_chain(error))
  missing_keys = [e for e in chain if isinstance(e, KeyError)]
  if missing_keys:  # An override of a key the config does not have; the longest has the hint.
    detail = max((str(e.args[0]) if e.args else "" for e in missing_keys), key=len)
    return ("error: a --config override names a key the config does not have: "
            + " ".join(detail.split()))
  flag = next((e for e in chain if isinstance(e, flags.Error)), None)
  root = chain[-1]
  message = " ".join(str(root).split()) or type(root).__name__
  if flag is None or flag is root:
    return f"error: {message}"
  return f"error: {str(flag).split(': ', 1)[0]}: {message}"


def parse_flags(argv: Sequence[str]):
  """absl's flag parsing, with a command line that does not parse ending the process as one
  `error: ...` line (exit status 1). Loads every config flag's file here, where ml_collections
  would otherwise raise its deferred error at the config's first use."""
  try:
    rest = flags.FLAGS(argv)
    for name in list(flags.FLAGS):
      holder = flags.FLAGS[name]
      if type(holder).__module__.startswith("ml_collections"):
        getattr(holder.value, "keys", None)  # A config that failed to load raises here.
    return rest
  except Exception as e:  # pylint: disable=broad-except  (every one is about the command line)
    raise SystemExit(command_line_error(e)) from None


def run(main: Callable[[Sequence[str]], object],
        user_errors: Tuple[Type[BaseException], ...] = ()) -> None:
  """absl's app.run(main), reporting the user's mistakes as one `error: ...` line."""
  app.run(guard(main, user_errors), flags_parser=parse_flags)

