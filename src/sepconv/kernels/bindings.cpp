// The extension sepconv._C: the host side of the native kernels. It picks the kernel set for
// this CPU (kernels.h), turns tensors into pointers and geometries, keeps transposed inference
// weights, and registers the torch.library ops sepconv::depthwise (with autograd, twice
// differentiable), sepconv::depthwise_backward and sepconv::winograd, so that eager calls, the
// profiler, FlopCounterMode, torch.export and torch.compile all see one op.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/record_function.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "host.h"
#include "kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sepconv {

#if defined(__x86_64__)
// AMX needs the CPU's tiles (CPUID leaf 7: AMX-BF16 and AMX-TILE) and the kernel's leave to
// use their 8 KiB of state, which Linux gives a process on request (arch_prctl
// ARCH_REQ_XCOMP_PERM for XTILEDATA); SEPCONV_AMX=0 declines it.
static bool amx_usable() {
  const char* env = std::getenv("SEPCONV_AMX");
  if (env && std::string(env) == "0") return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) return false;
  constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}
#endif

static KernelSet without_bf16(KernelSet set) {
  set.gemm_bf16_kind = "none";
  return set;
}

const KernelSet& kernels() {
  static const KernelSet chosen = [] {
    const char* want = std::getenv("SEPCONV_ISA");
    std::string w = want ? want : "";
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx512 && __builtin_cpu_supports("avx512bf16") && (w.empty() || w == "avx512bf16")) {
      KernelSet set = avx512bf16::kernel_set();
      if (amx_usable()) set.gemm_bf16 = set.gemm_bf16_amx, set.gemm_bf16_kind = "amx", set.gemm_mr_bf16 = set.gemm_mr_amx;
      return set;
    }
    if (avx512 && (w.empty() || w == "avx512bf16" || w == "avx512")) return without_bf16(avx512::kernel_set());
    if (avx2 && (w.empty() || w == "avx512bf16" || w == "avx512" || w == "avx2")) return without_bf16(avx2::kernel_set());
#endif
    return without_bf16(generic::kernel_set());
  }();
  return chosen;
}

namespace {

// Weights (sources included) kept at most by the inference weight cache below.
constexpr size_t WEIGHT_CACHE_BYTES = 16 << 20;
// Inputs from which training takes the one-pass backward (see backward()).
constexpr int64_t ONE_PASS_BYTES = 4 << 20;

DType dtype_of(const at::Tensor& t) {
  if (t.scalar_type() == at::kFloat) return F32;
  if (t.scalar_type() == at::kBFloat16) return BF16;
  TORCH_CHECK(false, "sepconv native: dtype must be float32 or bfloat16, got ", t.scalar_type());
}

Geometry geometry(const at::Tensor& x, int64_t kh, int64_t kw, at::IntArrayRef s, at::IntArrayRef p,
                  at::IntArrayRef d) {
  TORCH_CHECK(s.size() == 2 && p.size() == 2 && d.size() == 2, "sepconv native: stride, padding and dilation are pairs");
  Geometry g{x.size(0), x.size(2), x.size(3), x.size(1), 0, 0,
             (int)kh, (int)kw, (int)s[0], (int)s[1], (int)p[0], (int)p[1], (int)d[0], (int)d[1]};
  g.OH = (g.H + 2 * g.ph - g.dil_h * (g.kh - 1) - 1) / g.sh + 1;
  g.OW = (g.W + 2 * g.pw - g.dil_w * (g.kw - 1) - 1) / g.sw + 1;
  return g;
}

void check_nhwc(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast),
              "sepconv native: ", name, " must be a 4-D channels_last tensor");
}

Act parse_act(c10::string_view name, double lo, double hi) {
  static const std::map<std::string, int, std::less<>> kinds = {
      {"none", ACT_NONE}, {"relu", ACT_RELU}, {"clamp", ACT_CLAMP}, {"silu", ACT_SILU},
      {"hardswish", ACT_HARDSWISH}, {"gelu", ACT_GELU}, {"gelu_tanh", ACT_GELU_TANH}, {"sigmoid", ACT_SIGMOID}};
  auto it = kinds.find(std::string(name));
  TORCH_CHECK(it != kinds.end(), "sepconv native: unknown activation '", std::string(name),
              "' (none, relu, clamp, silu, hardswish, gelu, gelu_tanh, sigmoid)");
  return Act{it->second, (float)lo, (float)hi};
}

}  // namespace

// (C, 1, kh, kw) weight of any float dtype -> float32 (kh, kw, C), optionally with the taps
// flipped: one tap of consecutive channels is one vector load. A plain loop, because the
// equivalent ATen permute + copy costs about 8 us, more than a small layer's whole kernel.
at::Tensor weight_hwc(const at::Tensor& weight, bool flip = false) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1, "sepconv native: weight must be (C, 1, kh, kw)");
  const at::Tensor w = weight.scalar_type() == at::kBFloat16 ? weight.contiguous() : weight.to(at::kFloat).contiguous();
  const int64_t C = w.size(0), taps = w.size(2) * w.size(3);
  auto out = at::empty({w.size(2), w.size(3), C}, w.options().dtype(at::kFloat));
  float* dst = out.data_ptr<float>();
  auto copy = [&](auto convert, const auto* src) {
    for (int64_t t = 0; t < taps; ++t) {  // (tap-major: C-strided writes would alias in L1)
      float* row = dst + (flip ? taps - 1 - t : t) * C;
      for (int64_t c = 0; c < C; ++c) row[c] = convert(src[c * taps + t]);
    }
  };
  if (w.scalar_type() == at::kBFloat16)
    copy([](c10::BFloat16 v) { return static_cast<float>(v); }, w.data_ptr<c10::BFloat16>());
  else
    copy([](float v) { return v; }, w.data_ptr<float>());
  return out;
}

size_t weight_cache_held = 0;   // bytes in the weight cache below

// weight_hwc for inference calls, which pass the same weights again and again: the last
// transposes are kept by the weight's address and shape, each with a copy of the bytes it
// was made from, and reused only if the weight's bytes still equal that copy (a memcmp, a
// fraction of the transpose's cost: 4 us for 1024 channels). So in-place updates, writes
// through .data and a freed address reused by another weight all miss, as they must.
// Measured 1.11-1.56x per call on MobileNet's 7x7-28x28 layers at batch 1, 1.19x on
// 1024x7x7 at batch 8. At most WEIGHT_CACHE_BYTES are held, a weight larger than that never.
at::Tensor weight_hwc_cached(const at::Tensor& weight) {
  if (!weight.is_contiguous() || weight.dim() != 4) return weight_hwc(weight);
  struct Entry { std::vector<char> bytes; at::Tensor hwc; };
  static std::mutex mutex;
  // never destroyed: tensors must not be freed after libtorch at exit
  static auto& cache = *new std::map<std::tuple<const void*, int64_t, int64_t, int64_t, int>, Entry>();
  size_t& held = weight_cache_held;
  const auto key = std::make_tuple(weight.data_ptr(), weight.size(0), weight.size(2), weight.size(3),
                                   (int)weight.scalar_type());
  const char* data = static_cast<const char*>(weight.data_ptr());
  const size_t nbytes = weight.nbytes();
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end() && it->second.bytes.size() == nbytes && std::memcmp(it->second.bytes.data(), data, nbytes) == 0)
    return it->second.hwc;
  at::Tensor hwc = weight_hwc(weight);
  const size_t size = nbytes + hwc.nbytes();
  if (it != cache.end()) {
    held -= it->second.bytes.size() + it->second.hwc.nbytes();
    cache.erase(it);
  }
  if (size > WEIGHT_CACHE_BYTES) return hwc;
  if (held + size > WEIGHT_CACHE_BYTES) {
    cache.clear();
    held = 0;
  }
  held += size;
  cache.emplace(key, Entry{std::vector<char>(data, data + nbytes), hwc});
  return hwc;
}

// Optional bias -> float32 (C,), converted by a plain loop for the same reason.
at::Tensor bias_f32(const c10::optional<at::Tensor>& b) {
  if (!b.has_value()) return at::Tensor();
  if (b->scalar_type() != at::kBFloat16) return b->to(at::kFloat).contiguous();
  const at::Tensor src = b->contiguous();
  auto out = at::empty({src.numel()}, src.options().dtype(at::kFloat));
  const c10::BFloat16* sp = src.data_ptr<c10::BFloat16>();
  float* dp = out.data_ptr<float>();
  for (int64_t c = 0; c < src.numel(); ++c) dp[c] = static_cast<float>(sp[c]);
  return out;
}

// The forward variant `v` over every output row, in parallel.
void run_forward(const Variant<ForwardFn>* v, const void* x, const float* w, const float* b, void* y, const Geometry& g,
                 const Act& act) {
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t begin, int64_t end) { v->fn(x, w, b, y, g, act, begin, end); });
}

// The name of the kernel that serves a call: "<isa>:<variant>".
template <typename Fn>
std::string name_of(const Variant<Fn>* v) {
  return v ? std::string(kernels().isa) + ":" + v->name : std::string();
}

