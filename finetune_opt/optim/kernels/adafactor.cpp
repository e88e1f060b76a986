// Adafactor's step (torch.optim.Adafactor's algorithm and state) for CPU tensors, in two passes
// over memory per factored tensor: the design is in finetune_opt/optim/adafactor_fused.py.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <initializer_list>
#include <vector>

namespace {

template <typename T> struct Opmath { using type = float; };
template <> struct Opmath<double> { using type = double; };

// Independent partial sums per row: a single accumulator would wait on each add's latency (and
// GCC does not reorder floating-point sums); 32 lanes compile to four AVX2 registers.
constexpr int64_t kLanes = 32;
// Rows whose column partials are summed in the compute type before they join the double totals.
constexpr int64_t kFlushRows = 64;
// Rows added to the column partials per sweep (a divisor of kFlushRows).
constexpr int kGroupRows = 4;

// torch's lerp (aten/src/ATen/native/Lerp.h): exact at weight 0 and 1.
template <typename T> T lerp(T start, T end, T weight) {
  return weight < T(0.5) ? start + weight * (end - start) : end - (end - start) * (T(1) - weight);
}

template <typename scalar_t, typename acc_t>
acc_t sum_of_squares(const scalar_t* x, int64_t n) {
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t k = 0; k < kLanes; ++k) {
      const acc_t v = static_cast<acc_t>(x[i + k]);
      lanes[k] += v * v;
    }
  acc_t total = 0;
  for (; i < n; ++i) total += static_cast<acc_t>(x[i]) * static_cast<acc_t>(x[i]);
  for (int64_t k = 0; k < kLanes; ++k) total += lanes[k];
  return total;
}

// One thread's share of pass 1 over a (rows x cols) matrix.
template <typename acc_t> struct ColumnPartials {
  std::vector<double> squares, weighted;  // sum_i g_ij^2 and sum_i g_ij^2 / R_i
  std::vector<acc_t> block_squares, block_weighted;  // the same over the last <= kFlushRows rows
  int64_t block_rows = 0;
  double p_squares = 0;
  acc_t largest_row_scale = 0;  // max rsqrt(R_i) over rows with a nonzero sum of g^2
  bool unbounded = false;       // such a row has R_i = 0 (its mean underflowed), or g holds a NaN

  explicit ColumnPartials(int64_t cols)
      : squares(cols), weighted(cols), block_squares(cols), block_weighted(cols) {}

  // Rows' g^2 into the column partials, kGroupRows rows per sweep: a sweep loads and stores each
  // partial once, so the stores (one a cycle) are shared by the group's rows.
  template <typename scalar_t, int kRows>
  void add_rows(const scalar_t* g, int64_t cols, const acc_t* inverse) {
    for (int64_t j = 0; j < cols; ++j) {
      acc_t squares_here = 0, weighted_here = 0;
      for (int r = 0; r < kRows; ++r) {
        const acc_t v = static_cast<acc_t>(g[r * cols + j]);
        squares_here += v * v;
        weighted_here += inverse[r] * (v * v);
      }
      block_squares[j] += squares_here;
      block_weighted[j] += weighted_here;
    }
    if ((block_rows += kRows) >= kFlushRows) flush();
  }

  void flush() {
    for (size_t j = 0; j < squares.size(); ++j) {
      squares[j] += block_squares[j];
      weighted[j] += block_weighted[j];
      block_squares[j] = block_weighted[j] = 0;
    }
    block_rows = 0;
  }
};

