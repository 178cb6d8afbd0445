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

// rows.cpp: the passes over the rows (n, c) of SN/SSN's (N, C, *) input.
std::vector<torch::Tensor> row_moments(const torch::Tensor& x);
torch::Tensor affine_rows(const torch::Tensor& x, const torch::Tensor& scale,
                          const torch::Tensor& shift);
std::vector<torch::Tensor> grad_sums(const torch::Tensor& grad,
                                     const torch::Tensor& x);
torch::Tensor grad_input(const torch::Tensor& grad, const torch::Tensor& x,
                         const torch::Tensor& scale,
                         const torch::Tensor& centre,
                         const torch::Tensor& coef,
                         const torch::Tensor& constant, double coef_scale,
                         double constant_scale);