// x: (N, C, H, W) channels_last; w: float32 (kh, kw, C) from weight_hwc; b: (C,) or None.
at::Tensor forward_hwc(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                       at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, const Act& act) {
  check_nhwc(x, "input");
  at::Tensor bf = bias_f32(b);
  const auto g = geometry(x, w.size(0), w.size(1), stride, padding, dilation);
  auto y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto& ks = kernels();
  run_forward(select_variant(ks.forward, ks.n_forward, g, dtype_of(x)), x.data_ptr(), w.data_ptr<float>(),
              bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr(), g, act);
  return y;
}

// Inference forward: the op's CPU kernel. The transposed weight is reused while its bytes
// are unchanged.
at::Tensor depthwise_cpu(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                         c10::string_view act, double lo, double hi) {
  RECORD_FUNCTION("sepconv::depthwise", c10::ArrayRef<const c10::IValue>{});
  TORCH_CHECK(w.dim() == 4 && w.size(0) == x.size(1) && w.size(1) == 1,
              "sepconv native: weight must be (C, 1, kh, kw) with C the input's channels");
  return forward_hwc(x.contiguous(at::MemoryFormat::ChannelsLast), weight_hwc_cached(w), b, stride, padding,
                     dilation, parse_act(act, lo, hi));
}

at::Tensor grad_input(const at::Tensor& dy, const at::Tensor& w, at::IntArrayRef input_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_nhwc(dy, "grad_output");
  const at::Tensor wh = weight_hwc(w);
  auto dx = at::empty(input_size, dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto g = geometry(dx, wh.size(0), wh.size(1), stride, padding, dilation);
  TORCH_CHECK(g.OH == dy.size(2) && g.OW == dy.size(3), "sepconv native: grad_output size mismatch");
  const auto& ks = kernels();
  select_variant(ks.grad_input, ks.n_grad_input, g, dtype_of(dy))->fn(dy.data_ptr(), wh.data_ptr<float>(),
                                                                        dx.data_ptr(), g);
  return dx;
}

// Returns (grad weight as float32 (C, 1, kh, kw), grad bias as float32 (C,) if bias else undefined).
std::vector<at::Tensor> grad_weight(const at::Tensor& x, const at::Tensor& dy, int64_t kh, int64_t kw,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    bool bias) {
  check_nhwc(x, "input");
  check_nhwc(dy, "grad_output");
  const auto g = geometry(x, kh, kw, stride, padding, dilation);
  auto gw = at::empty({g.C, 1, kh, kw}, x.options().dtype(at::kFloat));
  auto gb = bias ? at::empty({g.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  const auto& ks = kernels();
  select_variant(ks.grad_weight, ks.n_grad_weight, g, dtype_of(x))
      ->fn(x.data_ptr(), dy.data_ptr(), gw.data_ptr<float>(), bias ? gb.data_ptr<float>() : nullptr, g);
  return {gw, gb};
}

// Input, weight and (if bias) bias gradients in one pass over dy, where a one-pass variant
// serves the shape (3x3 or 5x5, stride 1 or 2, no dilation). Returns
// {dx, grad weight float32 (C, 1, kh, kw), grad bias float32 (C,) or undefined}, or nothing.
std::vector<at::Tensor> grad_both(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                                  at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                  bool bias) {
  check_nhwc(x, "input");
  check_nhwc(dy, "grad_output");
  const auto g = geometry(x, w.size(2), w.size(3), stride, padding, dilation);
  const auto& ks = kernels();
  const auto* v = select_variant(ks.backward, ks.n_backward, g, dtype_of(x));
  const std::vector<int64_t> flip_pad = {g.kh - 1 - g.ph, g.kw - 1 - g.pw};
  if (!v || x.scalar_type() != dy.scalar_type() || (g.sh == 1 && (flip_pad[0] < 0 || flip_pad[1] < 0))) return {};
  const auto gf = geometry(dy, g.kh, g.kw, {1, 1}, flip_pad, {1, 1});
  const at::Tensor wh = weight_hwc(w), wf = weight_hwc(w, true);
  auto dx = at::empty(x.sizes(), dy.options().memory_format(at::MemoryFormat::ChannelsLast));
  auto gw = at::empty({g.C, 1, g.kh, g.kw}, x.options().dtype(at::kFloat));
  auto gb = bias ? at::empty({g.C}, x.options().dtype(at::kFloat)) : at::Tensor();
  v->fn(x.data_ptr(), dy.data_ptr(), wh.data_ptr<float>(), wf.data_ptr<float>(), dx.data_ptr(),
        gw.data_ptr<float>(), bias ? gb.data_ptr<float>() : nullptr, g, gf);
  return {dx, gw, gb};
}

// The gradients a training step asks for (undefined where not asked): dx in dy's dtype, grad
// weight in the weight's, grad bias in dy's. One pass over dy for inputs from DRAM, else two
// kernels. The op sepconv::depthwise_backward.
std::tuple<at::Tensor, at::Tensor, at::Tensor> depthwise_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, std::array<bool, 3> mask) {
  RECORD_FUNCTION("sepconv::depthwise_backward", c10::ArrayRef<const c10::IValue>{});
  const bool want_dx = mask[0], want_w = mask[1], want_b = mask[2];
  const at::Tensor dy = grad.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor xl = x.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor dx, gw, gb;
  std::vector<at::Tensor> both;
  // One pass over dy for inputs over 4 MiB: measured 1.18-1.28x per training step at stride 1
  // and 1.03-1.16x at stride 2 on MobileNet's batch-8 layers of 12-26 MB, 1.09-1.18x and
  // 1.0-1.03x on 6.4 MB (256x28x28); on 3.2 MB and less it tied or lost up to 10% (its weight
  // gradient goes by rows, not channel blocks).
  if (want_dx && (want_w || want_b) && xl.nbytes() > ONE_PASS_BYTES)
    both = grad_both(xl, dy, w, stride, padding, dilation, want_b);
  if (!both.empty()) {
    dx = both[0];
    if (want_w) gw = both[1].to(w.scalar_type());
    if (want_b) gb = both[2].to(dy.scalar_type());
  } else {
    if (want_dx) {
      const std::vector<int64_t> flip_pad = {dilation[0] * (w.size(2) - 1) - padding[0],
                                             dilation[1] * (w.size(3) - 1) - padding[1]};
      // stride 1: the input gradient is the forward kernel on dy with the kernel flipped
      // and the complementary padding
      if (stride[0] == 1 && stride[1] == 1 && flip_pad[0] >= 0 && flip_pad[1] >= 0)
        dx = forward_hwc(dy, weight_hwc(w, true), c10::nullopt, {1, 1}, flip_pad, dilation, Act{});
      else
        dx = grad_input(dy, w, xl.sizes(), stride, padding, dilation);
    }
    if (want_w || want_b) {
      auto g = grad_weight(xl, dy, w.size(2), w.size(3), stride, padding, dilation, want_b);
      if (want_w) gw = g[0].to(w.scalar_type());
      if (want_b) gb = g[1].to(dy.scalar_type());
    }
  }
  // The weight's own strides (as nn.Conv2d's gradient): DDP's buckets expect them. (A
  // (C, 1, kh, kw) weight is both contiguous and channels_last, with different strides.)
  if (gw.defined() && gw.strides() != w.strides()) gw = at::empty_like(w).copy_(gw);
  return {dx, gw, gb};
}

namespace {

const c10::TypedOperatorHandle<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
                                          at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, c10::string_view, double,
                                          double)>&
forward_op() {
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("sepconv::depthwise", "").typed<at::Tensor(
      const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&, at::IntArrayRef, at::IntArrayRef,
      at::IntArrayRef, c10::string_view, double, double)>();
  return op;
}

// True when the tensors are real CPU tensors and no dispatch mode (FakeTensorMode, FlopCounterMode,
// ...) is active: the autograd function may then call the kernels without the dispatcher (and
// without the inference weight cache, whose entries a training step would replace every time).
bool unwatched(std::initializer_list<at::Tensor> tensors) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  const auto traced = c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize});
  for (const auto& t : tensors)
    if (t.defined() && (!t.is_cpu() || t.key_set().has_any(traced))) return false;
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_backward(const at::Tensor& dy, const at::Tensor& x,
                                                             const at::Tensor& w, at::IntArrayRef stride,
                                                             at::IntArrayRef padding, at::IntArrayRef dilation,
                                                             std::array<bool, 3> mask) {
  if (unwatched({dy, x, w})) return depthwise_backward_cpu(dy, x, w, stride, padding, dilation, mask);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("sepconv::depthwise_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
                           at::IntArrayRef, at::IntArrayRef, std::array<bool, 3>)>();
  return op.call(dy, x, w, stride, padding, dilation, mask);
}