template <typename scalar_t>
void matrix_step(at::Tensor& p_tensor, const at::Tensor& g_tensor, at::Tensor& row_tensor, at::Tensor& col_tensor,
                 double step, double lr, double weight_decay, double beta2_decay, double d, double eps1, double eps2,
                 double direction) {
  using acc_t = typename Opmath<scalar_t>::type;
  const int64_t cols = p_tensor.size(-1), rows = p_tensor.size(-2), numel = p_tensor.numel();
  const int64_t batches = rows * cols == 0 ? 0 : numel / (rows * cols);
  scalar_t* p = p_tensor.data_ptr<scalar_t>();
  const scalar_t* g = g_tensor.const_data_ptr<scalar_t>();
  scalar_t* row_var = row_tensor.data_ptr<scalar_t>();
  scalar_t* col_var = col_tensor.data_ptr<scalar_t>();
  const acc_t weight = static_cast<acc_t>(std::pow(step, beta2_decay));
  const acc_t max_scale = static_cast<acc_t>(1.0 / eps1);  // rsqrt(max(v, eps1^2)) <= 1 / eps1
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1));
  const int threads = at::get_num_threads();

  std::vector<acc_t> col_scales(batches * cols);
  double p_squares = 0, u_squares = 0;
  for (int64_t b = 0; b < batches; ++b) {
    const int64_t offset = b * rows * cols;
    scalar_t* rv = row_var + b * rows;
    scalar_t* cv = col_var + b * cols;
    // Pass 1: p^2; g^2's row sums, hence the new row factor R_i; then, the row still in L1, g^2's
    // column sums and the column sums of g^2 / R_i, which give the clip's sum of u^2 without a
    // pass over g once the column factors are known (see the Python module).
    std::vector<ColumnPartials<acc_t>> partials(threads, ColumnPartials<acc_t>(cols));
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      ColumnPartials<acc_t>& mine = partials[at::get_thread_num()];
      for (int64_t first = begin; first < end; first += kGroupRows) {
        const int count = static_cast<int>(std::min<int64_t>(kGroupRows, end - first));
        acc_t inverse[kGroupRows];  // 1 / R_i for a row with a nonzero sum of g^2; 0 for the others
        for (int r = 0; r < count; ++r) {
          const int64_t i = first + r;
          mine.p_squares += sum_of_squares<scalar_t, acc_t>(p + offset + i * cols, cols);
          const acc_t g_squares = sum_of_squares<scalar_t, acc_t>(g + offset + i * cols, cols);
          rv[i] = static_cast<scalar_t>(lerp<acc_t>(static_cast<acc_t>(rv[i]), g_squares / cols, weight));
          const acc_t scale = acc_t(1) / std::sqrt(static_cast<acc_t>(rv[i]));
          inverse[r] = 0;
          if (g_squares > 0 && std::isfinite(scale)) {
            inverse[r] = scale * scale;
            mine.largest_row_scale = std::max(mine.largest_row_scale, scale);
          } else if (g_squares > 0 || std::isnan(g_squares)) {
            mine.unbounded = true;
          }
        }
        const scalar_t* rows_g = g + offset + first * cols;
        if (count == kGroupRows) {
          mine.template add_rows<scalar_t, kGroupRows>(rows_g, cols, inverse);
        } else {
          for (int r = 0; r < count; ++r) mine.template add_rows<scalar_t, 1>(rows_g + r * cols, cols, inverse + r);
        }
      }
    });
    std::vector<double> squares(cols), weighted(cols);
    acc_t largest_row_scale = 0;
    bool unbounded = false;
    for (auto& part : partials) {
      part.flush();
      for (int64_t j = 0; j < cols; ++j) {
        squares[j] += part.squares[j];
        weighted[j] += part.weighted[j];
      }
      p_squares += part.p_squares;
      largest_row_scale = std::max(largest_row_scale, part.largest_row_scale);
      unbounded = unbounded || part.unbounded;
    }
    double row_total = 0;
    for (int64_t i = 0; i < rows; ++i) row_total += static_cast<double>(rv[i]);
    const acc_t row_mean = std::max(static_cast<acc_t>(row_total / rows), static_cast<acc_t>(eps1));
    acc_t largest_col_scale = 0;
    double fast_u_squares = 0;
    acc_t* cs = col_scales.data() + b * cols;
    for (int64_t j = 0; j < cols; ++j) {
      cv[j] = static_cast<scalar_t>(lerp<acc_t>(static_cast<acc_t>(cv[j]), static_cast<acc_t>(squares[j] / rows), weight));
      cs[j] = acc_t(1) / std::sqrt(static_cast<acc_t>(cv[j]) / row_mean);
      if (squares[j] > 0) {
        unbounded = unbounded || std::isnan(cs[j]);
        largest_col_scale = std::max(largest_col_scale, cs[j]);
        fast_u_squares += static_cast<double>(cs[j]) * cs[j] * weighted[j];
      } else if (std::isnan(squares[j])) {
        unbounded = true;
      }
    }
    // sum_ij g_ij^2 min(rs_i cs_j, 1/eps1)^2 = sum_j cs_j^2 sum_i g_ij^2 / R_i when no nonzero g_ij
    // meets the clamp; otherwise (a row or column of tiny g) one more pass computes it as written.
    if (!unbounded && largest_row_scale * largest_col_scale <= max_scale) {
      u_squares += fast_u_squares;
    } else {
      std::vector<double> sums(threads);
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        double& mine = sums[at::get_thread_num()];
        for (int64_t i = begin; i < end; ++i) {
          const acc_t rs = acc_t(1) / std::sqrt(static_cast<acc_t>(rv[i]));
          const scalar_t* gi = g + offset + i * cols;
          acc_t lanes[kLanes] = {};
          for (int64_t j = 0; j < cols; ++j) {
            const acc_t u = static_cast<acc_t>(gi[j]) * std::min(rs * cs[j], max_scale);
            lanes[j % kLanes] += u * u;
          }
          for (int64_t k = 0; k < kLanes; ++k) mine += lanes[k];
        }
      });
      for (double s : sums) u_squares += s;
    }
  }
  const double t = step;
  const double alpha = std::max(eps2, std::sqrt(p_squares / numel)) * std::min(lr, 1.0 / std::sqrt(t));
  const double clip = std::max(1.0, std::sqrt(u_squares / numel) / d);
  const acc_t size = static_cast<acc_t>(direction * alpha / clip), decay = static_cast<acc_t>(1.0 - lr * weight_decay);
  // Pass 2: p <- p * decay - size * g * min(rsqrt(R_i) cs_j, 1/eps1).
  at::parallel_for(0, batches * rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t rs = acc_t(1) / std::sqrt(static_cast<acc_t>(row_var[r]));
      const acc_t* cs = col_scales.data() + (r / rows) * cols;
      scalar_t* pi = p + r * cols;
      const scalar_t* gi = g + r * cols;
      for (int64_t j = 0; j < cols; ++j) {
        const acc_t u = static_cast<acc_t>(gi[j]) * std::min(rs * cs[j], max_scale);
        pi[j] = static_cast<scalar_t>(static_cast<acc_t>(pi[j]) * decay - size * u);
      }
    }
  });
}

