// The LN of a switchable norm with the released numerics, for inference, in
// one call: per-channel sums, their per-sample mix, y = (x - k) * a + b.
//
// The released code derives LN from the unbiased IN moments:
//   mean_ln = mean_c(m_c)
//   var_ln  = mean_c(var_c + m_c^2) - mean_ln^2      (var_c unbiased)
//           = (sum_c M2_c / (L - 1) + sum_c (m_c - mean_ln)^2) / C
// with M2_c the squared deviations of channel c about its mean m_c over its
// L positions.  That is GroupNorm(1, C) only up to the unbiased correction,
// so it needs the channel means, which GroupNorm never takes.
//
// Pass 1 reads each row (one channel of one sample) once and keeps, about the
// sample's first element k: the row's sum of (x - k) and the sample's sum of
// (x - k)^2, the latter in vector lanes across rows, so short rows (7x7 maps)
// pay one horizontal sum each, as GroupNorm's statistics pay none.  Then
//   sum_c M2_c = sum (x - k)^2 - L * sum_c (m_c - k)^2,
// whose rounding error is relative to var_ln (which contains the spread of
// the channel means), not to the within-channel part.  Partial sums are
// taken in T lanes over at most kBlock elements and added up in double.
// Pass 2 writes the rows while they are still in the thread's cache: the
// memory traffic of GroupNorm's kernel.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>

namespace {

constexpr int64_t kLanes = 16;
constexpr int64_t kBlock = 4096;  // elements per lane-sum before flushing

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
// One build for every x86-64 CPU; the best clone is picked at load time.
#define SSN_NORM_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SSN_NORM_CLONES
#endif

// Sum of the lanes, as a tree (the compiler vectorises the halving steps).
template <typename T>
inline double lane_total(const T* lanes) {
  T half[kLanes / 2];
  for (int64_t j = 0; j < kLanes / 2; ++j) {
    half[j] = lanes[j] + lanes[j + kLanes / 2];
  }
  for (int64_t j = 0; j < kLanes / 4; ++j) half[j] += half[j + kLanes / 4];
  return (static_cast<double>(half[0]) + half[2]) +
         (static_cast<double>(half[1]) + half[3]);
}

// Rows [first, first + rows) of x (rows of `length`, `channels` rows per
// sample): offset[r] = mean of the row minus its sample's shift; sq[r] = a
// part of the sample's sum of squared shifted values (0 for most rows; the
// parts of one sample add up to the whole).
template <typename T>
SSN_NORM_CLONES void rows_moments(const T* x, int64_t first, int64_t rows,
                                  int64_t channels, int64_t length,
                                  const T* sample_shift, double* offset,
                                  double* sq) {
  const int64_t rows_per_flush = std::max<int64_t>(1, kBlock / length);
  alignas(64) T sq_lanes[kLanes] = {};
  double sq_pending = 0;
  int64_t since_flush = 0;
  int64_t sample = first / channels, channel = first % channels;
  for (int64_t r = first; r < first + rows; ++r) {
    const T* row = x + r * length;
    const T k = sample_shift[sample];
    double row_sum = 0;
    alignas(64) T sum_lanes[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= length; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const T d = row[i + j] - k;
        sum_lanes[j] += d;
        sq_lanes[j] += d * d;
      }
      if ((i + kLanes) % kBlock == 0) {
        row_sum += lane_total(sum_lanes);
        sq_pending += lane_total(sq_lanes);
        std::fill(sum_lanes, sum_lanes + kLanes, T(0));
        std::fill(sq_lanes, sq_lanes + kLanes, T(0));
      }
    }
    for (; i < length; ++i) {
      const T d = row[i] - k;
      sum_lanes[0] += d;
      sq_lanes[0] += d * d;
    }
    offset[r] = (row_sum + lane_total(sum_lanes)) / length;
    const bool sample_ends = ++channel == channels;
    if (sample_ends) {
      channel = 0;
      ++sample;
    }
    const bool flush = sample_ends || r + 1 == first + rows ||
                       ++since_flush == rows_per_flush;
    if (flush) {
      sq[r] = sq_pending + lane_total(sq_lanes);
      std::fill(sq_lanes, sq_lanes + kLanes, T(0));
      sq_pending = 0;
      since_flush = 0;
    } else {
      sq[r] = 0;
    }
  }
}