// Training: forward and both gradients as a C++ autograd function, so that a step never
// enters Python in backward (measured 1.06-1.22x over a Python autograd.Function around the
// same kernels on MobileNet's layers at batch 1). While anything traces or watches (see
// unwatched) it calls the ops sepconv::depthwise and sepconv::depthwise_backward, so that
// torch.compile, export and FlopCounterMode record them; under
// create_graph it computes the gradients with aten::convolution_backward instead, which is
// itself differentiable, so second derivatives are those of nn.Conv2d.
struct DepthwiseFunction : public torch::autograd::Function<DepthwiseFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const c10::optional<at::Tensor>& b, at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride.vec();
    ctx->saved_data["padding"] = padding.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["bias"] = b.has_value();
    if (unwatched({x, w, b.value_or(at::Tensor())}))
      return forward_hwc(x.contiguous(at::MemoryFormat::ChannelsLast), weight_hwc(w), b, stride, padding, dilation,
                         Act{});
    at::AutoDispatchBelowADInplaceOrView guard;
    return forward_op().call(x, w, b, stride, padding, dilation, "none", 0.0, 0.0);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1];
    const auto stride = ctx->saved_data["stride"].toIntVector();
    const auto padding = ctx->saved_data["padding"].toIntVector();
    const auto dilation = ctx->saved_data["dilation"].toIntVector();
    const bool bias = ctx->saved_data["bias"].toBool();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      bias && ctx->needs_input_grad(2)};
    at::Tensor dx, gw, gb;
    if (at::GradMode::is_enabled()) {   // create_graph: differentiable gradients
      std::tie(dx, gw, gb) = at::convolution_backward(
          grads[0], x, w, bias ? c10::optional<at::IntArrayRef>(at::IntArrayRef{w.size(0)}) : c10::nullopt,
          stride, padding, dilation, false, {0, 0}, x.size(1), mask);
    } else {
      std::tie(dx, gw, gb) = call_backward(grads[0], x, w, stride, padding, dilation, mask);
    }
    return {dx, gw, gb, at::Tensor(), at::Tensor(), at::Tensor()};   // (no gradient for stride, padding, dilation)
  }
};

bool needs_grad(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b, c10::string_view act) {
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || w.requires_grad() || (b.has_value() && b->requires_grad()));
  TORCH_CHECK(!grad || act == "none", "sepconv::depthwise: a fused activation is inference-only; got act='",
              std::string(act), "' with inputs that require grad");
  return grad;
}

// The op's autograd kernel: inference calls (nothing requires grad) go on to the kernel below
// autograd (CPU, or a fake one while tracing); training calls record DepthwiseFunction.
at::Tensor depthwise_autograd(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                              at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                              c10::string_view act, double lo, double hi) {
  if (needs_grad(x, w, b, act)) return DepthwiseFunction::apply(x, w, b, stride, padding, dilation);
  at::AutoDispatchBelowADInplaceOrView guard;
  return forward_op().call(x, w, b, stride, padding, dilation, act, lo, hi);
}

}  // namespace

// The op without the dispatcher, for eager calls on real CPU tensors (the binding "depthwise").
at::Tensor depthwise_call(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                          std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                          const std::string& act, double lo, double hi) {
  if (needs_grad(x, w, b, act)) return DepthwiseFunction::apply(x, w, b, stride, padding, dilation);
  return depthwise_cpu(x, w, b, stride, padding, dilation, act, lo, hi);
}

// Winograd forward (3x3, stride 1, dilation 1, inference): u holds the transformed filters in
// float32, (3, 4, C) for the row-wise F(2,3), (t+2, t+2, C) for 2-D F(t x t, 3x3).
at::Tensor winograd_cpu(const at::Tensor& x_in, const at::Tensor& u_in, const c10::optional<at::Tensor>& b,
                        at::IntArrayRef padding, bool two_d, c10::string_view act, double lo, double hi) {
  RECORD_FUNCTION("sepconv::winograd", c10::ArrayRef<const c10::IValue>{});
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor u = u_in.to(at::kFloat).contiguous();
  TORCH_CHECK(u.dim() == 3 && u.size(2) == x.size(1), "sepconv::winograd: u must be (n, n, C) or (3, 4, C)");
  const int tile = two_d ? (int)u.size(0) - 2 : 2;
  TORCH_CHECK(two_d ? (u.size(0) == u.size(1) && (tile == 2 || tile == 4)) : (u.size(0) == 3 && u.size(1) == 4),
              "sepconv::winograd: u must be (4, 4, C) or (6, 6, C) for 2-D, (3, 4, C) for rows; got ", u.sizes());
  at::Tensor bf = bias_f32(b);
  const auto g = geometry(x, 3, 3, {1, 1}, padding, {1, 1});
  auto y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto& ks = kernels();
  const DType dt = dtype_of(x);
  for (int i = 0; i < ks.n_winograd; ++i) {
    const auto& v = ks.winograd[i];
    if (v.dtype == dt && v.tile == tile && v.two_d == two_d) {
      v.fn(x.data_ptr(), u.data_ptr<float>(), bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr(), g,
           parse_act(act, lo, hi));
      return y;
    }
  }
  TORCH_CHECK(false, "sepconv::winograd: no kernel for tile ", tile);
}

// The kernel name each kind of call takes on this machine ("<isa>:<variant>", "" if none):
// kind is "forward", "grad_weight", "grad_input" or "backward".
std::string kernel_name(const std::string& kind, std::vector<int64_t> kernel, std::vector<int64_t> stride,
                        std::vector<int64_t> dilation, at::ScalarType dtype) {
  Geometry g{1, 1, 1, 1, 1, 1, (int)kernel[0], (int)kernel[1], (int)stride[0], (int)stride[1], 0, 0,
             (int)dilation[0], (int)dilation[1]};
  const DType dt = dtype == at::kBFloat16 ? BF16 : F32;
  const auto& ks = kernels();
  if (kind == "forward") return name_of(select_variant(ks.forward, ks.n_forward, g, dt));
  if (kind == "grad_weight") return name_of(select_variant(ks.grad_weight, ks.n_grad_weight, g, dt));
  if (kind == "grad_input") return name_of(select_variant(ks.grad_input, ks.n_grad_input, g, dt));
  if (kind == "backward") return name_of(select_variant(ks.backward, ks.n_backward, g, dt));
  TORCH_CHECK(false, "kernel_name: kind must be forward, grad_weight, grad_input or backward; got ", kind);
}

// ------------------------------------------------------------------------------------ GEMM

// A Linear or 1x1 convolution weight (N, K) or (N, K, 1, 1), any float dtype, packed for this
// machine's GEMM in float32 or (where the CPU has bfloat16 dot products) bfloat16: a 1-D
// tensor whose layout is private to the kernel set (repack on another machine).
at::Tensor gemm_pack(const at::Tensor& weight, bool bf16) {
  TORCH_CHECK(weight.dim() == 2 || (weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1),
              "gemm_pack: weight must be (N, K) or (N, K, 1, 1), got ", weight.sizes());
  const at::Tensor w = weight.reshape({weight.size(0), weight.size(1)}).to(at::kFloat).contiguous();
  const int64_t N = w.size(0), K = w.size(1), nr = kernels().gemm_nr, panels = (N + nr - 1) / nr;
  if (bf16) {
    TORCH_CHECK(kernels().gemm_bf16, "gemm_pack: this CPU has no bfloat16 dot products (AVX512-BF16)");
    auto out = at::empty({panels * gemm_bf16_pairs(K) * 2 * nr}, w.options().dtype(at::kBFloat16));
    kernels().gemm_pack_bf16(w.data_ptr<float>(), N, K, out.data_ptr());
    return out;
  }
  auto out = at::empty({panels * K * nr}, w.options());
  kernels().gemm_pack_f32(w.data_ptr<float>(), N, K, out.data_ptr());
  return out;
}

// The (N, K) float32 weight a packed tensor holds (bfloat16-rounded for a bfloat16 one): what
// an optimized model saves, so that another machine can pack it for its own kernel set.
at::Tensor gemm_unpack(const at::Tensor& packed, int64_t N, int64_t K) {
  const int64_t nr = kernels().gemm_nr, panels = (N + nr - 1) / nr;
  auto w = at::empty({N, K}, packed.options().dtype(at::kFloat));
  float* o = w.data_ptr<float>();
  if (packed.scalar_type() == at::kBFloat16) {
    const int64_t pairs = gemm_bf16_pairs(K);
    TORCH_CHECK(packed.numel() == panels * pairs * 2 * nr, "gemm_unpack: size mismatch");
    const c10::BFloat16* p = packed.data_ptr<c10::BFloat16>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        o[n * K + k] = static_cast<float>(p[(((n / nr) * pairs + k / 2) * nr + n % nr) * 2 + k % 2]);
  } else {
    TORCH_CHECK(packed.numel() == panels * K * nr, "gemm_unpack: size mismatch");
    const float* p = packed.data_ptr<float>();
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) o[n * K + k] = p[((n / nr) * K + k) * nr + n % nr];
  }
  return w;
}

