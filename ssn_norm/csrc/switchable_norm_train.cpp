// SN/SSN on CPU, forward (training or eval) and training backward in one
// call each: the
// numerics of ssn_norm/ops/moments.py (member_moments, mix, scale_shift and
// their hand-derived backward member_grads) for the members whose reduction
// the table declares (Member.groups), with the input passes of BatchNorm.
//
// The layer works on the rows r = (n, c) of x viewed as (N*C, L):
//   forward:  per-row mean and unbiased variance (the IN moments, 0 for
//             L = 1), the O(N*C) mix, then y = x * scale + shift per row;
//   backward: per-row sum g and sum g*x, the O(N*C) backward of the mix,
//             then dx = g * scale + (x - mean_in) * coef + const per row.
// Row passes run in parallel over rows, accumulating in double; everything
// O(N*C) runs in double on one thread (at most a few hundred thousand
// values).  A member k is described by groups[k]:
//   -1  IN itself: the row's moments;
//    0  over the batch (BN): mean over n of the IN mean and of the IN second
//       moment var_in + mean_in^2, then var = max(sq - mean^2, 0);
//   G>0 per sample over G groups of C/G consecutive channels (LN: G = 1,
//       GN: G = gn_groups), the same way.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SSN_NORM_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define SSN_NORM_INLINE inline __attribute__((always_inline))
#else
#define SSN_NORM_CLONES
#define SSN_NORM_INLINE inline
#endif

constexpr int64_t kLanes = 8;

SSN_NORM_INLINE double lane_total(const double* lanes) {
  return ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) +
         ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]));
}

// ------------------------------------------------------------ row passes
template <typename T>
SSN_NORM_INLINE void moments_rows(const T* x, int64_t begin, int64_t end,
                                  int64_t length, double* mean, double* var) {
  for (int64_t r = begin; r < end; ++r) {
    const T* row = x + r * length;
    double lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) lanes[j] += row[i + j];
    }
    for (; i < length; ++i) lanes[0] += row[i];
    const double m = lane_total(lanes) / length;
    std::fill(lanes, lanes + kLanes, 0.0);
    for (i = 0; i + kLanes <= length; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        const double d = row[i + j] - m;
        lanes[j] += d * d;
      }
    }
    for (; i < length; ++i) {
      const double d = row[i] - m;
      lanes[0] += d * d;
    }
    mean[r] = m;
    // The released IN variance: unbiased, 0 for a single element.
    var[r] = length > 1 ? lane_total(lanes) / (length - 1) : 0.0;
  }
}

template <typename T>
SSN_NORM_INLINE void affine_rows(const T* x, T* y, int64_t begin, int64_t end,
                                 int64_t length, const T* scale,
                                 const T* shift) {
  for (int64_t r = begin; r < end; ++r) {
    const T a = scale[r], b = shift[r];
    const T* src = x + r * length;
    T* dst = y + r * length;
    for (int64_t i = 0; i < length; ++i) dst[i] = src[i] * a + b;
  }
}

template <typename T>
SSN_NORM_INLINE void grad_sums_rows(const T* g, const T* x, int64_t begin,
                                    int64_t end, int64_t length, double* sum_g,
                                    double* sum_gx) {
  for (int64_t r = begin; r < end; ++r) {
    const T* gr = g + r * length;
    const T* xr = x + r * length;
    double lg[kLanes] = {}, lgx[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        const double gv = gr[i + j];
        lg[j] += gv;
        lgx[j] += gv * xr[i + j];
      }
    }
    for (; i < length; ++i) {
      lg[0] += gr[i];
      lgx[0] += static_cast<double>(gr[i]) * xr[i];
    }
    sum_g[r] = lane_total(lg);
    sum_gx[r] = lane_total(lgx);
  }
}

template <typename T>
SSN_NORM_INLINE void grad_input_rows(const T* g, const T* x, T* dx,
                                     int64_t begin, int64_t end,
                                     int64_t length, const T* scale,
                                     const T* centre, const T* coef,
                                     const T* constant) {
  for (int64_t r = begin; r < end; ++r) {
    const T a = scale[r], m = centre[r], k = coef[r], b = constant[r];
    const T* gr = g + r * length;
    const T* xr = x + r * length;
    T* out = dx + r * length;
    for (int64_t i = 0; i < length; ++i) {
      out[i] = gr[i] * a + (xr[i] - m) * k + b;
    }
  }
}

