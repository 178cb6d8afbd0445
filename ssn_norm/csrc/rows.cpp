// The passes of SN/SSN over all N*C*L elements, on CPU: the C++ kernel
// provider of ssn_norm/ops/providers.py.  The O(N*C) part of the layer (the
// members' moments, their mix and its backward) is ssn_norm/ops/moments.py's
// alone; nothing here knows a formula of it.
//
// x is a contiguous (N, C, *) tensor, viewed as rows r = (n, c) of length L:
//   row_moments: per-row mean and unbiased variance (0 for L = 1);
//   affine_rows: y = x * scale + shift with per-row factors;
//   grad_sums:   per-row sum g and sum g*x;
//   grad_input:  dx = g * scale + (x - centre) * coef * p + constant * q
//                per row (p, q: two numbers of the caller's).
// Per-row results and factors are (N, C) in x's dtype; rows run in parallel,
// accumulating in double.
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

// Two vectors of double accumulators: two independent dependency chains.
constexpr int64_t kLanes = 16;

SSN_NORM_INLINE double lane_total(const double* lanes) {
  double half[kLanes / 2];
  for (int64_t j = 0; j < kLanes / 2; ++j) half[j] = lanes[j] + lanes[j + 8];
  return ((half[0] + half[4]) + (half[2] + half[6])) +
         ((half[1] + half[5]) + (half[3] + half[7]));
}

// ------------------------------------------------------------ row passes
template <typename T>
SSN_NORM_INLINE void moments_rows(const T* x, int64_t begin, int64_t end,
                                  int64_t length, T* mean, T* var) {
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
    mean[r] = static_cast<T>(m);
    // The released IN variance: unbiased, 0 for a single element.
    var[r] = static_cast<T>(length > 1 ? lane_total(lanes) / (length - 1)
                                       : 0.0);
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
                                    int64_t end, int64_t length, T* sum_g,
                                    T* sum_gx) {
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
    sum_g[r] = static_cast<T>(lane_total(lg));
    sum_gx[r] = static_cast<T>(lane_total(lgx));
  }
}

template <typename T>
SSN_NORM_INLINE void grad_input_rows(const T* g, const T* x, T* dx,
                                     int64_t begin, int64_t end,
                                     int64_t length, const T* scale,
                                     const T* centre, const T* coef,
                                     const T* constant, T p, T q) {
  for (int64_t r = begin; r < end; ++r) {
    const T a = scale[r], m = centre[r], k = coef[r] * p, b = constant[r] * q;
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
                                   int64_t l, T* m, T* v) {                  \
    moments_rows<T>(x, b, e, l, m, v);                                        \
  }                                                                           \
  SSN_NORM_CLONES void affine_##S(const T* x, T* y, int64_t b, int64_t e,    \
                                  int64_t l, const T* a, const T* s) {       \
    affine_rows<T>(x, y, b, e, l, a, s);                                      \
  }                                                                           \
  SSN_NORM_CLONES void grad_sums_##S(const T* g, const T* x, int64_t b,      \
                                     int64_t e, int64_t l, T* sg, T* sgx) {  \
    grad_sums_rows<T>(g, x, b, e, l, sg, sgx);                                \
  }                                                                           \
  SSN_NORM_CLONES void grad_input_##S(const T* g, const T* x, T* dx,         \
                                      int64_t b, int64_t e, int64_t l,       \
                                      const T* a, const T* m, const T* k,    \
                                      const T* c, T p, T q) {                 \
    grad_input_rows<T>(g, x, dx, b, e, l, a, m, k, c, p, q);                  \
  }

SSN_NORM_ROW_KERNELS(float, float)
SSN_NORM_ROW_KERNELS(double, double)

void moments_of(const float* x, int64_t b, int64_t e, int64_t l, float* m,
                float* v) {
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
                  int64_t l, float* sg, float* sgx) {
  grad_sums_float(g, x, b, e, l, sg, sgx);
}
void grad_sums_of(const double* g, const double* x, int64_t b, int64_t e,
                  int64_t l, double* sg, double* sgx) {
  grad_sums_double(g, x, b, e, l, sg, sgx);
}
void grad_input_of(const float* g, const float* x, float* dx, int64_t b,
                   int64_t e, int64_t l, const float* a, const float* m,
                   const float* k, const float* c, float p, float q) {
  grad_input_float(g, x, dx, b, e, l, a, m, k, c, p, q);
}
void grad_input_of(const double* g, const double* x, double* dx, int64_t b,
                   int64_t e, int64_t l, const double* a, const double* m,
                   const double* k, const double* c, double p, double q) {
  grad_input_double(g, x, dx, b, e, l, a, m, k, c, p, q);
}