// y = (x - k) * scale + shift with k the sample's shift: x - k is exact or
// small, so y keeps its precision where x is large against its spread.
template <typename T>
SSN_NORM_CLONES void rows_affine(const T* x, T* y, int64_t first, int64_t rows,
                                 int64_t channels, int64_t length,
                                 const T* sample_shift, const T* scale,
                                 const T* shift) {
  int64_t sample = first / channels, channel = first % channels;
  for (int64_t r = first; r < first + rows; ++r) {
    const T k = sample_shift[sample], a = scale[r], b = shift[r];
    const T* in = x + r * length;
    T* out = y + r * length;
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) out[i] = (in[i] - k) * a + b;
    if (++channel == channels) {
      channel = 0;
      ++sample;
    }
  }
}

template <typename T>
void forward(const T* x, const T* weight, const T* bias, T* y, int64_t num,
             int64_t channels, int64_t length, double eps) {
  const int64_t rows = num * channels;
  std::unique_ptr<T[]> sample_shift(new T[num]);
  for (int64_t n = 0; n < num; ++n) sample_shift[n] = x[n * channels * length];
  std::unique_ptr<double[]> offset(new double[rows]), sq(new double[rows]);
  std::unique_ptr<T[]> scale(new T[rows]), shift(new T[rows]);
  // Same range and grain in both passes: a thread writes the rows it read.
  const int64_t grain = std::max<int64_t>(1, 16384 / length);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    rows_moments(x, begin, end - begin, channels, length, sample_shift.get(),
                 offset.get(), sq.get());
  });
  // Released numerics: unbiased channel variances; one element has none
  // (variance 0).
  const double correction = length > 1 ? 1.0 / (length - 1) : 0.0;
  at::parallel_for(0, num, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const double* off = offset.get() + n * channels;
      const double* part = sq.get() + n * channels;
      double mean_off = 0, sum_sq = 0, sum_off_sq = 0;
      for (int64_t c = 0; c < channels; ++c) {
        mean_off += off[c];
        sum_sq += part[c];
        sum_off_sq += off[c] * off[c];
      }
      mean_off /= channels;
      double spread = 0;
      for (int64_t c = 0; c < channels; ++c) {
        const double d = off[c] - mean_off;
        spread += d * d;
      }
      const double within = std::max(sum_sq - length * sum_off_sq, 0.0);
      const double var_ln = (within * correction + spread) / channels;
      const double rstd = 1.0 / std::sqrt(var_ln + eps);
      for (int64_t c = 0; c < channels; ++c) {
        // Relative to the sample's shift, see rows_affine.
        const double a = static_cast<double>(weight[c]) * rstd;
        scale[n * channels + c] = static_cast<T>(a);
        shift[n * channels + c] =
            static_cast<T>(static_cast<double>(bias[c]) - mean_off * a);
      }
    }
  });
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    rows_affine(x, y, begin, end - begin, channels, length, sample_shift.get(),
                scale.get(), shift.get());
  });
}

torch::Tensor layer_norm_released(const torch::Tensor& input,
                                  const torch::Tensor& weight,
                                  const torch::Tensor& bias, double eps) {
  TORCH_CHECK(input.device().is_cpu(),
              "layer_norm_released: CPU tensors only");
  TORCH_CHECK(input.dim() >= 2,
              "layer_norm_released: input must be (N, C, *), got ",
              input.sizes());
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "layer_norm_released: float32 or float64 input, got ", dtype);
  const int64_t num = input.size(0), channels = input.size(1);
  TORCH_CHECK(weight.numel() == channels && bias.numel() == channels,
              "layer_norm_released: weight and bias need ", channels,
              " elements, got ", weight.numel(), " and ", bias.numel());
  const auto x = input.contiguous();
  const auto w = weight.to(dtype).contiguous();
  const auto b = bias.to(dtype).contiguous();
  auto y = torch::empty_like(x, at::MemoryFormat::Contiguous);
  if (x.numel() == 0) return y;
  const int64_t length = x.numel() / (num * channels);
  AT_DISPATCH_FLOATING_TYPES(dtype, "layer_norm_released", [&] {
    forward<scalar_t>(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                      b.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), num,
                      channels, length, eps);
  });
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_norm_released", &layer_norm_released,
        "Inference LN of a switchable norm with the released numerics "
        "(unbiased channel variances); (N, C, *) float32/float64, CPU.",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("eps"));
}
