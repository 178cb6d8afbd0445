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
// (x - k)^2, the latter in vector lanes across rows.  Short float rows (7x7
// maps) would pay a horizontal sum each, as GroupNorm's statistics pay none;
// on AVX-512 CPUs 16 rows are reduced together instead.  Then
//   sum_c M2_c = sum (x - k)^2 - L * sum_c (m_c - k)^2,
// whose rounding error is relative to var_ln (which contains the spread of
// the channel means), not to the within-channel part.  Partial sums are
// taken in T lanes over at most kBlock elements and added up in double.
// Pass 2 writes the rows while they are still in the thread's cache: the
// memory traffic of GroupNorm's kernel.
#include "kernels.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define SSN_NORM_AVX512
#include <immintrin.h>
#endif

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

// Rows [0, rows) of one sample (rows of `length`, shift k): offset[r] = mean
// of row r minus k; sq[r] = a part of the rows' sum of (x - k)^2 (0 for most
// rows; the parts add up to the whole).
template <typename T>
SSN_NORM_CLONES void moments_generic(const T* x, int64_t rows, int64_t length,
                                     T k, double* offset, double* sq) {
  const int64_t rows_per_flush = std::max<int64_t>(1, kBlock / length);
  alignas(64) T sq_lanes[kLanes] = {};
  double sq_pending = 0;
  int64_t since_flush = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * length;
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
    if (r + 1 == rows || ++since_flush == rows_per_flush) {
      sq[r] = sq_pending + lane_total(sq_lanes);
      std::fill(sq_lanes, sq_lanes + kLanes, T(0));
      sq_pending = 0;
      since_flush = 0;
    } else {
      sq[r] = 0;
    }
  }
}

#ifdef SSN_NORM_AVX512
// Short float rows (7x7, 14x14 maps) on AVX-512: the generic loop pays a
// horizontal sum per row, which costs as much as reading the row.  Here 16
// rows keep one lane vector each and the 16 vectors are reduced together
// (four shuffle-and-add rounds for all of them); a masked load reads each
// row's tail.  Terms per float lane: at most kShortRow / 16 for a row sum,
// kShortRow for the squares of 16 rows (kBlock / kLanes in the generic loop).
constexpr int64_t kShortRow = 256;

#define SSN_NORM_TARGET_AVX512 __attribute__((target("avx512f")))

// Lane vector of row's sum of (x - k); adds (x - k)^2 to sq.
SSN_NORM_TARGET_AVX512 inline __m512 row_lanes(const float* row,
                                               int64_t length, __m512 k,
                                               __mmask16 tail, __m512* sq) {
  __m512 sum = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= length; i += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(row + i), k);
    sum = _mm512_add_ps(sum, d);
    *sq = _mm512_fmadd_ps(d, d, *sq);
  }
  if (tail) {
    const __m512 d =
        _mm512_maskz_sub_ps(tail, _mm512_maskz_loadu_ps(tail, row + i), k);
    sum = _mm512_add_ps(sum, d);
    *sq = _mm512_fmadd_ps(d, d, *sq);
  }
  return sum;
}