// Rows per parallel task: about 32k elements each.
int64_t grain_of(int64_t length) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(length, 1));
}


// Rows (N * C) and their length of a contiguous (N, C, *) tensor.
struct Rows {
  int64_t rows, length;
};

Rows check_x(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.device().is_cpu(), what, ": CPU tensors only");
  TORCH_CHECK(x.dim() >= 2 && x.is_contiguous(), what,
              ": x must be a contiguous (N, C, *) tensor, got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              what, ": float32 or float64 input, got ", x.scalar_type());
  const int64_t rows = x.size(0) * x.size(1);
  TORCH_CHECK(rows > 0 && x.numel() > 0, what, ": empty input");
  return {rows, x.numel() / rows};
}

void check_same(const torch::Tensor& t, const torch::Tensor& x,
                const char* what, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == x.scalar_type() &&
                  t.is_contiguous(),
              what, ": ", name, " must be a contiguous CPU tensor of x's "
              "dtype");
}

void check_factor(const torch::Tensor& f, const torch::Tensor& x,
                  const Rows& r, const char* what, const char* name) {
  check_same(f, x, what, name);
  TORCH_CHECK(f.numel() == r.rows, what, ": ", name, " needs one value per "
              "row (N * C = ", r.rows, "), got ", f.numel());
}

// (N, C) of x's dtype.
torch::Tensor per_row(const torch::Tensor& x) {
  return torch::empty({x.size(0), x.size(1)}, x.options());
}

}  // namespace

std::vector<torch::Tensor> row_moments(const torch::Tensor& x) {
  constexpr const char* what = "row_moments";
  const Rows r = check_x(x, what);
  auto mean = per_row(x), var = per_row(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), what, [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* mp = mean.data_ptr<scalar_t>();
    scalar_t* vp = var.data_ptr<scalar_t>();
    at::parallel_for(0, r.rows, grain_of(r.length),
                     [&](int64_t b, int64_t e) {
                       moments_of(xp, b, e, r.length, mp, vp);
                     });
  });
  return {var, mean};
}

torch::Tensor affine_rows(const torch::Tensor& x, const torch::Tensor& scale,
                          const torch::Tensor& shift) {
  constexpr const char* what = "affine_rows";
  const Rows r = check_x(x, what);
  check_factor(scale, x, r, what, "scale");
  check_factor(shift, x, r, what, "shift");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), what, [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* ap = scale.data_ptr<scalar_t>();
    const scalar_t* sp = shift.data_ptr<scalar_t>();
    scalar_t* yp = out.data_ptr<scalar_t>();
    at::parallel_for(0, r.rows, grain_of(r.length),
                     [&](int64_t b, int64_t e) {
                       affine_of(xp, yp, b, e, r.length, ap, sp);
                     });
  });
  return out;
}

std::vector<torch::Tensor> grad_sums(const torch::Tensor& grad,
                                     const torch::Tensor& x) {
  constexpr const char* what = "grad_sums";
  const Rows r = check_x(x, what);
  check_same(grad, x, what, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), what, ": grad must have x's shape");
  auto sum_g = per_row(x), sum_gx = per_row(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), what, [&] {
    const scalar_t* gp = grad.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* sg = sum_g.data_ptr<scalar_t>();
    scalar_t* sgx = sum_gx.data_ptr<scalar_t>();
    at::parallel_for(0, r.rows, grain_of(r.length),
                     [&](int64_t b, int64_t e) {
                       grad_sums_of(gp, xp, b, e, r.length, sg, sgx);
                     });
  });
  return {sum_g, sum_gx};
}

torch::Tensor grad_input(const torch::Tensor& grad, const torch::Tensor& x,
                         const torch::Tensor& scale,
                         const torch::Tensor& centre,
                         const torch::Tensor& coef,
                         const torch::Tensor& constant, double coef_scale,
                         double constant_scale) {
  constexpr const char* what = "grad_input";
  const Rows r = check_x(x, what);
  check_same(grad, x, what, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes(), what, ": grad must have x's shape");
  check_factor(scale, x, r, what, "scale");
  check_factor(centre, x, r, what, "centre");
  check_factor(coef, x, r, what, "coef");
  check_factor(constant, x, r, what, "constant");
  auto out = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), what, [&] {
    at::parallel_for(0, r.rows, grain_of(r.length), [&](int64_t b,
                                                         int64_t e) {
      grad_input_of(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                    out.data_ptr<scalar_t>(), b, e, r.length,
                    scale.data_ptr<scalar_t>(), centre.data_ptr<scalar_t>(),
                    coef.data_ptr<scalar_t>(), constant.data_ptr<scalar_t>(),
                    static_cast<scalar_t>(coef_scale),
                    static_cast<scalar_t>(constant_scale));
    });
  });
  return out;
}
