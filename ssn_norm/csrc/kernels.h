// The C++ kernels of ssn_norm._ext (bound to Python in bindings.cpp).
#pragma once

#include <torch/extension.h>

#include <vector>

// layer_norm_released.cpp: inference LN of a switchable norm.
torch::Tensor layer_norm_released(const torch::Tensor& input,
                                  const torch::Tensor& weight,
                                  const torch::Tensor& bias, double eps,
                                  bool short_row_simd);
bool short_row_simd();

// switchable_norm_train.cpp: SN/SSN forward (training, or eval with the
// running statistics) and training backward.
std::vector<torch::Tensor> switchable_forward(
    const torch::Tensor& x, const torch::Tensor& weight,
    const torch::Tensor& bias, const torch::Tensor& ratios,
    const std::vector<int64_t>& groups, double eps,
    const c10::optional<torch::Tensor>& running_mean,
    const c10::optional<torch::Tensor>& running_var);
std::vector<torch::Tensor> switchable_backward(
    const torch::Tensor& grad, const torch::Tensor& x,
    const torch::Tensor& var_in, const torch::Tensor& mean_in,
    const torch::Tensor& weight, const torch::Tensor& bias,
    const torch::Tensor& ratios, const std::vector<int64_t>& groups,
    double eps, bool input_grad);