// Bias as float32 padded to whole panels (the GEMM reads whole panels of it).
at::Tensor gemm_bias(const at::Tensor& bias) {
  const int64_t N = bias.numel(), nr = kernels().gemm_nr;
  auto out = at::zeros({(N + nr - 1) / nr * nr}, bias.options().dtype(at::kFloat));
  out.narrow(0, 0, N).copy_(bias.reshape({N}));
  return out;
}

// The GEMM `g` of x's rows scaled per image and column k (A[m][k] * kscale[m / rows_per_image][k],
// rounded to x's dtype, as an elementwise product before it would be): the scaled rows are
// made in chunks that stay in L2 while the GEMM of each chunk runs, in parallel over chunks;
// an A of at most 1 MiB is scaled whole and multiplied in parallel over B's panels instead (a
// 7x7 layer's 49 rows, whose B would be read once a chunk).
static void gemm_kscaled(const GemmArgs& g, const void* packed, const float* kscale, int64_t rows_per_image,
                         bool bf16) {
  const auto& ks = kernels();
  const GemmFn run = bf16 ? ks.gemm_bf16 : ks.gemm_f32;
  const ScaleRowsFn scale = bf16 ? ks.scale_rows_bf16 : ks.scale_rows_f32;
  const int64_t item = bf16 ? 2 : 4, ld = (g.K * item) % 4096 == 0 ? g.K + 32 : g.K;   // (no 4 KiB-aliased rows)
  const char* a = static_cast<const char*>(g.a);
  auto scaled = [&](int64_t m0, int64_t m1, char* out) {
    for (int64_t m = m0; m < m1;) {
      const int64_t image = m / rows_per_image, end = std::min(m1, (image + 1) * rows_per_image);
      scale(a + m * g.lda * item, g.lda, end - m, g.K, kscale + image * g.K, out + (m - m0) * ld * item, ld);
      m = end;
    }
  };
  if (g.M * g.K * item <= (1 << 20)) {
    std::vector<char> buf(g.M * ld * item);
    at::parallel_for(0, g.M, 16, [&](int64_t m0, int64_t m1) { scaled(m0, m1, buf.data() + m0 * ld * item); });
    GemmArgs whole = g;
    whole.a = buf.data(), whole.lda = ld;
    return run(whole, packed);
  }
  const int64_t threads = at::get_num_threads(), tile = bf16 ? ks.gemm_mr_bf16 : ks.gemm_mr;
  int64_t chunk = std::max<int64_t>(tile, (256 << 10) / (ld * item) / tile * tile);
  chunk = std::min(chunk, std::max<int64_t>(tile, (g.M + 2 * threads - 1) / (2 * threads) + tile - 1) / tile * tile);
  const int64_t chunks = (g.M + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<char> buf(chunk * ld * item);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t m0 = c * chunk, m1 = std::min(g.M, m0 + chunk);
      scaled(m0, m1, buf.data());
      GemmArgs part = g;
      part.M = m1 - m0, part.a = buf.data(), part.lda = ld;
      part.c = static_cast<char*>(g.c) + m0 * g.ldc * item;
      if (g.residual) part.residual = static_cast<const char*>(g.residual) + m0 * g.ldr * item;
      run(part, packed);   // (serial inside this thread's chunk)
    }
  });
}

// y = act2(act1(x . W^T + bias) + residual), W packed by gemm_pack, bias from gemm_bias. With
// `conv`, x is (B, K, H, W) in channels_last memory (a 1x1 convolution) and so is y (B, N, H,
// W); otherwise x is any contiguous tensor whose last dimension is K (a linear layer) and y
// has x's shape with N last. x's dtype (float32 or bfloat16) is y's and must be the packed one.
// `kscale` (1x1 convolutions only): x's channels scaled per image first, x * kscale with
// kscale (B, K, 1, 1) (a squeeze-excitation's output), without that product going through
// memory.
at::Tensor gemm(const at::Tensor& x_in, const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                const c10::optional<at::Tensor>& residual, bool conv, const std::string& act1, double lo1,
                double hi1, const std::string& act2, double lo2, double hi2, const c10::optional<at::Tensor>& kscale) {
  RECORD_FUNCTION("sepconv::gemm", c10::ArrayRef<const c10::IValue>{});
  TORCH_CHECK(!conv || x_in.dim() == 4, "sepconv gemm: a 1x1 convolution's input must be 4-D");
  const at::Tensor x = conv ? x_in.contiguous(at::MemoryFormat::ChannelsLast) : x_in.contiguous();
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "sepconv gemm: input dtype ", x.scalar_type(),
              " differs from the packed weight's ", packed.scalar_type());
  const int64_t K = conv ? x.size(1) : x.size(-1), M = K ? x.numel() / K : 0;
  at::Tensor y;
  if (conv) {
    y = new_output({x.size(0), N, x.size(2), x.size(3)}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  } else {
    auto shape = x.sizes().vec();
    shape.back() = N;
    y = new_output(shape, x.options());
  }
  GemmArgs g{M, N, K, x.data_ptr(), K, y.data_ptr(), N, nullptr, nullptr, N,
             parse_act(act1, lo1, hi1), parse_act(act2, lo2, hi2)};
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->numel() >= N, "sepconv gemm: bias must come from gemm_bias");
    g.bias = bias->data_ptr<float>();
  }
  at::Tensor r;
  if (residual.has_value()) {
    r = conv ? residual->contiguous(at::MemoryFormat::ChannelsLast) : residual->contiguous();
    TORCH_CHECK(r.sizes() == y.sizes() && r.scalar_type() == y.scalar_type(),
                "sepconv gemm: residual must have the output's shape and dtype");
    g.residual = r.data_ptr();
  }
  if (M == 0) return y;
  const auto& ks = kernels();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(!bf16 || ks.gemm_bf16, "sepconv gemm: this CPU has no bfloat16 dot products (AVX512-BF16)");
  if (kscale.has_value()) {
    TORCH_CHECK(conv && kscale->numel() == x.size(0) * K, "sepconv gemm: kscale must hold (B, K) values for a 1x1 "
                "convolution's input (B, K, H, W), got ", kscale->sizes(), " for ", x.sizes());
    const at::Tensor s = kscale->to(at::kFloat).contiguous();
    gemm_kscaled(g, packed.data_ptr(), s.data_ptr<float>(), x.size(2) * x.size(3), bf16);
  } else {
    (bf16 ? ks.gemm_bf16 : ks.gemm_f32)(g, packed.data_ptr());
  }
  return y;
}

// im2col by runs: row (n, oh, ow) of the result is the concatenation, over `runs` (kernel row i,
// kernel column j, channels [c0, c1)), of input pixel (oh * stride - pad + i * dilation, ...)'s
// channels c0..c1 (zero outside the input), K values in all. x is channels_last (B, C, H, W).
// A dense convolution takes every tap's channels [0, C) in kernel order; a versatile layer
// orders them by channel segment and ring. Neighbouring runs of whole pixels merge into one
// segment (with dilation 1 a dense convolution's kernel row is one copy of kw * C values);
// the kernel set gathers the rows (Im2colArgs).
struct Im2col {
  Im2colArgs args;
  std::vector<int64_t> segs;

  Im2col(const at::Tensor& x, const std::vector<int64_t>& runs, const std::vector<int64_t>& stride,
         const std::vector<int64_t>& pad, const std::vector<int64_t>& dilation, int64_t OH, int64_t OW) {
    const int64_t C = x.size(1);
    int64_t K = 0;
    for (size_t q = 0; q < runs.size(); q += 4) {
      const int64_t i = runs[q], j = runs[q + 1], c0 = runs[q + 2], c1 = runs[q + 3];
      TORCH_CHECK(0 <= c0 && c0 <= c1 && c1 <= C, "sepconv im2col: a run's channels lie outside the input's");
      K += c1 - c0;
      const size_t last = segs.size() - 5;
      if (!segs.empty() && dilation[1] == 1 && c0 == 0 && c1 == C && segs[last + 2] == 0 && segs[last + 3] == C &&
          segs[last] == i && segs[last + 1] + segs[last + 4] == j) {
        ++segs[last + 4];
        continue;
      }
      segs.insert(segs.end(), {i, j, c0, c1, 1});
    }
    args = Im2colArgs{x.data_ptr(), x.size(0), x.size(2), x.size(3), C, OH, OW, stride[0], stride[1], pad[0],
                      pad[2], dilation[0], dilation[1], segs.data(), (int64_t)segs.size() / 5, K, K};
  }
  int64_t K() const { return args.K; }
};

