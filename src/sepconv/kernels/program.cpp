// An optimized model's graph run in one call (convert/program.py builds it). Each step is an
// operator of the dispatcher (ATen's, or sepconv's kernels registered as sepconv::gemm and
// the like) called boxed, with its constant arguments converted once; activations live in
// slots and are dropped after their last use. The native kernels write their outputs into
// one arena, at offsets planned from the activations' lifetimes, so that no step allocates:
// an allocator hands large blocks back to the OS and faults their pages in again on every
// call (a quarter of MobileNetV2's time at batch 8). Python's per-node cost goes with it.
#include <torch/extension.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/python/pybind_utils.h>

#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "host.h"

namespace sepconv {

namespace {
thread_local const at::Tensor* output_hint = nullptr;
}

at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const at::Tensor* hint = output_hint;
  output_hint = nullptr;   // one output per step: a kernel's own scratch never takes it
  const auto format = options.memory_format_opt().value_or(at::MemoryFormat::Contiguous);
  if (hint && hint->sizes() == sizes && hint->scalar_type() == c10::typeMetaToScalarType(options.dtype()) &&
      hint->is_contiguous(format))
    return *hint;
  return at::empty(sizes, options);
}

namespace {

struct Step {
  c10::OperatorHandle op;
  std::vector<c10::IValue> args;                  // the constants; slot arguments are filled per call
  std::vector<std::pair<size_t, int64_t>> slots;  // (argument, slot)
  std::vector<std::pair<size_t, std::vector<int64_t>>> slot_lists;   // (argument, slots of a Tensor[])
  std::vector<int64_t> outs;                      // a slot per returned value (-1: unused)
  std::vector<int64_t> frees;                     // slots whose last use this step is
  at::Tensor hint;                                // the output's place in the arena, or undefined
};

class Program {
 public:
  explicit Program(int64_t n_slots) : n_slots_(n_slots) {}