// The lane totals of v[0..15]: lane 4q + m of the result is the total of
// v[4m + q].
SSN_NORM_TARGET_AVX512 inline __m512 transposed_totals(const __m512* v) {
  __m512 halves[8], quarters[4], eighths[2];
  for (int i = 0; i < 8; ++i) {  // 256-bit halves of v[2i], v[2i+1]
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44),
                              _mm512_shuffle_f32x4(a, b, 0xEE));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit quarters
    const __m512 a = halves[2 * i], b = halves[2 * i + 1];
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88),
                                _mm512_shuffle_f32x4(a, b, 0xDD));
  }
  for (int i = 0; i < 2; ++i) {  // pairs within each quarter
    const __m512 a = quarters[2 * i], b = quarters[2 * i + 1];
    eighths[i] =
        _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                      _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  const __m512 a = eighths[0], b = eighths[1];
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

// moments_generic for float rows of at most kShortRow elements.
SSN_NORM_TARGET_AVX512 void moments_short_avx512(const float* x, int64_t rows,
                                                 int64_t length, float k,
                                                 double* offset, double* sq) {
  const __m512 shift = _mm512_set1_ps(k);
  const auto tail = static_cast<__mmask16>((1u << (length % 16)) - 1);
  int64_t r = 0;
  for (; r + 16 <= rows; r += 16) {
    __m512 sq_lanes = _mm512_setzero_ps(), lanes[16];
    for (int j = 0; j < 16; ++j) {
      lanes[j] = row_lanes(x + (r + j) * length, length, shift, tail,
                           &sq_lanes);
    }
    alignas(64) float totals[16];
    _mm512_store_ps(totals, transposed_totals(lanes));
    for (int j = 0; j < 16; ++j) {
      offset[r + j] = static_cast<double>(totals[4 * (j % 4) + j / 4]) / length;
      sq[r + j] = 0;
    }
    sq[r + 15] = _mm512_reduce_add_ps(sq_lanes);
  }
  for (; r < rows; ++r) {
    __m512 sq_lanes = _mm512_setzero_ps();
    const __m512 lanes =
        row_lanes(x + r * length, length, shift, tail, &sq_lanes);
    offset[r] = static_cast<double>(_mm512_reduce_add_ps(lanes)) / length;
    sq[r] = _mm512_reduce_add_ps(sq_lanes);
  }
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}
#else
bool cpu_has_avx512() { return false; }
#endif

template <typename T>
void rows_moments(const T* x, int64_t rows, int64_t length, T k,
                  double* offset, double* sq, bool short_row_simd) {
#ifdef SSN_NORM_AVX512
  if constexpr (std::is_same<T, float>::value) {
    if (short_row_simd && length <= kShortRow && cpu_has_avx512()) {
      moments_short_avx512(x, rows, length, k, offset, sq);
      return;
    }
  }
#endif
  moments_generic(x, rows, length, k, offset, sq);
}

// y = (x - k) * scale + shift for rows of one sample, k its shift: x - k is
// exact or small, so y keeps its precision where x is large against its
// spread.
template <typename T>
SSN_NORM_CLONES void rows_affine(const T* x, T* y, int64_t rows,
                                 int64_t length, T k, const T* scale,
                                 const T* shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const T a = scale[r], b = shift[r];
    const T* in = x + r * length;
    T* out = y + r * length;
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) out[i] = (in[i] - k) * a + b;
  }
}

// fn(first_row, rows, sample) for the pieces of rows [begin, end) that lie
// in one sample each.
template <typename F>
void for_each_sample_piece(int64_t begin, int64_t end, int64_t channels,
                           const F& fn) {
  while (begin < end) {
    const int64_t rows = std::min(end, (begin / channels + 1) * channels) -
                         begin;
    fn(begin, rows, begin / channels);
    begin += rows;
  }
}

template <typename T>
void forward(const T* x, const T* weight, const T* bias, T* y, int64_t num,
             int64_t channels, int64_t length, double eps,
             bool short_row_simd) {
  const int64_t rows = num * channels;
  std::unique_ptr<T[]> sample_shift(new T[num]);
  for (int64_t n = 0; n < num; ++n) sample_shift[n] = x[n * channels * length];
  std::unique_ptr<double[]> offset(new double[rows]), sq(new double[rows]);
  std::unique_ptr<T[]> scale(new T[rows]), shift(new T[rows]);
  // Same range and grain in both passes: a thread writes the rows it read.
  const int64_t grain = std::max<int64_t>(1, 16384 / length);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for_each_sample_piece(
        begin, end, channels, [&](int64_t first, int64_t count, int64_t n) {
          rows_moments(x + first * length, count, length, sample_shift[n],
                       offset.get() + first, sq.get() + first,
                       short_row_simd);
        });
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
    for_each_sample_piece(
        begin, end, channels, [&](int64_t first, int64_t count, int64_t n) {
          rows_affine(x + first * length, y + first * length, count, length,
                      sample_shift[n], scale.get() + first,
                      shift.get() + first);
        });
  });
}

}  // namespace

torch::Tensor layer_norm_released(const torch::Tensor& input,
                                  const torch::Tensor& weight,
                                  const torch::Tensor& bias, double eps,
                                  bool short_row_simd) {
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
                      channels, length, eps, short_row_simd);
  });
  return y;
}

bool short_row_simd() { return cpu_has_avx512(); }