static std::pair<int64_t, int64_t> conv_out_size(const at::Tensor& x, int64_t kh, int64_t kw,
                                                 const std::vector<int64_t>& stride, const std::vector<int64_t>& pad,
                                                 const std::vector<int64_t>& dilation, const char* who) {
  TORCH_CHECK(x.dim() == 4 && pad.size() == 4 && stride.size() == 2 && dilation.size() == 2,
              who, ": x is (B, C, H, W), pad (top, bottom, left, right), stride and dilation pairs");
  const int64_t OH = (x.size(2) + pad[0] + pad[1] - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t OW = (x.size(3) + pad[2] + pad[3] - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(OH > 0 && OW > 0, who, ": the output would be empty");
  return {OH, OW};
}

// A program of GEMM calls on the im2col rows of x (Im2col, by `runs`): `packed` is gemm_pack of
// an (N, K) weight whose columns follow the runs, so a call on columns [k0, k0 + len) is one
// part of the convolution. `calls` holds 5 ints per call: k0, len, out_block, accum_block (-1:
// none), final. Block b is output channels [b * N, (b + 1) * N); a call adds the accum block's
// partial sums; a final call applies the epilogue: * scale + bias, act1, + residual, act2
// (bias and scale float32 per output channel, padded to whole GEMM panels; residual like y).
// The rows go in chunks gathered into a buffer that stays in L2 while every call multiplies it
// (the GEMMs run serially inside the chunk's thread): no im2col matrix goes through memory,
// and one parallel region serves the layer. y is (B, blocks * N, OH, OW) channels_last.
static at::Tensor gemm_program(const char* who, const at::Tensor& x_in, const at::Tensor& packed, int64_t N,
                               int64_t blocks, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& residual,
                               const std::vector<int64_t>& runs, const std::vector<int64_t>& calls,
                               const std::vector<int64_t>& kernel, const std::vector<int64_t>& stride,
                               const std::vector<int64_t>& pad, const std::vector<int64_t>& dilation, Act act1,
                               Act act2) {
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), who, ": input dtype ", x.scalar_type(),
              " differs from the packed weight's ", packed.scalar_type());
  TORCH_CHECK(runs.size() % 4 == 0 && calls.size() % 5 == 0 && kernel.size() == 2,
              who, ": runs hold 4 ints each, calls 5, kernel is (kh, kw)");
  const auto [OH, OW] = conv_out_size(x, kernel[0], kernel[1], stride, pad, dilation, who);
  Im2col im2col(x, runs, stride, pad, dilation, OH, OW);
  const int64_t K = im2col.K(), M = x.size(0) * OH * OW, ld = blocks * N, item = x.element_size();
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const auto& ks = kernels();
  // AMX reads A in tiles of 32 k: rows padded to whole tiles with zeros need no copy there
  const bool pad_rows = bf16 && std::string(ks.gemm_bf16_kind) == "amx";
  const int64_t lda = pad_rows ? (K + 31) / 32 * 32 : K;
  im2col.args.ld = lda;
  TORCH_CHECK(!bf16 || ks.gemm_bf16, who, ": this CPU has no bfloat16 dot products (AVX512-BF16)");
  const int64_t vec_len = (blocks - 1) * N + (N + ks.gemm_nr - 1) / ks.gemm_nr * ks.gemm_nr;
  for (const auto* t : {bias.has_value() ? &*bias : nullptr, scale.has_value() ? &*scale : nullptr})
    TORCH_CHECK(!t || (t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() >= vec_len),
                who, ": bias and scale are float32, padded to whole GEMM panels");
  for (size_t q = 0; q < calls.size(); q += 5)
    TORCH_CHECK(0 <= calls[q] && calls[q] + calls[q + 1] <= K && 0 <= calls[q + 2] && calls[q + 2] < blocks &&
                calls[q + 3] < blocks && (!bf16 || calls[q] % 2 == 0),
                who, ": a call lies outside the rows or blocks (bfloat16: k0 even)");
  // (B, ld, OH, OW) channels_last: rows of ld values per output pixel
  auto y = new_output({x.size(0), ld, OH, OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor r;   // a channels_last (B, ld, OH, OW) residual is (B, OH, OW, ld) rows
  if (residual.has_value()) {
    r = residual->contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(r.dim() == 4 && r.size(0) == x.size(0) && r.size(1) == ld && r.size(2) == OH && r.size(3) == OW &&
                r.scalar_type() == x.scalar_type(), who, ": residual must have the output's shape and dtype");
  }
  char* yp = static_cast<char*>(y.data_ptr());
  // Chunks take 256 KiB of rows: a few tiles whose A rows stay in L2 while B streams from
  // L3. (K blocks of 512 or 4096 columns adding to partial sums measured no gain here, and
  // 128-row chunks 1.2-1.6x slower on VGG and ResNet 3x3 layers: the chunk left L2.)
  const int64_t threads = at::get_num_threads(), tile = bf16 ? ks.gemm_mr_bf16 : ks.gemm_mr;
  int64_t chunk = std::max<int64_t>(tile, (256 << 10) / std::max<int64_t>(lda * item, 1) / tile * tile);
  chunk = std::min(chunk, std::max<int64_t>(tile, (M + 2 * threads - 1) / (2 * threads) + tile - 1) / tile * tile);
  const int64_t chunks = (M + chunk - 1) / chunk;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<char> buf((chunk * lda + IM2COL_SLACK) * item);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t m0 = c * chunk, m1 = std::min(M, m0 + chunk);
      (bf16 ? ks.im2col_bf16 : ks.im2col_f32)(im2col.args, buf.data(), m0, m1);
      for (size_t q = 0; q < calls.size(); q += 5) {
        const int64_t k0 = calls[q], len = calls[q + 1], out = calls[q + 2], acc = calls[q + 3];
        const bool final = calls[q + 4] != 0;
        GemmArgs g{m1 - m0, N, len, buf.data() + k0 * item, lda, yp + (m0 * ld + out * N) * item, ld, nullptr,
                   nullptr, 0, final ? act1 : Act{}, final ? act2 : Act{}};
        g.a_padded = pad_rows;
        if (acc >= 0) g.accum = yp + (m0 * ld + acc * N) * item, g.ldacc = ld;
        if (final && bias.has_value()) g.bias = bias->data_ptr<float>() + out * N;
        if (final && scale.has_value()) g.scale = scale->data_ptr<float>() + out * N;
        if (final && r.defined()) g.residual = static_cast<const char*>(r.data_ptr()) + (m0 * ld + out * N) * item, g.ldr = ld;
        g.ldb = K;
        const void* b = static_cast<const char*>(packed.data_ptr()) + k0 * ks.gemm_nr * packed.element_size();
        (bf16 ? ks.gemm_bf16 : ks.gemm_f32)(g, b);
      }
    }
  });
  return y;
}

// A dense convolution (groups 1) as im2col + the native GEMM: x (B, C, H, W) is gathered into
// rows of kh * kw * C values (kernel row, column, channel; zero outside the padded input),
// which `packed` (from gemm_pack of the weight permuted to (N, kh, kw, C)) multiplies. `pad` is
// (top, bottom, left, right). The epilogue is gemm's. y is (B, N, OH, OW) channels_last.
at::Tensor conv_gemm(const at::Tensor& x, const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                     const c10::optional<at::Tensor>& residual, std::vector<int64_t> kernel,
                     std::vector<int64_t> stride, std::vector<int64_t> pad, std::vector<int64_t> dilation,
                     const std::string& act1, double lo1, double hi1, const std::string& act2, double lo2, double hi2) {
  RECORD_FUNCTION("sepconv::conv_gemm", c10::ArrayRef<const c10::IValue>{});
  TORCH_CHECK(kernel.size() == 2 && x.dim() == 4, "sepconv conv_gemm: x is (B, C, H, W), kernel (kh, kw)");
  std::vector<int64_t> runs;
  for (int64_t i = 0; i < kernel[0]; ++i)
    for (int64_t j = 0; j < kernel[1]; ++j) runs.insert(runs.end(), {i, j, 0, x.size(1)});
  return gemm_program("sepconv conv_gemm", x, packed, N, 1, bias, c10::nullopt, residual, runs,
                      {0, kernel[0] * kernel[1] * x.size(1), 0, -1, 1}, kernel, stride, pad, dilation,
                      parse_act(act1, lo1, hi1), parse_act(act2, lo2, hi2));
}