// One build per ISA level for each dtype; the row functions above inline.
#define SSN_NORM_ROW_KERNELS(T, S)                                            \
  SSN_NORM_CLONES void moments_##S(const T* x, int64_t b, int64_t e,         \
                                   int64_t l, double* m, double* v) {        \
    moments_rows<T>(x, b, e, l, m, v);                                        \
  }                                                                           \
  SSN_NORM_CLONES void affine_##S(const T* x, T* y, int64_t b, int64_t e,    \
                                  int64_t l, const T* a, const T* s) {       \
    affine_rows<T>(x, y, b, e, l, a, s);                                      \
  }                                                                           \
  SSN_NORM_CLONES void grad_sums_##S(const T* g, const T* x, int64_t b,      \
                                     int64_t e, int64_t l, double* sg,       \
                                     double* sgx) {                           \
    grad_sums_rows<T>(g, x, b, e, l, sg, sgx);                                \
  }                                                                           \
  SSN_NORM_CLONES void grad_input_##S(const T* g, const T* x, T* dx,         \
                                      int64_t b, int64_t e, int64_t l,       \
                                      const T* a, const T* m, const T* k,    \
                                      const T* c) {                           \
    grad_input_rows<T>(g, x, dx, b, e, l, a, m, k, c);                        \
  }

SSN_NORM_ROW_KERNELS(float, float)
SSN_NORM_ROW_KERNELS(double, double)

void moments_of(const float* x, int64_t b, int64_t e, int64_t l, double* m,
                double* v) {
  moments_float(x, b, e, l, m, v);
}
void moments_of(const double* x, int64_t b, int64_t e, int64_t l, double* m,
                double* v) {
  moments_double(x, b, e, l, m, v);
}
void affine_of(const float* x, float* y, int64_t b, int64_t e, int64_t l,
               const float* a, const float* s) {
  affine_float(x, y, b, e, l, a, s);
}
void affine_of(const double* x, double* y, int64_t b, int64_t e, int64_t l,
               const double* a, const double* s) {
  affine_double(x, y, b, e, l, a, s);
}
void grad_sums_of(const float* g, const float* x, int64_t b, int64_t e,
                  int64_t l, double* sg, double* sgx) {
  grad_sums_float(g, x, b, e, l, sg, sgx);
}
void grad_sums_of(const double* g, const double* x, int64_t b, int64_t e,
                  int64_t l, double* sg, double* sgx) {
  grad_sums_double(g, x, b, e, l, sg, sgx);
}
void grad_input_of(const float* g, const float* x, float* dx, int64_t b,
                   int64_t e, int64_t l, const float* a, const float* m,
                   const float* k, const float* c) {
  grad_input_float(g, x, dx, b, e, l, a, m, k, c);
}
void grad_input_of(const double* g, const double* x, double* dx, int64_t b,
                   int64_t e, int64_t l, const double* a, const double* m,
                   const double* k, const double* c) {
  grad_input_double(g, x, dx, b, e, l, a, m, k, c);
}

// Rows per parallel task: about 32k elements each.
int64_t grain_of(int64_t length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(length, 1));
}

// ------------------------------------------------------------ the mix
// Every member's moments from the IN moments, and their mix; all (N, C)
// arrays are row-major, doubles.
struct Mix {
  int64_t num, channels, members;
  std::vector<int64_t> groups;
  std::vector<double> ratios;  // (2, K, C): mean ratios, variance ratios
  // Per member: mean, variance and unclamped sq - mean^2 at its own index
  // (empty for IN, which reads the IN moments).
  std::vector<std::vector<double>> mean, var, diff;
  // The mixed mean and the factors, (N, C).
  std::vector<double> mixed_mean, inv_std, scale, shift;

  int64_t size(int64_t k) const {
    const int64_t g = groups[k];
    return g < 0 ? num * channels : (g == 0 ? channels : num * g);
  }
  // IN rows that member k's moment at one index is the mean of.
  int64_t count(int64_t k) const {
    return groups[k] == 0 ? num : channels / groups[k];
  }
  const double* ratio(int which, int64_t k) const {
    return ratios.data() + (which * members + k) * channels;
  }
};

// Calls f(i, j, c) for every row i = (n, c), with j the index of member
// k's moment that row i mixes in (i itself for IN); no division per row.
template <typename F>
SSN_NORM_INLINE void for_each_row(const Mix& mix, int64_t k, F&& f) {
  const int64_t g = mix.groups[k], C = mix.channels;
  for (int64_t n = 0; n < mix.num; ++n) {
    const int64_t row0 = n * C;
    if (g <= 0) {
      for (int64_t c = 0; c < C; ++c) f(row0 + c, g < 0 ? row0 + c : c, c);
    } else {
      const int64_t width = C / g;
      for (int64_t j = 0; j < g; ++j) {
        for (int64_t c = j * width; c < (j + 1) * width; ++c) {
          f(row0 + c, n * g + j, c);
        }
      }
    }
  }
}