// A vector (or 0-dim) parameter: a full second moment, as torch steps it.
template <typename scalar_t>
void vector_step(at::Tensor& p_tensor, const at::Tensor& g_tensor, at::Tensor& var_tensor, double step, double lr,
                 double weight_decay, double beta2_decay, double d, double eps1, double eps2, double direction) {
  using acc_t = typename Opmath<scalar_t>::type;
  const int64_t n = p_tensor.numel();
  scalar_t* p = p_tensor.data_ptr<scalar_t>();
  const scalar_t* g = g_tensor.const_data_ptr<scalar_t>();
  scalar_t* v = var_tensor.data_ptr<scalar_t>();
  const acc_t weight = static_cast<acc_t>(std::pow(step, beta2_decay));
  const acc_t floor = static_cast<acc_t>(eps1 * eps1);
  double p_squares = 0, u_squares = 0;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]), pi = static_cast<acc_t>(p[i]);
    p_squares += static_cast<double>(pi) * pi;
    v[i] = static_cast<scalar_t>(lerp<acc_t>(static_cast<acc_t>(v[i]), gi * gi, weight));
    const acc_t u = gi / std::sqrt(std::max(static_cast<acc_t>(v[i]), floor));
    u_squares += static_cast<double>(u) * u;
  }
  const double alpha = std::max(eps2, std::sqrt(p_squares / n)) * std::min(lr, 1.0 / std::sqrt(step));
  const acc_t size = static_cast<acc_t>(direction * alpha / std::max(1.0, std::sqrt(u_squares / n) / d));
  const acc_t decay = static_cast<acc_t>(1.0 - lr * weight_decay);
  for (int64_t i = 0; i < n; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    const acc_t u = gi / std::sqrt(std::max(static_cast<acc_t>(v[i]), floor));
    p[i] = static_cast<scalar_t>(static_cast<acc_t>(p[i]) * decay - size * u);
  }
}