// A dense convolution of an input with few channels (a stem), by the kernel set's direct
// implicit GEMM (DirectArgs): x (B, C, H, W) float32 or bfloat16 in any layout (a user's NCHW
// image needs no conversion first), `packed` gemm_pack of the float32 weight permuted to
// (N, kh, kw, C), bias from gemm_bias, `pad` (top, bottom, left, right). Computed in float32;
// y is (B, N, OH, OW) channels_last, float32, or with `bf16` bfloat16 from x rounded to
// bfloat16 (the result of x converted first, as a bfloat16 model's input is).
at::Tensor conv_direct(const at::Tensor& x, const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                       std::vector<int64_t> kernel, std::vector<int64_t> stride, std::vector<int64_t> pad,
                       std::vector<int64_t> dilation, const std::string& act, double lo, double hi, bool bf16) {
  RECORD_FUNCTION("sepconv::conv_direct", c10::ArrayRef<const c10::IValue>{});
  const char* who = "sepconv conv_direct";
  TORCH_CHECK(kernel.size() == 2, who, ": kernel is (kh, kw)");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, who,
              ": x must be float32 or bfloat16, got ", x.scalar_type());
  const auto [OH, OW] = conv_out_size(x, kernel[0], kernel[1], stride, pad, dilation, who);
  const int64_t K = kernel[0] * kernel[1] * x.size(1), nr = kernels().gemm_nr;
  TORCH_CHECK(packed.scalar_type() == at::kFloat && packed.numel() == (N + nr - 1) / nr * K * nr, who,
              ": packed must be gemm_pack of a float32 (N, kh * kw * C) weight");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() >= N),
              who, ": bias must come from gemm_bias");
  auto y = new_output({x.size(0), N, OH, OW}, x.options().dtype(bf16 ? at::kBFloat16 : at::kFloat)
                                                 .memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  DirectArgs a{x.data_ptr(), dtype_of(x), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
               x.size(0), x.size(1), x.size(2), x.size(3), OH, OW, kernel[0], kernel[1], stride[0], stride[1],
               pad[0], pad[2], dilation[0], dilation[1], N, packed.data_ptr<float>(),
               bias.has_value() ? bias->data_ptr<float>() : nullptr, parse_act(act, lo, hi), y.data_ptr(),
               bf16 ? BF16 : F32};
  kernels().conv_direct(a);
  return y;
}

// A versatile convolution (functional/versatile.py): a program of one call per nested
// sub-filter and channel segment, windows summed through partial sums; `act` is applied last.
at::Tensor versatile_gemm(const at::Tensor& x, const at::Tensor& packed, int64_t N, int64_t blocks,
                          const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                          std::vector<int64_t> runs, std::vector<int64_t> calls, std::vector<int64_t> kernel,
                          std::vector<int64_t> stride, std::vector<int64_t> pad, std::vector<int64_t> dilation,
                          const std::string& act, double lo, double hi) {
  RECORD_FUNCTION("sepconv::versatile_gemm", c10::ArrayRef<const c10::IValue>{});
  return gemm_program("sepconv versatile_gemm", x, packed, N, blocks, bias, scale, c10::nullopt, runs, calls, kernel,
                      stride, pad, dilation, parse_act(act, lo, hi), Act{});
}

// Global average pooling of (B, C, H, W) to (B, C, 1, 1) (`keepdim`) or (B, C), summed in
// float32 over channels_last rows by the kernel set. (ATen's adaptive pooling of a
// channels_last 1024 x 7 x 7 tensor took 0.19 ms here.)
at::Tensor global_avg_pool(const at::Tensor& x_in, bool keepdim) {
  RECORD_FUNCTION("sepconv::global_avg_pool", c10::ArrayRef<const c10::IValue>{});
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.dim() == 4 && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "sepconv global_avg_pool: x must be a 4-D float32 or bfloat16 tensor");
  const int64_t B = x.size(0), C = x.size(1), P = x.size(2) * x.size(3);
  auto y = at::empty({B, C}, x.options());
  if (y.numel() > 0) {
    const auto& ks = kernels();
    (x.scalar_type() == at::kBFloat16 ? ks.global_avg_pool_bf16 : ks.global_avg_pool_f32)(x.data_ptr(), B, P, C,
                                                                                           y.data_ptr());
  }
  return keepdim ? y.view({B, C, 1, 1}) : y;
}

// The depthwise geometry of depthwise_hwc's arguments on an input of `sizes` (B, C, H, W).
static Geometry hwc_geometry(at::IntArrayRef sizes, const at::Tensor& w_hwc, const std::vector<int64_t>& stride,
                             const std::vector<int64_t>& pad, const std::vector<int64_t>& dilation, const char* who) {
  TORCH_CHECK(sizes.size() == 4, who, ": the input must be (B, C, H, W), got ", sizes);
  TORCH_CHECK(w_hwc.dim() == 3 && w_hwc.size(2) == sizes[1] && w_hwc.scalar_type() == at::kFloat,
              who, ": weight must be float32 (kh, kw, C)");
  TORCH_CHECK(pad.size() == 4 && stride.size() == 2 && dilation.size() == 2, who,
              ": pad is (top, bottom, left, right), stride and dilation pairs");
  Geometry g{sizes[0], sizes[2], sizes[3], sizes[1], 0, 0, (int)w_hwc.size(0), (int)w_hwc.size(1), (int)stride[0],
             (int)stride[1], (int)pad[0], (int)pad[2], (int)dilation[0], (int)dilation[1]};
  g.OH = (g.H + pad[0] + pad[1] - g.dil_h * (g.kh - 1) - 1) / g.sh + 1;
  g.OW = (g.W + pad[2] + pad[3] - g.dil_w * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.OH > 0 && g.OW > 0, who, ": the output would be empty");
  return g;
}

// Inference depthwise convolution with a pre-transposed float32 (kh, kw, C) weight (weight_hwc)
// and any padding: `pad` is (top, bottom, left, right), so the sides may differ (TensorFlow's
// "same"). x (N, C, H, W) is made channels_last; y is channels_last.
at::Tensor depthwise_hwc(const at::Tensor& x, const at::Tensor& w_hwc, const c10::optional<at::Tensor>& bias,
                         std::vector<int64_t> stride, std::vector<int64_t> pad, std::vector<int64_t> dilation,
                         const std::string& act, double lo, double hi) {
  RECORD_FUNCTION("sepconv::depthwise_hwc", c10::ArrayRef<const c10::IValue>{});
  const at::Tensor xl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const Geometry g = hwc_geometry(xl.sizes(), w_hwc, stride, pad, dilation, "sepconv depthwise_hwc");
  auto y = new_output({g.N, g.C, g.OH, g.OW}, xl.options().memory_format(at::MemoryFormat::ChannelsLast));
  const auto& ks = kernels();
  run_forward(select_variant(ks.forward, ks.n_forward, g, dtype_of(xl)), xl.data_ptr(), w_hwc.data_ptr<float>(),
              bias.has_value() ? bias->data_ptr<float>() : nullptr, y.data_ptr(), g, parse_act(act, lo, hi));
  return y;
}

// depthwise_hwc followed by a 1x1 convolution (gemm's arguments) on its output, fused: each
// thread computes the depthwise rows of a chunk of output pixels into a buffer that stays in
// L2 and multiplies it there, so that the depthwise output never goes through memory (at
// batch 8 it does not fit the caches: written once and read once more, in MobileNetV1 about
// 120 MB an inference).
at::Tensor dw_gemm(const at::Tensor& x, const at::Tensor& w_hwc, const c10::optional<at::Tensor>& dw_bias,
                   std::vector<int64_t> stride, std::vector<int64_t> pad, std::vector<int64_t> dilation,
                   const std::string& dw_act, double dw_lo, double dw_hi, const at::Tensor& packed, int64_t N,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                   const std::string& act1, double lo1, double hi1, const std::string& act2, double lo2, double hi2) {
  RECORD_FUNCTION("sepconv::dw_gemm", c10::ArrayRef<const c10::IValue>{});
  const at::Tensor xl = x.contiguous(at::MemoryFormat::ChannelsLast);
  Geometry g = hwc_geometry(xl.sizes(), w_hwc, stride, pad, dilation, "sepconv dw_gemm");
  g.cached_out = true;
  TORCH_CHECK(xl.scalar_type() == packed.scalar_type(), "sepconv dw_gemm: input dtype ", xl.scalar_type(),
              " differs from the packed weight's ", packed.scalar_type());
  const bool bf16 = xl.scalar_type() == at::kBFloat16;
  const auto& ks = kernels();
  TORCH_CHECK(!bf16 || ks.gemm_bf16, "sepconv dw_gemm: this CPU has no bfloat16 GEMM");
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() >= N),
              "sepconv dw_gemm: bias must come from gemm_bias");
  auto y = new_output({g.N, N, g.OH, g.OW}, xl.options().memory_format(at::MemoryFormat::ChannelsLast));
  at::Tensor r;
  if (residual.has_value()) {
    r = residual->contiguous(at::MemoryFormat::ChannelsLast);
    TORCH_CHECK(r.sizes() == y.sizes() && r.scalar_type() == y.scalar_type(),
                "sepconv dw_gemm: residual must have the output's shape and dtype");
  }
  const auto* v = select_variant(ks.forward, ks.n_forward, g, dtype_of(xl));
  const Act dact = parse_act(dw_act, dw_lo, dw_hi), a1 = parse_act(act1, lo1, hi1), a2 = parse_act(act2, lo2, hi2);
  const int64_t rows = g.N * g.OH, item = xl.element_size(), row_bytes = g.OW * g.C * item;
  const int64_t threads = at::get_num_threads();
  // Chunks of whole output rows, each multiplied by all of B: as many bytes of depthwise
  // output as B has (256 KiB to 1 MiB: half a core's L2), so that reading B again costs no
  // more than the depthwise output would have; and one per thread at least.
  const int64_t target = std::clamp<int64_t>(packed.numel() * packed.element_size(), 256 << 10, 1 << 20);
  int64_t chunk = std::max<int64_t>(1, target / std::max<int64_t>(row_bytes, 1));
  chunk = std::max<int64_t>(1, std::min(chunk, (rows + threads - 1) / threads));
  const int64_t chunks = (rows + chunk - 1) / chunk;
  const float* db = dw_bias.has_value() ? dw_bias->data_ptr<float>() : nullptr;
  char* yp = static_cast<char*>(y.data_ptr());
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    std::vector<char> buf(chunk * row_bytes);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * chunk, r1 = std::min(rows, r0 + chunk);
      // the kernel writes row r at y + r * OW * C: shift the buffer so that row r0 lands at its start
      v->fn(xl.data_ptr(), w_hwc.data_ptr<float>(), db, buf.data() - r0 * row_bytes, g, dact, r0, r1);
      GemmArgs ga{(r1 - r0) * g.OW, N, g.C, buf.data(), g.C, yp + r0 * g.OW * N * item, N, nullptr, nullptr, N,
                  a1, a2};
      if (bias.has_value()) ga.bias = bias->data_ptr<float>();
      if (r.defined()) ga.residual = static_cast<const char*>(r.data_ptr()) + r0 * g.OW * N * item;
      (bf16 ? ks.gemm_bf16 : ks.gemm_f32)(ga, packed.data_ptr());
    }
  });
  return y;
}

