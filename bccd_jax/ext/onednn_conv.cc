// oneDNN convolutions for bccd_jax.models.conv as XLA FFI handlers (CPU).
//
// NHWC activations, HWIO weights, stride 1, no dilation, one group, explicit padding
// (pad_top, pad_bottom, pad_left, pad_right). Activations are float32 or bfloat16 (bfloat16:
// oneDNN's bf16 kernels, float32 accumulation); the weights are passed as they are stored
// (float32 master weights, or bfloat16) and converted inside, by the reorder that lays them
// out for the primitive. The kernel gradient and the bias gradient come back in float32.
//
//   BccdOnednnConvFwd          (x, w, b) -> y            attrs: pads, has_bias
//   BccdOnednnConvBwdData      (dy, w) -> dx             attrs: pads
//   BccdOnednnConvBwdWeights   (x, dy) -> (dw f32, db f32)   attrs: pads
//
// Primitives are created once per shape and kept (with their scratchpad and the buffer of
// reordered weights); a call holds its entry's lock while it runs.

#include <cstdint>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

dnnl::stream& cpu_stream() {
  thread_local dnnl::stream s(cpu_engine());
  return s;
}

bool to_dnnl(ffi::DataType t, dt* out) {
  switch (t) {
    case ffi::DataType::F32: *out = dt::f32; return true;
    case ffi::DataType::BF16: *out = dt::bf16; return true;
    default: return false;
  }
}

struct Geometry {
  int64_t n, ih, iw, ic, oh, ow, oc, kh, kw;
  int64_t pt, pb, pl, pr;
  dt act, wdt;
  std::string key(const char* kind, int extra = 0) const {
    std::ostringstream s;
    s << kind << ':' << n << ',' << ih << ',' << iw << ',' << ic << ',' << oh << ',' << ow << ',' << oc << ','
      << kh << ',' << kw << ',' << pt << ',' << pb << ',' << pl << ',' << pr << ',' << int(act) << ','
      << int(wdt) << ',' << extra;
    return s.str();
  }
  memory::desc src(tag t = tag::nhwc) const { return memory::desc({n, ic, ih, iw}, act, t); }
  memory::desc dst(tag t = tag::nhwc) const { return memory::desc({n, oc, oh, ow}, act, t); }
  memory::desc weights(dt d, tag t) const { return memory::desc({oc, ic, kh, kw}, d, t); }
  memory::dims strides() const { return {1, 1}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
  dnnl::convolution_forward::primitive_desc fwd_pd(bool bias, dnnl::primitive_attr attr = {}) const {
    auto b = bias ? memory::desc({oc}, dt::f32, tag::a) : memory::desc();
    return dnnl::convolution_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src(),
        weights(act, tag::any), b, dst(), strides(), pad_l(), pad_r(), attr);
  }
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
}

// One cached primitive with what it needs besides the call's buffers.
struct Entry {
  std::mutex mu;
  dnnl::primitive prim;
  memory scratch;
  bool reorder = false;      // the weights go through `reorder_prim` (into / out of `wbuf`)
  dnnl::reorder reorder_prim;
  memory wbuf;
  memory::desc user_w;       // the weights as XLA holds them (hwio)
  // bwd_weights with few input channels: x and dy laid out as the primitive prefers
  bool reorder_act = false;
  dnnl::reorder src_reorder, ddst_reorder;
  memory src_buf, ddst_buf;
  std::string impl;
};

std::mutex cache_mu;
std::unordered_map<std::string, std::unique_ptr<Entry>> cache;

