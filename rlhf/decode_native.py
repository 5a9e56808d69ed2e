"""The fast decode loop's one-token step over the 30 (or however many) decoder layers, in C++.

``rlhf.decode._forward`` runs about 1,500 small tensor operations per generated token (norms,
rotations, casts, cache writes, attention, products), each paying a few microseconds of Python and
dispatch: at PPO's batch 4 on the bundled model that was more time than the products themselves.
Here one C++ call per token runs the layers: the products (oneDNN's packed bfloat16 product, as
``rlhf.ppo.rollout.bf16_linear``), attention's two batched matmuls, softmax and SiLU are ATen's; the
norms with their cast, the rotary embedding with the cache writes, the roundings to bfloat16 and the
residual adds are plain loops over the same values. The key/value cache is kept in float32 (each
value its bfloat16 rounding, as the Python step's cache holds it), so attention no longer converts
the whole prefix at every token. The sampled tokens are the Python step's, the scores equal but for
float32 rounding (the norms add their squares in another order): ``tests/ppo/test_decode.py``.
``torch.compile`` and TorchScript were measured for this first (README, "Generation"): neither keeps
oneDNN's packed weights.

It is compiled on first use with torch's own C++ extension loader (g++ and ninja, the same as
DeepSpeed's first run; about 25 s on two cores) into ``$TORCH_EXTENSIONS_DIR`` (``rlhf.runtime``
points it at the cache, so it happens once per machine). Where it cannot be built, ``available()``
is False after saying why once, and the loop runs its steps in Python as before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sysconfig
import threading

import torch

log = logging.getLogger("rlhf.decode")

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cmath>

using at::Tensor;

// rlhf.ppo.rollout.bf16_linear: oneDNN's product for a packed bfloat16 weight, else F.linear.
static Tensor product(const Tensor& x, const Tensor& w) {
  if (w.is_mkldnn()) {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{x, w, c10::IValue(), c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<c10::Scalar>>()), c10::IValue(std::string(""))};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  return at::linear(x, w);
}

// rms_norm (as F.rms_norm: x * rsqrt(mean(x^2) + eps) * weight) of each row of float32 `hidden`, written
// as bfloat16 to `out` (or float32 when `out` is float32). One pass instead of rms_norm's and the cast's
// dozen dispatched operations; only the sum of squares is added up in another order than ATen's.
static void norm_rows(const Tensor& hidden, const Tensor& weight, double eps, Tensor& out) {
  const int64_t width = hidden.size(-1), rows = hidden.numel() / width;
  const float* h = hidden.data_ptr<float>();
  const float* g = weight.data_ptr<float>();
  const bool bf16 = out.scalar_type() == at::kBFloat16;
  for (int64_t r = 0; r < rows; ++r, h += width) {
    float sums[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t j = 0;
    for (; j + 8 <= width; j += 8)
      for (int u = 0; u < 8; ++u) sums[u] += h[j + u] * h[j + u];
    for (; j < width; ++j) sums[0] += h[j] * h[j];
    const float total = ((sums[0] + sums[1]) + (sums[2] + sums[3])) + ((sums[4] + sums[5]) + (sums[6] + sums[7]));
    const float inv = 1.0f / std::sqrt(total / static_cast<float>(width) + static_cast<float>(eps));
    if (bf16) {
      at::BFloat16* o = out.data_ptr<at::BFloat16>() + r * width;
      for (j = 0; j < width; ++j) o[j] = at::BFloat16(h[j] * inv * g[j]);
    } else {
      float* o = out.data_ptr<float>() + r * width;
      for (j = 0; j < width; ++j) o[j] = h[j] * inv * g[j];
    }
  }
}

// hidden += x (float32 += bfloat16, as `hidden + x` promotes), row-major, same shapes.
static void add_into(Tensor& hidden, const Tensor& x) {
  float* h = hidden.data_ptr<float>();
  const at::BFloat16* v = x.data_ptr<at::BFloat16>();
  const int64_t n = hidden.numel();
  for (int64_t j = 0; j < n; ++j) h[j] += static_cast<float>(v[j]);
}

// Rotary embedding of q and k from one token's qkv row (bfloat16), as rlhf.decode._rotate computes it
// (x * cos + rotate_half(x) * sin in float32, rounded to bfloat16). q goes to `q` (batch, heads, dim), k
// and v to the float32 caches (batch, kv_heads, length, dim) at slot `start`, each value as its bfloat16
// rounding: what the Python step's bfloat16 cache holds and its attention reads back as float32.
static void rotate_into(const Tensor& qkv, const Tensor& cos, const Tensor& sin, Tensor& q, Tensor& keys,
                        Tensor& values, int64_t start, int64_t heads, int64_t kv_heads, int64_t dim) {
  const int64_t batch = qkv.size(0), half = dim / 2, row = qkv.size(-1), total = keys.size(2);
  const at::BFloat16* in = qkv.data_ptr<at::BFloat16>();
  const float* c0 = cos.data_ptr<float>();
  const float* s0 = sin.data_ptr<float>();
  float* qo = q.data_ptr<float>();
  float* ko = keys.data_ptr<float>();
  float* vo = values.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const float* c = c0 + b * cos.stride(0);
    const float* s = s0 + b * sin.stride(0);
    const at::BFloat16* x = in + b * row;
    for (int64_t h = 0; h < heads + kv_heads; ++h, x += dim) {
      float* o = h < heads ? qo + (b * heads + h) * dim : ko + ((b * kv_heads + (h - heads)) * total + start) * dim;
      for (int64_t j = 0; j < dim; ++j) {
        const float rotated = j < half ? -static_cast<float>(x[j + half]) : static_cast<float>(x[j - half]);
        const float a = static_cast<float>(x[j]) * c[j];
        const float bsin = rotated * s[j];
        o[j] = static_cast<float>(at::BFloat16(a + bsin));
      }
    }
    for (int64_t h = 0; h < kv_heads; ++h, x += dim) {
      float* o = vo + ((b * kv_heads + h) * total + start) * dim;
      for (int64_t j = 0; j < dim; ++j) o[j] = static_cast<float>(x[j]);
    }
  }
}

// float32 values rounded to bfloat16: in place (as float32) or into a bfloat16 tensor of as many elements.
static void round_bf16(Tensor& values) {
  float* v = values.data_ptr<float>();
  for (int64_t j = 0, n = values.numel(); j < n; ++j) v[j] = static_cast<float>(at::BFloat16(v[j]));
}
static void to_bf16(const Tensor& values, Tensor& out) {
  const float* v = values.data_ptr<float>();
  at::BFloat16* o = out.data_ptr<at::BFloat16>();
  for (int64_t j = 0, n = values.numel(); j < n; ++j) o[j] = at::BFloat16(v[j]);
}

// rlhf.decode._forward for one token per row (tokens == 1), over float32 caches.
// weights: per layer input_norm, qkv, o, post_norm, gate_up, down; then the final norm.
Tensor step(Tensor hidden, const std::vector<Tensor>& weights, const Tensor& cos, const Tensor& sin,
            const std::vector<Tensor>& keys, const std::vector<Tensor>& values, int64_t start,
            const Tensor& masked, int64_t heads, int64_t kv_heads, int64_t head_dim, double eps) {
  TORCH_CHECK(hidden.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat && cos.stride(-1) == 1 &&
              sin.stride(-1) == 1 && sin.stride(0) == cos.stride(0), "decode step: unexpected layouts");
  hidden = hidden.contiguous().clone();
  const int64_t batch = hidden.size(0), width = hidden.size(-1), group = heads / kv_heads;
  const int64_t q_width = heads * head_dim, end = start + 1;
  const double scale = std::pow(static_cast<double>(head_dim), -0.5);
  Tensor x = at::empty({batch, 1, width}, hidden.options().dtype(at::kBFloat16));
  Tensor attended = at::empty({batch, 1, q_width}, x.options());
  Tensor q = at::empty({batch * kv_heads, group, head_dim}, hidden.options());
  for (size_t i = 0; i < keys.size(); ++i) {
    const Tensor* w = &weights[6 * i];
    Tensor k_cache = keys[i], v_cache = values[i];
    TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.scalar_type() == at::kFloat,
                "decode step: caches must be contiguous float32");
    norm_rows(hidden, w[0], eps, x);
    Tensor qkv = product(x, w[1]).contiguous();
    rotate_into(qkv, cos, sin, q, k_cache, v_cache, start, heads, kv_heads, head_dim);
    // rlhf.decode._attend_one: scores in float32 from bfloat16 values, float32 softmax, probabilities
    // rounded to bfloat16, float32 product with the values, rounded to bfloat16.
    Tensor k = k_cache.narrow(2, 0, end).view({batch * kv_heads, end, head_dim});
    Tensor v = v_cache.narrow(2, 0, end).view({batch * kv_heads, end, head_dim});
    Tensor scores = at::bmm(q, k.transpose(1, 2)).mul_(scale);
    Tensor probs = scores.view({batch, kv_heads, group, end}).masked_fill_(masked, -INFINITY).softmax(-1);
    round_bf16(probs);
    to_bf16(at::bmm(probs.view({batch * kv_heads, group, end}), v), attended);
    add_into(hidden, product(attended, w[2]).contiguous());
    norm_rows(hidden, w[3], eps, x);
    std::vector<Tensor> gate_up = product(x, w[4]).chunk(2, -1);
    add_into(hidden, product(at::silu(gate_up[0]) * gate_up[1], w[5]).contiguous());
  }
  Tensor out = at::empty({batch, width}, hidden.options());
  norm_rows(hidden, weights.back(), eps, out);
  return out;
}

// The GIL is released during the step (as torch's own bindings release it around each operation), so
// the app's server threads answer while a background generation runs.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("step", &step, py::call_guard<py::gil_scoped_release>());
}
"""

