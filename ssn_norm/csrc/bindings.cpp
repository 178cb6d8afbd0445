// Python bindings of ssn_norm._ext; the Python side is the C++ kernel
// provider in ssn_norm/ops/providers.py.
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("layer_norm_released", &layer_norm_released,
        "Inference LN of a switchable norm with the released numerics "
        "(unbiased channel variances); (N, C, *) float32/float64, CPU. "
        "short_row_simd=False keeps short rows on the generic loop.",
        pybind11::arg("input"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("eps"), pybind11::arg("short_row_simd") = true);
  m.def("short_row_simd", &short_row_simd,
        "Whether short float rows take the AVX-512 path on this CPU.");
  m.def("row_moments", &row_moments,
        "[var, mean] (N, C) of the rows of contiguous (N, C, *) "
        "float32/float64 CPU input: the unbiased variance (0 for one "
        "element) and the mean, in x's dtype (accumulated in double).",
        pybind11::arg("x"));
  m.def("affine_rows", &affine_rows,
        "x * scale + shift per row; scale and shift (N, C) in x's dtype.",
        pybind11::arg("x"), pybind11::arg("scale"), pybind11::arg("shift"));
  m.def("grad_sums", &grad_sums,
        "[sum g, sum g*x] (N, C) of each row, in x's dtype (accumulated in "
        "double).",
        pybind11::arg("grad"), pybind11::arg("x"));
  m.def("grad_input", &grad_input,
        "grad * scale + (x - centre) * coef * coef_scale + constant * "
        "constant_scale per row; the factors (N, C) in x's dtype.",
        pybind11::arg("grad"), pybind11::arg("x"), pybind11::arg("scale"),
        pybind11::arg("centre"), pybind11::arg("coef"),
        pybind11::arg("constant"), pybind11::arg("coef_scale") = 1.0,
        pybind11::arg("constant_scale") = 1.0);
}