template <typename Make>
Entry* lookup(const std::string& key, Make make) {
  std::lock_guard<std::mutex> lock(cache_mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second.get();
  auto e = std::make_unique<Entry>();
  make(*e);
  Entry* p = e.get();
  cache.emplace(key, std::move(e));
  return p;
}

ffi::Error geometry(const ffi::AnyBuffer& x_like, ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions yd, ffi::AnyBuffer::Dimensions wd,
                    ffi::DataType wtype, int64_t pt, int64_t pb, int64_t pl, int64_t pr, Geometry* g) {
  if (xd.size() != 4 || yd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("oneDNN conv: NHWC activations and HWIO weights expected");
  if (!to_dnnl(x_like.element_type(), &g->act) || !to_dnnl(wtype, &g->wdt))
    return ffi::Error::InvalidArgument("oneDNN conv: float32 or bfloat16 buffers expected");
  g->n = xd[0]; g->ih = xd[1]; g->iw = xd[2]; g->ic = xd[3];
  g->oh = yd[1]; g->ow = yd[2]; g->oc = yd[3];
  g->kh = wd[0]; g->kw = wd[1];
  g->pt = pt; g->pb = pb; g->pl = pl; g->pr = pr;
  if (wd[2] != g->ic || wd[3] != g->oc || yd[0] != g->n || g->oh != g->ih + pt + pb - g->kh + 1 ||
      g->ow != g->iw + pl + pr - g->kw + 1)
    return ffi::Error::InvalidArgument("oneDNN conv: inconsistent shapes");
  return ffi::Error::Success();
}

#define TRY_DNNL(...)                                                                    \
  try {                                                                                  \
    __VA_ARGS__                                                                          \
  } catch (const dnnl::error& e) {                                                       \
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());                     \
  }

ffi::Error ConvFwdImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, bool has_bias) {
  Geometry g;
  if (auto err = geometry(x, x.dimensions(), y->dimensions(), w.dimensions(), w.element_type(), pad_top,
                          pad_bottom, pad_left, pad_right, &g);
      err.failure())
    return err;
  if (y->element_type() != x.element_type()) return ffi::Error::InvalidArgument("oneDNN conv: y dtype != x dtype");
  TRY_DNNL({
    Entry* e = lookup(g.key("fwd", has_bias), [&](Entry& e) {
      auto pd = g.fwd_pd(has_bias, user_scratchpad());
      e.prim = dnnl::convolution_forward(pd);
      e.scratch = memory(pd.scratchpad_desc(), cpu_engine());
      e.user_w = g.weights(g.wdt, tag::hwio);
      e.reorder = pd.weights_desc() != e.user_w;
      if (e.reorder) {
        e.wbuf = memory(pd.weights_desc(), cpu_engine());
        e.reorder_prim = dnnl::reorder(memory(e.user_w, cpu_engine(), DNNL_MEMORY_NONE), e.wbuf);
      }
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory src(g.src(), cpu_engine(), x.untyped_data());
    memory dst(g.dst(), cpu_engine(), y->untyped_data());
    memory wu(e->user_w, cpu_engine(), w.untyped_data());
    if (e->reorder) e->reorder_prim.execute(s, wu, e->wbuf);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src},
                                         {DNNL_ARG_WEIGHTS, e->reorder ? e->wbuf : wu},
                                         {DNNL_ARG_DST, dst},
                                         {DNNL_ARG_SCRATCHPAD, e->scratch}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, memory(memory::desc({g.oc}, dt::f32, tag::a), cpu_engine(),
                                                    b.untyped_data()));
    e->prim.execute(s, args);
    s.wait();
  })
  return ffi::Error::Success();
}

ffi::Error ConvBwdDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t pad_top,
                           int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  if (auto err = geometry(dy, dx->dimensions(), dy.dimensions(), w.dimensions(), w.element_type(), pad_top,
                          pad_bottom, pad_left, pad_right, &g);
      err.failure())
    return err;
  if (dx->element_type() != dy.element_type()) return ffi::Error::InvalidArgument("oneDNN conv: dx dtype != dy dtype");
  TRY_DNNL({
    Entry* e = lookup(g.key("bwd_data"), [&](Entry& e) {
      auto hint = g.fwd_pd(false);
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          cpu_engine(), dnnl::algorithm::convolution_direct, g.src(), g.weights(g.act, tag::any), g.dst(),
          g.strides(), g.pad_l(), g.pad_r(), hint, user_scratchpad());
      e.prim = dnnl::convolution_backward_data(pd);
      e.scratch = memory(pd.scratchpad_desc(), cpu_engine());
      e.user_w = g.weights(g.wdt, tag::hwio);
      e.reorder = pd.weights_desc() != e.user_w;
      if (e.reorder) {
        e.wbuf = memory(pd.weights_desc(), cpu_engine());
        e.reorder_prim = dnnl::reorder(memory(e.user_w, cpu_engine(), DNNL_MEMORY_NONE), e.wbuf);
      }
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory wu(e->user_w, cpu_engine(), w.untyped_data());
    if (e->reorder) e->reorder_prim.execute(s, wu, e->wbuf);
    e->prim.execute(s, {{DNNL_ARG_DIFF_DST, memory(g.dst(), cpu_engine(), dy.untyped_data())},
                        {DNNL_ARG_WEIGHTS, e->reorder ? e->wbuf : wu},
                        {DNNL_ARG_DIFF_SRC, memory(g.src(), cpu_engine(), dx->untyped_data())},
                        {DNNL_ARG_SCRATCHPAD, e->scratch}});
    s.wait();
  })
  return ffi::Error::Success();
}