_lock = threading.Lock()
_module = None
_failed: str | None = None


def _build():
    from torch.utils.cpp_extension import load_inline

    # ninja comes with the project's pinned dependencies, in the interpreter's scripts folder, which
    # is not on PATH when the venv is not activated (torch's loader looks for it there).
    scripts = sysconfig.get_path("scripts")
    if scripts and scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    from rlhf.runtime import cache_home

    # where rlhf.runtime.apply_offline_env points torch's extensions, whether or not it ran (tests, imports)
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(cache_home(), "torch_extensions")
    # one folder per version of the source: two checkouts on one machine never rebuild each other's
    name = "rlhf_decode_step_" + hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
    folder = os.path.join(root, name)
    os.makedirs(folder, exist_ok=True)
    return load_inline(name=name, cpp_sources=[SOURCE],
                       extra_cflags=["-O3", "-ffp-contract=off"], build_directory=folder, verbose=False)


def module():
    """The compiled extension, building it on first use; None (said once) when it cannot be built."""
    global _module, _failed
    if _module is not None or _failed is not None:
        return _module
    with _lock:
        if _module is None and _failed is None:
            if os.environ.get("RLHF_DECODE_NATIVE", "1") == "0":
                _failed = "RLHF_DECODE_NATIVE=0"
            else:
                try:
                    _module = _build()
                except Exception as exc:  # no compiler, no headers: the Python loop does the same work
                    last_line = (str(exc).strip().splitlines() or [""])[-1]  # a compiler's output ends with the cause
                    _failed = f"{type(exc).__name__}: {last_line}"
                    log.warning("generation: the fast loop's C++ step could not be built (%s); running its "
                                "steps in Python", _failed)
    return _module


def available() -> bool:
    return module() is not None


def float_caches(keys, values) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """float32 copies of the bfloat16 key/value caches (the same values) for ``step``, which reads them
    without converting the whole prefix again at every token."""
    return [k.float() for k in keys], [v.float() for v in values]


def step(w, hidden: torch.Tensor, cos, sin, keys, values, start: int, masked) -> torch.Tensor:
    """``rlhf.decode._forward`` for one token per row, in C++ (check ``available()`` first): ``hidden``
    the new tokens' embeddings (batch, 1, width) float32, ``keys``/``values`` float32 caches from
    ``float_caches``, written at slot ``start``; ``masked`` (batch, 1, 1, start + 1) True where a key is
    hidden. Returns the final normed hidden state (batch, width)."""
    flat = w.__dict__.get("_native_weights")
    if flat is None:
        flat = [t for layer in w.layers for t in (layer.input_norm, layer.qkv, layer.o, layer.post_norm,
                                                 layer.gate_up, layer.down)] + [w.final_norm]
        w.__dict__["_native_weights"] = flat
    return module().step(hidden, flat, cos, sin, keys, values, start, masked, w.heads, w.kv_heads, w.head_dim,
                         float(w.eps))