// running: the running mean and variance (C each) that replace the batch
// member's moments in eval, or nullptr in training.
Mix make_mix(const double* mean_in, const double* var_in, int64_t num,
             int64_t channels, const std::vector<int64_t>& groups,
             const torch::Tensor& ratios, const double* weight,
             const double* bias, double eps,
             const double* running = nullptr) {
  Mix mix{num, channels, static_cast<int64_t>(groups.size()), groups};
  const int64_t rows = num * channels, K = mix.members;
  // Ratios (2, K) or (2, K, C), as (2, K, C).
  const auto r = ratios.to(at::kDouble).contiguous();
  const double* rp = r.data_ptr<double>();
  mix.ratios.resize(2 * K * channels);
  const bool per_channel = r.dim() == 3;
  for (int64_t a = 0; a < 2 * K; ++a) {
    for (int64_t c = 0; c < channels; ++c) {
      mix.ratios[a * channels + c] = per_channel ? rp[a * channels + c] : rp[a];
    }
  }
  mix.mean.resize(K);
  mix.var.resize(K);
  mix.diff.resize(K);
  mix.mixed_mean.assign(rows, 0.0);
  std::vector<double> mixed_var(rows, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    const double* rm = mix.ratio(0, k);
    const double* rv = mix.ratio(1, k);
    if (groups[k] < 0) {
      for_each_row(mix, k, [&](int64_t i, int64_t, int64_t c) {
        mix.mixed_mean[i] += rm[c] * mean_in[i];
        mixed_var[i] += rv[c] * var_in[i];
      });
      continue;
    }
    const int64_t size = mix.size(k);
    const double count = mix.count(k);
    auto& m = mix.mean[k];
    auto& v = mix.var[k];
    auto& d = mix.diff[k];
    if (groups[k] == 0 && running != nullptr) {
      m.assign(running, running + channels);
      v.assign(running + channels, running + 2 * channels);
    } else {
      m.assign(size, 0.0);
      d.assign(size, 0.0);  // the second moment until the loop below
      for_each_row(mix, k, [&](int64_t i, int64_t j, int64_t) {
        m[j] += mean_in[i];
        d[j] += var_in[i] + mean_in[i] * mean_in[i];
      });
      v.resize(size);
      for (int64_t j = 0; j < size; ++j) {
        m[j] /= count;
        d[j] = d[j] / count - m[j] * m[j];
        v[j] = std::max(d[j], 0.0);
      }
    }
    for_each_row(mix, k, [&](int64_t i, int64_t j, int64_t c) {
      mix.mixed_mean[i] += rm[c] * m[j];
      mixed_var[i] += rv[c] * v[j];
    });
  }
  mix.inv_std.resize(rows);
  mix.scale.resize(rows);
  mix.shift.resize(rows);
  for (int64_t n = 0; n < num; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = n * channels + c;
      const double inv_std = 1.0 / std::sqrt(mixed_var[i] + eps);
      mix.inv_std[i] = inv_std;
      mix.scale[i] = weight[c] * inv_std;
      mix.shift[i] = bias[c] - mix.mixed_mean[i] * mix.scale[i];
    }
  }
  return mix;
}

std::vector<double> doubles(const torch::Tensor& t) {
  const auto d = t.to(at::kDouble).contiguous();
  return std::vector<double>(d.data_ptr<double>(),
                             d.data_ptr<double>() + d.numel());
}

// A double tensor holding values (cast to dtype by the caller).
torch::Tensor tensor_of(const std::vector<double>& values,
                        at::IntArrayRef shape) {
  auto out = torch::empty(shape, at::TensorOptions().dtype(at::kDouble));
  std::copy(values.begin(), values.end(), out.data_ptr<double>());
  return out;
}

void check_input(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), what,
              ": x must be contiguous (N, C, L), got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              what, ": float32 or float64 input, got ", x.scalar_type());
  TORCH_CHECK(x.numel() > 0, what, ": empty input");
}

void check_groups(const std::vector<int64_t>& groups, int64_t channels,
                  const torch::Tensor& ratios, const char* what) {
  TORCH_CHECK(!groups.empty(), what, ": no members");
  for (const int64_t g : groups) {
    TORCH_CHECK(g >= -1 && (g <= 0 || channels % g == 0), what,
                ": member groups must be -1 (IN), 0 (batch) or a divisor of ",
                channels, ", got ", g);
  }
  const int64_t K = groups.size();
  TORCH_CHECK(
      (ratios.dim() == 2 && ratios.size(0) == 2 && ratios.size(1) == K) ||
          (ratios.dim() == 3 && ratios.size(0) == 2 && ratios.size(1) == K &&
           ratios.size(2) == channels),
      what, ": ratios must be (2, ", K, ") or (2, ", K, ", ", channels,
      "), got ", ratios.sizes());
}

}  // namespace