// A 1x1 convolution (gemm's arguments, but for the residual) and the depthwise convolution
// reading its output (depthwise_hwc's), fused: the expansion then depthwise of an inverted
// residual block (MobileNetV2, EfficientNet). A task computes the 1x1 rows that a band of
// depthwise output rows reads into a buffer that stays in L2, and runs the depthwise kernel
// on it, so that the expanded tensor (6x the block's input, 38 MB at batch 8 in
// EfficientNet-B0's second stage) never goes through memory. Bands overlap by the rows the
// kernel shares ((kh - 1) * dh + 1 - sh): those 1x1 rows are computed twice. The depthwise
// channels are the 1x1's N; y is (B, N, OH, OW) channels_last in x's dtype.
at::Tensor gemm_dw(const at::Tensor& x, const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                   const std::string& act1, double lo1, double hi1, const at::Tensor& w_hwc,
                   const c10::optional<at::Tensor>& dw_bias, std::vector<int64_t> stride, std::vector<int64_t> pad,
                   std::vector<int64_t> dilation, const std::string& dw_act, double dw_lo, double dw_hi) {
  RECORD_FUNCTION("sepconv::gemm_dw", c10::ArrayRef<const c10::IValue>{});
  const char* who = "sepconv gemm_dw";
  const at::Tensor xl = x.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(xl.dim() == 4 && xl.scalar_type() == packed.scalar_type(), who, ": x is (B, K, H, W) of the packed "
              "weight's dtype ", packed.scalar_type(), ", got ", xl.sizes(), " ", xl.scalar_type());
  TORCH_CHECK(!bias.has_value() || (bias->scalar_type() == at::kFloat && bias->numel() >= N),
              who, ": bias must come from gemm_bias");
  const bool bf16 = xl.scalar_type() == at::kBFloat16;
  const auto& ks = kernels();
  TORCH_CHECK(!bf16 || ks.gemm_bf16, who, ": this CPU has no bfloat16 GEMM");
  const int64_t B = xl.size(0), K = xl.size(1), H = xl.size(2), W = xl.size(3), item = xl.element_size();
  // (the depthwise convolution's input is the 1x1's output: N channels)
  Geometry g = hwc_geometry({B, N, H, W}, w_hwc, stride, pad, dilation, who);
  g.cached_in = true;
  auto y = new_output({B, N, g.OH, g.OW}, xl.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (y.numel() == 0) return y;
  const auto* v = select_variant(ks.forward, ks.n_forward, g, dtype_of(xl));
  const Act a1 = parse_act(act1, lo1, hi1), dact = parse_act(dw_act, dw_lo, dw_hi);
  // bands of output rows whose 1x1 rows take about 512 KiB (half a core's L2), at least two
  // bands per thread
  const int64_t row_bytes = W * N * item, shared = (g.kh - 1) * g.dil_h + 1, threads = at::get_num_threads();
  int64_t band = std::max<int64_t>(1, ((512 << 10) / row_bytes - shared) / g.sh + 1);
  band = std::max<int64_t>(1, std::min(band, (B * g.OH + 2 * threads - 1) / (2 * threads)));
  const int64_t bands = (g.OH + band - 1) / band;
  const int64_t buf_rows = std::min<int64_t>(H, (band - 1) * g.sh + shared);
  const float* db = dw_bias.has_value() ? dw_bias->data_ptr<float>() : nullptr;
  const char* xp = static_cast<const char*>(xl.data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  at::parallel_for(0, B * bands, 1, [&](int64_t t0, int64_t t1) {
    std::vector<char> buf(buf_rows * row_bytes);
    Geometry one = g;
    one.N = 1;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / bands, oh0 = t % bands * band, oh1 = std::min(g.OH, oh0 + band);
      const int64_t ih0 = std::max<int64_t>(0, oh0 * g.sh - g.ph);
      const int64_t ih1 = std::min<int64_t>(H, (oh1 - 1) * g.sh - g.ph + shared);
      if (ih1 > ih0) {
        GemmArgs ga{(ih1 - ih0) * W, N, K, xp + (n * H + ih0) * W * K * item, K, buf.data(), N, nullptr, nullptr, 0,
                    a1, Act{}};
        if (bias.has_value()) ga.bias = bias->data_ptr<float>();
        (bf16 ? ks.gemm_bf16 : ks.gemm_f32)(ga, packed.data_ptr());
      }
      // the kernel reads input row ih at x + ih * W * N (rows outside [0, H) are padding, never
      // read): shift the buffer so that row ih0 lands at its start
      v->fn(buf.data() - ih0 * row_bytes, w_hwc.data_ptr<float>(), db, yp + n * g.OH * g.OW * N * item, one, dact,
            oh0, oh1);
    }
  });
  return y;
}

// The B^T rows then the A^T rows the Winograd kernels use for F(m, 3), m = 2 or 4.
std::vector<std::vector<float>> winograd_constants(int64_t m) {
  TORCH_CHECK(m == 2 || m == 4, "winograd_constants: m must be 2 or 4, got ", m);
  std::vector<std::vector<float>> out;
  auto add = [&](const auto& table) { for (auto& r : table) out.emplace_back(std::begin(r), std::end(r)); };
  if (m == 2) { add(BT23); add(AT23); } else { add(BT43); add(AT43); }
  return out;
}

}  // namespace sepconv

