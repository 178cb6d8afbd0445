// Python bindings of ssn_norm._ext; the Python side is ssn_norm/ops/native.py.
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
  m.def("switchable_forward", &switchable_forward,
        "SN/SSN forward of contiguous (N, C, L) float32/float64 CPU input: "
        "[out, var_in, mean_in] (IN moments in float64), then, in training, "
        "the batch member's mean, second moment and variance if any. "
        "groups[k]: -1 IN, 0 over the batch, G > 0 per sample over G "
        "channel groups; ratios (2, K) or (2, K, C); the running statistics "
        "(eval) replace the batch member's moments.",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"),
        pybind11::arg("ratios"), pybind11::arg("groups"), pybind11::arg("eps"),
        pybind11::arg("running_mean") = pybind11::none(),
        pybind11::arg("running_var") = pybind11::none());
  m.def("switchable_backward", &switchable_backward,
        "Training backward of switchable_forward from the output gradient: "
        "[grad_x (undefined unless input_grad), grad_weight, grad_bias, "
        "grad_ratios (as ratios)].",
        pybind11::arg("grad"), pybind11::arg("x"), pybind11::arg("var_in"),
        pybind11::arg("mean_in"), pybind11::arg("weight"),
        pybind11::arg("bias"), pybind11::arg("ratios"),
        pybind11::arg("groups"), pybind11::arg("eps"),
        pybind11::arg("input_grad"));
}