void check(const at::Tensor& p, const at::Tensor& g, std::initializer_list<at::Tensor> states) {
  TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(), "adafactor (fused) steps CPU tensors only");
  TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && p.sizes() == g.sizes() && p.dtype() == g.dtype(),
              "adafactor (fused) needs contiguous parameters and gradients of one shape and dtype");
  for (const at::Tensor& s : states)
    TORCH_CHECK(s.is_contiguous() && s.dtype() == p.dtype(), "adafactor (fused) needs contiguous state in the parameter's dtype");
}

// A set found_inf (GradScaler's, or the engine's non-finite flag) skips the whole step, counters
// included, as torch's fused CPU optimizers do: on a CPU reading it waits for nothing.
void adafactor_step(at::TensorList params, at::TensorList grads, at::TensorList row_vars, at::TensorList col_vars,
                    at::TensorList variances, at::TensorList steps, double lr, double weight_decay,
                    double beta2_decay, double d, std::optional<double> eps1, double eps2, bool maximize,
                    const std::optional<at::Tensor>& found_inf) {
  // maximize: u is odd in g (its factors see g^2 only), so stepping -g is stepping g the other way
  const double direction = maximize ? -1.0 : 1.0;
  if (found_inf.has_value() && found_inf->item<double>() != 0) return;
  for (const at::Tensor& count : steps) {  // 0-dim CPU counters: an add through ATen costs microseconds each
    TORCH_CHECK(count.device().is_cpu() && count.numel() == 1, "adafactor (fused): step counters are 0-dim CPU tensors");
    AT_DISPATCH_FLOATING_TYPES(count.scalar_type(), "adafactor_count", [&] { *count.data_ptr<scalar_t>() += 1; });
  }
  for (size_t k = 0; k < params.size(); ++k) {
    at::Tensor p = params[k], g = grads[k];
    if (p.dim() > 1) {
      check(p, g, {row_vars[k], col_vars[k]});
      TORCH_CHECK(row_vars[k].numel() * p.size(-1) == p.numel() && col_vars[k].numel() * p.size(-2) == p.numel(),
                  "adafactor (fused): row and column factors do not match the parameter's shape");
    } else {
      check(p, g, {variances[k]});
      TORCH_CHECK(variances[k].numel() == p.numel(), "adafactor (fused): the variance does not match the parameter");
    }
    const double step = steps[k].item<double>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "adafactor_step", [&] {
      const double e1 = eps1.has_value() ? *eps1 : static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
      if (p.dim() > 1) {
        at::Tensor row = row_vars[k], col = col_vars[k];
        matrix_step<scalar_t>(p, g, row, col, step, lr, weight_decay, beta2_decay, d, e1, eps2, direction);
      } else {
        at::Tensor var = variances[k];
        vector_step<scalar_t>(p, g, var, step, lr, weight_decay, beta2_decay, d, e1, eps2, direction);
      }
    });
  }
}

}  // namespace

TORCH_LIBRARY(finetune_opt_adafactor, m) {
  // row_vars / col_vars hold an empty tensor for vectors, variances one for matrices.
  m.def("step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] row_vars, Tensor(c!)[] col_vars, "
        "Tensor(d!)[] variances, Tensor(e!)[] steps, float lr, float weight_decay, float beta2_decay, float d, "
        "float? eps1, float eps2, bool maximize, Tensor? found_inf) -> ()");
  m.impl("step", c10::DispatchKey::CPU, TORCH_FN(adafactor_step));
}
