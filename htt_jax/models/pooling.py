"""ResNet's stem max-pool (3x3, stride 2, padding 1), written for XLA:CPU.

XLA lowers `reduce_window(max)` to a loop that is slow on CPU, and its gradient to
select-and-scatter, about 20x slower again (measured on 2 cores, 64 frames of 48x80x64: 350 ms
against 18 ms), a sixth of a whole HTT training step at 96x160. Here both directions are
elementwise operations at the output's resolution, which XLA fuses into single passes:

- forward: the maximum over the 9 window taps (strided slices of the -inf-padded input), and the
  index of the tap it came from (the first in row-major order on ties, as PyTorch's kernel picks),
  kept as an int8 residual instead of the input;
- backward: each output's gradient goes to its tap; the taps are interleaved back onto the input
  grid (stride 2, window 3: even input rows receive taps 0 and 2, odd rows tap 1; likewise
  columns), with adds and reshapes instead of a scatter.

Values equal `reduce_window`'s; gradients equal select-and-scatter's wherever a window has a
unique maximum (tested). `relu_max_pool_3x3_s2` is ReLU then pool, computed as pool then ReLU:
the same values (ReLU is monotonic and the padding is -inf), the same gradients (where the
window's maximum is <= 0 both are 0), and the ReLU runs on a map 4x smaller.
"""

import jax
import jax.numpy as jnp
from jax import lax

_WINDOW, _STRIDE, _PAD = 3, 2, 1


def _taps(x):
  """The 9 window taps of every output, as strided slices of the -inf-padded input."""
  n, h, w, c = x.shape
  ho, wo = (h + 2 * _PAD - _WINDOW) // _STRIDE + 1, (w + 2 * _PAD - _WINDOW) // _STRIDE + 1
  xp = jnp.pad(x, ((0, 0), (_PAD, _PAD), (_PAD, _PAD), (0, 0)), constant_values=-jnp.inf)
  return [lax.slice(xp, (0, i, j, 0),
                    (n, i + _STRIDE * (ho - 1) + 1, j + _STRIDE * (wo - 1) + 1, c),
                    (1, _STRIDE, _STRIDE, 1))
          for i in range(_WINDOW) for j in range(_WINDOW)]


def _max_and_tap(x):
  taps = _taps(x)
  best, index = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for t, tap in enumerate(taps[1:], start=1):
    later = tap > best  # strictly greater: the first maximum in row-major order wins
    best = jnp.where(later, tap, best)
    index = jnp.where(later, jnp.int8(t), index)
  return best, index


@jax.custom_vjp
def max_pool_3x3_s2(x):
  """(N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C): max over 3x3 windows, stride 2, -inf padding."""
  return _max_and_tap(x)[0]


def relu_max_pool_3x3_s2(x):
  """`max_pool_3x3_s2(relu(x))`, computed as `relu(max_pool_3x3_s2(x))` (module docstring)."""
  return jax.nn.relu(max_pool_3x3_s2(x))  # gradient 0 at 0 (jnp.maximum's would be 1/2)


def _forward(x):
  out, index = _max_and_tap(x)
  return out, (index, x.shape)


def _shift(a, axis):
  """a[k - 1] at index k (zero at 0), one longer along `axis`."""
  pad = [(0, 0)] * a.ndim
  pad[axis] = (1, 0)
  return jnp.pad(a, pad)


def _extend(a, axis):
  """a with a zero appended along `axis`."""
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, 1)
  return jnp.pad(a, pad)


def _backward(residuals, g):
  """Padded input row 2a + r receives, from output row a, tap row r (r = 0, 1) and, for r = 0,
  tap row 2 of output row a - 1; likewise columns. The four parity classes of the padded grid
  are computed at the output's resolution, then interleaved by one stack and reshape."""
  index, (_, h, w, _) = residuals
  zero = jnp.array(0, g.dtype)
  tap = [[jnp.where(index == _WINDOW * i + j, g, zero) for j in range(_WINDOW)]
         for i in range(_WINDOW)]
  # Rows: for each tap column j, the even and odd padded rows, (N, ho + 1, wo, C).
  rows = [[_extend(tap[0][j], 1) + _shift(tap[2][j], 1), _extend(tap[1][j], 1)]
          for j in range(_WINDOW)]
  parity = [[_extend(rows[0][r], 2) + _shift(rows[2][r], 2), _extend(rows[1][r], 2)]
            for r in range(2)]
  n, a, b, c = parity[0][0].shape
  grid = jnp.stack([jnp.stack(parity[r], axis=3) for r in range(2)], axis=2)  # N, a, 2, b, 2, C
  grid = grid.reshape(n, 2 * a, 2 * b, c)
  return (grid[:, _PAD:_PAD + h, _PAD:_PAD + w, :],)


max_pool_3x3_s2.defvjp(_forward, _backward)
