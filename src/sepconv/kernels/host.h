// What the host files of the extension (bindings.cpp, program.cpp) share.
#pragma once

#include <torch/extension.h>

namespace sepconv {

// A kernel's output: the view a running Program planned for this step if it fits (sizes,
// dtype, memory format of `options`), else a new tensor.
at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options);

// Registers sepconv._C.Program.
void bind_program(pybind11::module& m);

}  // namespace sepconv