TORCH_LIBRARY(sepconv, m) {
  m.def("depthwise(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
        "str act=\"none\", float lo=0., float hi=0.) -> Tensor");
  m.def("depthwise_backward(Tensor grad_output, Tensor x, Tensor weight, int[2] stride, int[2] padding, "
        "int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def("winograd(Tensor x, Tensor u, Tensor? bias, int[2] padding, bool two_d, str act=\"none\", "
        "float lo=0., float hi=0.) -> Tensor");
  // The inference kernels of optimized models, for their Program (program.cpp); the Python
  // module's functions of the same names call them without the dispatcher.
  m.def("gemm(Tensor x, Tensor packed, int N, Tensor? bias, Tensor? residual, bool conv, str act1, float lo1, "
        "float hi1, str act2, float lo2, float hi2, Tensor? kscale=None) -> Tensor");
  m.def("conv_gemm(Tensor x, Tensor packed, int N, Tensor? bias, Tensor? residual, int[] kernel, int[] stride, "
        "int[] pad, int[] dilation, str act1, float lo1, float hi1, str act2, float lo2, float hi2) -> Tensor");
  m.def("versatile_gemm(Tensor x, Tensor packed, int N, int blocks, Tensor? bias, Tensor? scale, int[] runs, "
        "int[] calls, int[] kernel, int[] stride, int[] pad, int[] dilation, str act, float lo, float hi) -> Tensor");
  m.def("depthwise_hwc(Tensor x, Tensor w_hwc, Tensor? bias, int[] stride, int[] pad, int[] dilation, str act, "
        "float lo, float hi) -> Tensor");
  m.def("global_avg_pool(Tensor x, bool keepdim) -> Tensor");
  m.def("gemm_dw(Tensor x, Tensor packed, int N, Tensor? bias, str act1, float lo1, float hi1, Tensor w_hwc, "
        "Tensor? dw_bias, int[] stride, int[] pad, int[] dilation, str dw_act, float dw_lo, float dw_hi) -> Tensor");
  m.def("conv_direct(Tensor x, Tensor packed, int N, Tensor? bias, int[] kernel, int[] stride, int[] pad, "
        "int[] dilation, str act, float lo, float hi, bool bf16) -> Tensor");
  m.def("dw_gemm(Tensor x, Tensor w_hwc, Tensor? dw_bias, int[] stride, int[] pad, int[] dilation, str dw_act, "
        "float dw_lo, float dw_hi, Tensor packed, int N, Tensor? bias, Tensor? residual, str act1, float lo1, "
        "float hi1, str act2, float lo2, float hi2) -> Tensor");
}

TORCH_LIBRARY_IMPL(sepconv, CPU, m) {
  m.impl("depthwise", &sepconv::depthwise_cpu);
  m.impl("depthwise_backward", &sepconv::depthwise_backward_cpu);
  m.impl("winograd", &sepconv::winograd_cpu);
  using Str = c10::string_view;
  using Ints = c10::IntArrayRef;
  auto str = [](Str v) { return std::string(v); };
  auto vec = [](Ints v) { return v.vec(); };
  m.impl("gemm", [str](const at::Tensor& x, const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& residual, bool conv, Str act1, double lo1, double hi1, Str act2,
                       double lo2, double hi2, const c10::optional<at::Tensor>& kscale) {
    return sepconv::gemm(x, packed, N, bias, residual, conv, str(act1), lo1, hi1, str(act2), lo2, hi2, kscale);
  });
  m.impl("conv_gemm", [str, vec](const at::Tensor& x, const at::Tensor& packed, int64_t N,
                                 const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
                                 Ints kernel, Ints stride, Ints pad, Ints dilation, Str act1, double lo1, double hi1,
                                 Str act2, double lo2, double hi2) {
    return sepconv::conv_gemm(x, packed, N, bias, residual, vec(kernel), vec(stride), vec(pad), vec(dilation),
                              str(act1), lo1, hi1, str(act2), lo2, hi2);
  });
  m.impl("versatile_gemm", [str, vec](const at::Tensor& x, const at::Tensor& packed, int64_t N, int64_t blocks,
                                      const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                                      Ints runs, Ints calls, Ints kernel, Ints stride, Ints pad, Ints dilation, Str act,
                                      double lo, double hi) {
    return sepconv::versatile_gemm(x, packed, N, blocks, bias, scale, vec(runs), vec(calls), vec(kernel),
                                   vec(stride), vec(pad), vec(dilation), str(act), lo, hi);
  });
  m.impl("depthwise_hwc", [str, vec](const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                                     Ints stride, Ints pad, Ints dilation, Str act, double lo, double hi) {
    return sepconv::depthwise_hwc(x, w, bias, vec(stride), vec(pad), vec(dilation), str(act), lo, hi);
  });
  m.impl("global_avg_pool", &sepconv::global_avg_pool);
  m.impl("gemm_dw", [str, vec](const at::Tensor& x, const at::Tensor& packed, int64_t N,
                               const c10::optional<at::Tensor>& bias, Str act1, double lo1, double hi1,
                               const at::Tensor& w, const c10::optional<at::Tensor>& dw_bias, Ints stride, Ints pad,
                               Ints dilation, Str dw_act, double dw_lo, double dw_hi) {
    return sepconv::gemm_dw(x, packed, N, bias, str(act1), lo1, hi1, w, dw_bias, vec(stride), vec(pad), vec(dilation),
                            str(dw_act), dw_lo, dw_hi);
  });
  m.impl("conv_direct", [str, vec](const at::Tensor& x, const at::Tensor& packed, int64_t N,
                                   const c10::optional<at::Tensor>& bias, Ints kernel, Ints stride, Ints pad,
                                   Ints dilation, Str act, double lo, double hi, bool bf16) {
    return sepconv::conv_direct(x, packed, N, bias, vec(kernel), vec(stride), vec(pad), vec(dilation), str(act), lo,
                                hi, bf16);
  });
  m.impl("dw_gemm", [str, vec](const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& dw_bias,
                               Ints stride, Ints pad, Ints dilation, Str dw_act, double dw_lo, double dw_hi,
                               const at::Tensor& packed, int64_t N, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& residual, Str act1, double lo1, double hi1, Str act2,
                               double lo2, double hi2) {
    return sepconv::dw_gemm(x, w, dw_bias, vec(stride), vec(pad), vec(dilation), str(dw_act), dw_lo, dw_hi, packed, N,
                            bias, residual, str(act1), lo1, hi1, str(act2), lo2, hi2);
  });
}

TORCH_LIBRARY_IMPL(sepconv, Autograd, m) {
  m.impl("depthwise", &sepconv::depthwise_autograd);
}

extern "C" const char sepconv_source_digest[];   // generated by setup.py

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  sepconv::bind_program(m);
  m.def("isa", [] { return std::string(sepconv::kernels().isa); }, "the kernel set chosen for this CPU");
  m.def("source_digest", [] { return std::string(sepconv_source_digest); },
        "digest of the C++ sources this extension was built from");
  m.def("kernel_name", &sepconv::kernel_name, "the kernel a call of this kind and shape takes: '<isa>:<variant>'");
  m.def("variants", [] {
    const auto& ks = sepconv::kernels();
    std::vector<std::string> out;
    for (int i = 0; i < ks.n_forward; ++i) out.push_back(std::string("forward:") + ks.forward[i].name);
    for (int i = 0; i < ks.n_grad_weight; ++i) out.push_back(std::string("grad_weight:") + ks.grad_weight[i].name);
    for (int i = 0; i < ks.n_grad_input; ++i) out.push_back(std::string("grad_input:") + ks.grad_input[i].name);
    for (int i = 0; i < ks.n_backward; ++i) out.push_back(std::string("backward:") + ks.backward[i].name);
    for (int i = 0; i < ks.n_winograd; ++i) out.push_back(std::string("winograd:") + ks.winograd[i].name);
    return out;
  }, "every kernel of the chosen set, as 'kind:name'");
  m.def("depthwise", &sepconv::depthwise_call,
        "sepconv::depthwise without the dispatcher (about 3 us less a call): for eager calls when no dispatch "
        "mode, tracer or compiler needs to see the op");
  m.def("gemm_pack", &sepconv::gemm_pack, "pack a (N, K) weight for gemm (float32, or bfloat16 with bf16=True)",
        pybind11::arg("weight"), pybind11::arg("bf16") = false);
  m.def("gemm_unpack", &sepconv::gemm_unpack, "the (N, K) float32 weight of a gemm_pack result");
  m.def("gemm_bias", &sepconv::gemm_bias, "a bias as float32 padded to whole GEMM panels");
  namespace py = pybind11;
  m.def("gemm", &sepconv::gemm, "y = act2(act1((x * kscale) . W^T + bias) + residual) with W packed by gemm_pack",
        py::arg("x"), py::arg("packed"), py::arg("N"), py::arg("bias"), py::arg("residual"), py::arg("conv"),
        py::arg("act1"), py::arg("lo1"), py::arg("hi1"), py::arg("act2"), py::arg("lo2"), py::arg("hi2"),
        py::arg("kscale") = py::none());
  m.def("conv_gemm", &sepconv::conv_gemm, "a dense convolution as im2col + gemm (weight packed as (N, kh, kw, C))");
  m.def("versatile_gemm", &sepconv::versatile_gemm,
        "a versatile convolution as im2col by runs + a program of GEMM calls (functional/versatile.py)");
  m.def("global_avg_pool", &sepconv::global_avg_pool, "mean over H and W of a channels_last tensor");
  m.def("gemm_dw", &sepconv::gemm_dw,
        "a 1x1 convolution and the depthwise convolution after it in one pass (its output stays in L2)");
  m.def("conv_direct", &sepconv::conv_direct,
        "a dense convolution of an input with few channels (a stem) from any layout, by direct implicit GEMM");
  m.def("dw_gemm", &sepconv::dw_gemm,
        "depthwise_hwc and a 1x1 convolution (gemm) on its output in one pass: depthwise arguments, then gemm's");
  m.def("depthwise_hwc", &sepconv::depthwise_hwc,
        "inference depthwise with a (kh, kw, C) float32 weight and (top, bottom, left, right) padding");
  m.def("gemm_bf16_kind", [] { return std::string(sepconv::kernels().gemm_bf16_kind); },
        "the bfloat16 GEMM this CPU runs: 'amx', 'avx512bf16' or 'none'");
  m.def("gemm_bf16_supported", [] { return sepconv::kernels().gemm_bf16 != nullptr; },
        "whether this CPU runs the bfloat16 GEMM (AVX512-BF16)");
  m.def("winograd_constants", &sepconv::winograd_constants, "the B^T rows then the A^T rows of F(m,3) the kernels use");
  m.def("weight_cache_bytes", [] { return sepconv::weight_cache_held; },
        "bytes the inference weight cache holds (transposes and the copies they were made from)");
  m.def("weight_hwc", &sepconv::weight_hwc, "(C, 1, kh, kw) -> float32 (kh, kw, C), taps optionally flipped",
        pybind11::arg("weight"), pybind11::arg("flip") = false);
  m.def("grad_input", &sepconv::grad_input, "depthwise input gradient by gather, NHWC");
  m.def("grad_weight", &sepconv::grad_weight, "depthwise weight and bias gradients, NHWC -> float32");
  m.def("grad_both", &sepconv::grad_both, "all three gradients in one pass over dy; [] where no variant serves");
}