std::vector<torch::Tensor> switchable_forward(
    const torch::Tensor& x, const torch::Tensor& weight,
    const torch::Tensor& bias, const torch::Tensor& ratios,
    const std::vector<int64_t>& groups, double eps,
    const c10::optional<torch::Tensor>& running_mean,
    const c10::optional<torch::Tensor>& running_var) {
  constexpr const char* what = "switchable_forward";
  check_input(x, what);
  const int64_t num = x.size(0), channels = x.size(1), length = x.size(2);
  check_groups(groups, channels, ratios, what);
  const int64_t rows = num * channels;
  const auto dtype = x.scalar_type();
  auto mean_in = torch::empty({num, channels}, x.options().dtype(at::kDouble));
  auto var_in = torch::empty_like(mean_in);
  double* mp = mean_in.data_ptr<double>();
  double* vp = var_in.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(dtype, what, [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_of(length), [&](int64_t b, int64_t e) {
      moments_of(xp, b, e, length, mp, vp);
    });
  });
  const auto w = doubles(weight), bs = doubles(bias);
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(), what,
              ": give both running statistics or neither");
  std::vector<double> running;
  if (running_mean.has_value()) {
    TORCH_CHECK(running_mean->numel() == channels &&
                    running_var->numel() == channels,
                what, ": running statistics need ", channels, " elements");
    running = doubles(torch::cat({running_mean->reshape(-1).to(at::kDouble),
                                  running_var->reshape(-1).to(at::kDouble)}));
  }
  const Mix mix =
      make_mix(mp, vp, num, channels, groups, ratios, w.data(), bs.data(),
               eps, running.empty() ? nullptr : running.data());
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(dtype, what, [&] {
    std::vector<scalar_t> scale(mix.scale.begin(), mix.scale.end());
    std::vector<scalar_t> shift(mix.shift.begin(), mix.shift.end());
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_of(length), [&](int64_t b, int64_t e) {
      affine_of(xp, yp, b, e, length, scale.data(), shift.data());
    });
  });
  std::vector<torch::Tensor> result{out, var_in, mean_in};
  for (int64_t k = 0; k < mix.members; ++k) {
    if (groups[k] != 0 || !running.empty()) continue;
    // The batch member's mean, second moment and variance, for recording.
    std::vector<double> sq(channels);
    for (int64_t c = 0; c < channels; ++c) {
      sq[c] = mix.diff[k][c] + mix.mean[k][c] * mix.mean[k][c];
    }
    result.push_back(tensor_of(mix.mean[k], {channels}).to(dtype));
    result.push_back(tensor_of(sq, {channels}).to(dtype));
    result.push_back(tensor_of(mix.var[k], {channels}).to(dtype));
  }
  return result;
}