  // Operator `name` (e.g. "aten::add") with `overload` ("Tensor"); `args` holds every argument
  // of its schema in order: a value, or None where `slots[i]` (>= 0) names the slot that feeds
  // it; `lists[i]` the slots of a Tensor[] argument made of activations.
  void add_step(const std::string& name, const std::string& overload, const py::list& args,
                const std::vector<int64_t>& slots, const std::vector<std::vector<int64_t>>& lists,
                const std::vector<int64_t>& outs, const std::vector<int64_t>& frees) {
    auto handle = c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), overload.c_str());
    const auto& schema = handle.schema();
    TORCH_CHECK(args.size() == schema.arguments().size() && slots.size() == args.size() &&
                lists.size() == args.size(), "sepconv program: ", name, " takes ", schema.arguments().size(),
                " arguments");
    Step step{handle, {}, {}, {}, outs, frees, {}};
    for (size_t i = 0; i < args.size(); ++i) {
      check_slot(slots[i]);
      for (int64_t s : lists[i]) check_slot(s);
      if (slots[i] >= 0) {
        step.args.emplace_back();
        step.slots.emplace_back(i, slots[i]);
      } else if (!lists[i].empty()) {
        step.args.emplace_back();
        step.slot_lists.emplace_back(i, lists[i]);
      } else {
        step.args.push_back(torch::jit::toIValue(args[i], schema.arguments()[i].type()));
      }
    }
    for (int64_t s : outs) if (s >= 0) check_slot(s);
    for (int64_t s : frees) check_slot(s);
    steps_.push_back(std::move(step));
  }

  // The arena (bytes), and the output of step `step` as a view of it at `offset` (sizes,
  // strides, and the dtype of `like`).
  void set_arena(int64_t bytes) { arena_ = at::empty({bytes}, at::TensorOptions().dtype(at::kByte)); }
  void set_hint(int64_t step, int64_t offset, std::vector<int64_t> sizes, std::vector<int64_t> strides,
                const at::Tensor& like) {
    const at::ScalarType dtype = like.scalar_type();
    TORCH_CHECK(step >= 0 && step < (int64_t)steps_.size(), "sepconv program: no step ", step);
    int64_t last = 0;
    for (size_t d = 0; d < sizes.size(); ++d) last += (sizes[d] - 1) * strides[d];
    TORCH_CHECK(arena_.defined() && offset >= 0 && offset + (last + 1) * c10::elementSize(dtype) <= arena_.numel(),
                "sepconv program: an output lies outside the arena");
    steps_[step].hint = at::from_blob(static_cast<uint8_t*>(arena_.data_ptr()) + offset, sizes, strides,
                                      at::TensorOptions().dtype(dtype));
  }

  // Inputs fill slots 0.. in order; returns the values of `outputs` (slots).
  std::vector<at::Tensor> run(const std::vector<at::Tensor>& inputs, const std::vector<int64_t>& outputs) {
    return execute(inputs, outputs, nullptr);
  }

  // run, and the seconds each step took (for per-layer profiles).
  std::pair<std::vector<at::Tensor>, std::vector<double>> run_timed(const std::vector<at::Tensor>& inputs,
                                                                    const std::vector<int64_t>& outputs) {
    std::vector<double> seconds(steps_.size());
    auto out = execute(inputs, outputs, &seconds);
    return {out, seconds};
  }

  int64_t steps() const { return (int64_t)steps_.size(); }
  int64_t arena_bytes() const { return arena_.defined() ? arena_.numel() : 0; }

 private:
  std::vector<at::Tensor> execute(const std::vector<at::Tensor>& inputs, const std::vector<int64_t>& outputs,
                                  std::vector<double>* seconds) {
    std::lock_guard<std::mutex> lock(mutex_);   // one call at a time: the arena is shared
    std::vector<c10::IValue> slot(n_slots_);
    TORCH_CHECK((int64_t)inputs.size() <= n_slots_, "sepconv program: too many inputs");
    for (size_t i = 0; i < inputs.size(); ++i) slot[i] = inputs[i];
    std::vector<c10::IValue> stack;
    for (size_t k = 0; k < steps_.size(); ++k) {
      const Step& step = steps_[k];
      const auto t0 = seconds ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point{};
      stack.assign(step.args.begin(), step.args.end());
      for (const auto& [i, s] : step.slots) stack[i] = slot[s];
      for (const auto& [i, ss] : step.slot_lists) {
        c10::List<at::Tensor> list;
        for (int64_t s : ss) list.push_back(slot[s].toTensor());
        stack[i] = list;
      }
      output_hint = step.hint.defined() ? &step.hint : nullptr;
      step.op.callBoxed(&stack);
      output_hint = nullptr;
      for (size_t r = 0; r < step.outs.size() && r < stack.size(); ++r)
        if (step.outs[r] >= 0) slot[step.outs[r]] = std::move(stack[r]);
      for (int64_t s : step.frees) slot[s] = c10::IValue();
      if (seconds) (*seconds)[k] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    std::vector<at::Tensor> out;
    for (int64_t s : outputs) {
      check_slot(s);
      TORCH_CHECK(slot[s].isTensor(), "sepconv program: output slot ", s, " holds no tensor");
      out.push_back(slot[s].toTensor());
    }
    return out;
  }

  void check_slot(int64_t s) const { TORCH_CHECK(s < n_slots_, "sepconv program: slot ", s, " out of range"); }

  int64_t n_slots_;
  std::vector<Step> steps_;
  at::Tensor arena_;
  std::mutex mutex_;
};

}  // namespace

void bind_program(py::module& m) {
  py::class_<Program>(m, "Program", "an optimized graph as one native call (sepconv.convert.program)")
      .def(py::init<int64_t>())
      .def("add_step", &Program::add_step)
      .def("set_arena", &Program::set_arena)
      .def("set_hint", &Program::set_hint)
      .def("run", &Program::run, py::call_guard<py::gil_scoped_release>())
      .def("run_timed", &Program::run_timed, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("steps", &Program::steps)
      .def_property_readonly("arena_bytes", &Program::arena_bytes);
}

}  // namespace sepconv