ffi::Error ConvBwdWeightsImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                              ffi::Result<ffi::AnyBuffer> db, int64_t pad_top, int64_t pad_bottom, int64_t pad_left,
                              int64_t pad_right) {
  Geometry g;
  if (auto err = geometry(x, x.dimensions(), dy.dimensions(), dw->dimensions(), dw->element_type(), pad_top,
                          pad_bottom, pad_left, pad_right, &g);
      err.failure())
    return err;
  if (dy.element_type() != x.element_type() || dw->element_type() != ffi::DataType::F32 ||
      db->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument("oneDNN conv: dy as x, float32 dw and db expected");
  TRY_DNNL({
    Entry* e = lookup(g.key("bwd_weights"), [&](Entry& e) {
      auto hint = g.fwd_pd(true);
      auto bias = memory::desc({g.oc}, dt::f32, tag::a);
      e.reorder_act = g.ic < 16;  // nhwc with few channels takes a slow kernel (10x at 3 channels)
      tag act = e.reorder_act ? tag::any : tag::nhwc;
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          cpu_engine(), dnnl::algorithm::convolution_direct, g.src(act), g.weights(dt::f32, tag::any), bias,
          g.dst(act), g.strides(), g.pad_l(), g.pad_r(), hint, user_scratchpad());
      if (e.reorder_act) {
        e.src_buf = memory(pd.src_desc(), cpu_engine());
        e.ddst_buf = memory(pd.diff_dst_desc(), cpu_engine());
        e.src_reorder = dnnl::reorder(memory(g.src(), cpu_engine(), DNNL_MEMORY_NONE), e.src_buf);
        e.ddst_reorder = dnnl::reorder(memory(g.dst(), cpu_engine(), DNNL_MEMORY_NONE), e.ddst_buf);
      }
      e.prim = dnnl::convolution_backward_weights(pd);
      e.scratch = memory(pd.scratchpad_desc(), cpu_engine());
      e.user_w = g.weights(dt::f32, tag::hwio);
      e.reorder = pd.diff_weights_desc() != e.user_w;
      if (e.reorder) {
        e.wbuf = memory(pd.diff_weights_desc(), cpu_engine());
        e.reorder_prim = dnnl::reorder(e.wbuf, memory(e.user_w, cpu_engine(), DNNL_MEMORY_NONE));
      }
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory wu(e->user_w, cpu_engine(), dw->untyped_data());
    memory src(g.src(), cpu_engine(), x.untyped_data()), ddst(g.dst(), cpu_engine(), dy.untyped_data());
    if (e->reorder_act) {
      e->src_reorder.execute(s, src, e->src_buf);
      e->ddst_reorder.execute(s, ddst, e->ddst_buf);
    }
    e->prim.execute(s, {{DNNL_ARG_SRC, e->reorder_act ? e->src_buf : src},
                        {DNNL_ARG_DIFF_DST, e->reorder_act ? e->ddst_buf : ddst},
                        {DNNL_ARG_DIFF_WEIGHTS, e->reorder ? e->wbuf : wu},
                        {DNNL_ARG_DIFF_BIAS, memory(memory::desc({g.oc}, dt::f32, tag::a), cpu_engine(),
                                                    db->untyped_data())},
                        {DNNL_ARG_SCRATCHPAD, e->scratch}});
    if (e->reorder) e->reorder_prim.execute(s, e->wbuf, wu);
    s.wait();
  })
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BccdOnednnConvFwd, ConvFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<bool>("has_bias"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BccdOnednnConvBwdData, ConvBwdDataImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(BccdOnednnConvBwdWeights, ConvBwdWeightsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right"));

// The implementation oneDNN chose for each cached primitive ("key impl" per line), for benchmarks.
extern "C" int BccdOnednnDescribe(char* out, int size) {
  std::ostringstream s;
  {
    std::lock_guard<std::mutex> lock(cache_mu);
    for (auto& [k, e] : cache) s << k << ' ' << e->impl << '\n';
  }
  std::string text = s.str();
  if (size > 0) {
    int m = std::min<int>(size - 1, text.size());
    text.copy(out, m);
    out[m] = '\0';
  }
  return int(text.size());
}

// 1 when oneDNN runs bfloat16 convolutions on native instructions here (AVX512-BF16, AMX or
// AVX2-VNNI-2); 0 when it would emulate them.
extern "C" int BccdOnednnNativeBf16() {
  unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  auto has = [isa](unsigned mask) { return (isa & mask) == mask; };
  return has(dnnl_cpu_isa_avx512_core_bf16) || has(dnnl_cpu_isa_avx2_vnni_2);
}