std::vector<torch::Tensor> switchable_backward(
    const torch::Tensor& grad, const torch::Tensor& x,
    const torch::Tensor& var_in, const torch::Tensor& mean_in,
    const torch::Tensor& weight, const torch::Tensor& bias,
    const torch::Tensor& ratios, const std::vector<int64_t>& groups,
    double eps, bool input_grad) {
  constexpr const char* what = "switchable_backward";
  check_input(x, what);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() &&
                  grad.scalar_type() == x.scalar_type(),
              what, ": grad must be contiguous, of x's shape and dtype");
  const int64_t num = x.size(0), channels = x.size(1), length = x.size(2);
  check_groups(groups, channels, ratios, what);
  const int64_t rows = num * channels, K = groups.size();
  const auto dtype = x.scalar_type();
  const auto mean_d = mean_in.to(at::kDouble).contiguous();
  const auto var_d = var_in.to(at::kDouble).contiguous();
  const double* mean_i = mean_d.data_ptr<double>();
  const double* var_i = var_d.data_ptr<double>();
  std::vector<double> sum_g(rows), sum_gx(rows);
  AT_DISPATCH_FLOATING_TYPES(dtype, what, [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_of(length), [&](int64_t b, int64_t e) {
      grad_sums_of(gp, xp, b, e, length, sum_g.data(), sum_gx.data());
    });
  });
  const auto w = doubles(weight), bs = doubles(bias);
  const Mix mix = make_mix(mean_i, var_i, num, channels, groups, ratios,
                           w.data(), bs.data(), eps);
  // The backward of scale_shift: shift = bias - mean * scale.
  std::vector<double> grad_weight(channels, 0.0), grad_bias(channels, 0.0);
  std::vector<double> grad_mean(rows), grad_var(rows);
  for (int64_t n = 0; n < num; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t i = n * channels + c;
      const double grad_scale = sum_gx[i] - sum_g[i] * mix.mixed_mean[i];
      grad_bias[c] += sum_g[i];
      grad_weight[c] += grad_scale * mix.inv_std[i];
      grad_mean[i] = -sum_g[i] * mix.scale[i];
      // d rsqrt(v + eps) = -1/2 (v + eps)^(-3/2) dv.
      grad_var[i] =
          grad_scale * mix.scale[i] * mix.inv_std[i] * mix.inv_std[i] * -0.5;
    }
  }
  // The backward of mix and member_moments.
  std::vector<double> grad_ratios(2 * K * channels, 0.0);
  std::vector<double> grad_mean_in(rows, 0.0), grad_var_in(rows, 0.0),
      grad_sq_in(rows, 0.0);
  for (int64_t k = 0; k < K; ++k) {
    const double* rm = mix.ratio(0, k);
    const double* rv = mix.ratio(1, k);
    double* grm = grad_ratios.data() + k * channels;
    double* grv = grad_ratios.data() + (K + k) * channels;
    if (groups[k] < 0) {
      for_each_row(mix, k, [&](int64_t i, int64_t, int64_t c) {
        grm[c] += grad_mean[i] * mean_i[i];
        grv[c] += grad_var[i] * var_i[i];
        grad_mean_in[i] += grad_mean[i] * rm[c];
        grad_var_in[i] += grad_var[i] * rv[c];
      });
      continue;
    }
    const auto& m = mix.mean[k];
    const auto& v = mix.var[k];
    std::vector<double> g_mean(mix.size(k), 0.0), g_var(mix.size(k), 0.0);
    for_each_row(mix, k, [&](int64_t i, int64_t j, int64_t c) {
      grm[c] += grad_mean[i] * m[j];
      grv[c] += grad_var[i] * v[j];
      g_mean[j] += grad_mean[i] * rm[c];
      g_var[j] += grad_var[i] * rv[c];
    });
    // var = max(sq - mean^2, 0); sq and mean are means of count IN rows.
    const double count = mix.count(k);
    for (size_t j = 0; j < g_mean.size(); ++j) {
      const double g_sq = mix.diff[k][j] >= 0 ? g_var[j] : 0.0;
      g_var[j] = g_sq / count;
      g_mean[j] = (g_mean[j] - 2 * m[j] * g_sq) / count;
    }
    for_each_row(mix, k, [&](int64_t i, int64_t j, int64_t) {
      grad_mean_in[i] += g_mean[j];
      grad_sq_in[i] += g_var[j];
    });
  }
  // sq_in = var_in + mean_in^2.
  for (int64_t i = 0; i < rows; ++i) {
    grad_var_in[i] += grad_sq_in[i];
    grad_mean_in[i] += 2 * mean_i[i] * grad_sq_in[i];
  }
  torch::Tensor grad_x;
  if (input_grad) {
    grad_x = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(dtype, what, [&] {
      // dvar_in/dx = 2 (x - mean_in) / (L - 1); dmean_in/dx = 1 / L.
      const double var_coef = length > 1 ? 2.0 / (length - 1) : 0.0;
      std::vector<scalar_t> scale(rows), centre(rows), coef(rows),
          constant(rows);
      for (int64_t i = 0; i < rows; ++i) {
        scale[i] = mix.scale[i];
        centre[i] = mean_i[i];
        coef[i] = grad_var_in[i] * var_coef;
        constant[i] = grad_mean_in[i] / length;
      }
      const scalar_t* gp = grad.data_ptr<scalar_t>();
      const scalar_t* xp = x.data_ptr<scalar_t>();
      scalar_t* dp = grad_x.data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain_of(length), [&](int64_t b, int64_t e) {
        grad_input_of(gp, xp, dp, b, e, length, scale.data(), centre.data(),
                      coef.data(), constant.data());
      });
    });
  }
  auto grad_r = tensor_of(grad_ratios, {2, K, channels});
  if (ratios.dim() == 2) grad_r = grad_r.sum(-1);
  return {grad_x, tensor_of(grad_weight, {channels}).to(dtype),
          tensor_of(grad_bias, {channels}).to(dtype), grad_r.to(dtype)};
}
