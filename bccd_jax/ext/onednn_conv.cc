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
// Every primitive, the reorders included, runs in oneDNN's user scratchpad mode with a scratchpad of its own, so
// that any thread may run it (XLA's CPU runtime calls a handler from its own threads; oneDNN's library mode wants
// the thread that created the primitive). Primitives are created once per shape and kept, with their scratchpads and
// the buffer of reordered weights, in a least-recently-used cache of at most kCacheCapacity entries (each batch size
// is a shape of its own); a call holds its entry, and the entry's lock, while it runs. Every exception becomes an
// FFI error (std::bad_alloc: RESOURCE_EXHAUSTED): none reaches XLA. A batch of 0 needs no oneDNN: its outputs are
// empty, its kernel and bias gradients zero.
//
// The library carries BccdOnednnBuildId, "bccd-onednn-build-id:" and the hash of this file and the build's flags
// (bccd_jax.ext.build defines BCCD_ONEDNN_BUILD_ID): bccd_jax.ext.onednn reads it from the file before loading it
// and refuses a library built from another source.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

#ifndef BCCD_ONEDNN_BUILD_ID
#error "build with python -m bccd_jax.ext.build (it defines BCCD_ONEDNN_BUILD_ID)"
#endif

extern "C" __attribute__((used, visibility("default"))) const char BccdOnednnBuildId[] =
    "bccd-onednn-build-id:" BCCD_ONEDNN_BUILD_ID;

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

constexpr long kCacheCapacity = 64;  // the deep CNN's train step makes 13 primitives per batch size

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

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr a;
  a.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return a;
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
  memory::desc bias() const { return memory::desc({oc}, dt::f32, tag::a); }
  memory::dims strides() const { return {1, 1}; }
  memory::dims pad_l() const { return {pt, pl}; }
  memory::dims pad_r() const { return {pb, pr}; }
  dnnl::convolution_forward::primitive_desc fwd_pd(bool has_bias, dnnl::primitive_attr attr = {}) const {
    return dnnl::convolution_forward::primitive_desc(
        cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src(),
        weights(act, tag::any), has_bias ? bias() : memory::desc(), dst(), strides(), pad_l(), pad_r(), attr);
  }
};

// A primitive with its own scratchpad (user scratchpad mode).
struct Prim {
  dnnl::primitive prim;
  memory scratch;
  void run(dnnl::stream& s, std::unordered_map<int, memory> args) const {
    args.emplace(DNNL_ARG_SCRATCHPAD, scratch);
    prim.execute(s, args);
  }
};

template <typename P, typename PD>
Prim make_prim(const PD& pd) {
  return Prim{P(pd), memory(pd.scratchpad_desc(), cpu_engine())};
}

Prim make_reorder(const memory::desc& from, const memory::desc& to) {
  return make_prim<dnnl::reorder>(dnnl::reorder::primitive_desc(cpu_engine(), from, cpu_engine(), to,
                                                                 user_scratchpad()));
}

void reorder(dnnl::stream& s, const Prim& r, const memory& from, const memory& to) {
  r.run(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

// One cached convolution with what it needs besides the call's buffers.
struct Entry {
  std::mutex mu;
  Prim conv;
  memory::desc user_w;       // the weights as XLA holds them (hwio)
  bool reorder_w = false;    // the weights go through `w_reorder` (into / out of `wbuf`)
  Prim w_reorder;
  memory wbuf;
  // bwd_weights with few input channels: x and dy laid out as the primitive prefers
  bool reorder_act = false;
  Prim src_reorder, ddst_reorder;
  memory src_buf, ddst_buf;
  std::string impl;

  // `user_w` and, where the primitive wants another layout, the reorder between it and `wbuf` (`into`: to the
  // primitive's layout; else back from it).
  void weights(const Geometry& g, dt d, const memory::desc& prim_w, bool into) {
    user_w = g.weights(d, tag::hwio);
    reorder_w = prim_w != user_w;
    if (reorder_w) {
      wbuf = memory(prim_w, cpu_engine());
      w_reorder = into ? make_reorder(user_w, prim_w) : make_reorder(prim_w, user_w);
    }
  }
};

// Entries by key, the least recently used dropped beyond the capacity (a running call keeps its own).
class Cache {
 public:
  template <typename Make>
  std::shared_ptr<Entry> get(const std::string& key, Make make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      order_.splice(order_.begin(), order_, it->second.second);
      return it->second.first;
    }
    auto e = std::make_shared<Entry>();
    make(*e);
    order_.push_front(key);
    map_.emplace(key, std::make_pair(e, order_.begin()));
    trim();
    return e;
  }

  long set_capacity(long n) {
    std::lock_guard<std::mutex> lock(mu_);
    long old = capacity_;
    if (n >= 0) {
      capacity_ = n;
      trim();
    }
    return old;
  }

  std::string describe() {
    std::lock_guard<std::mutex> lock(mu_);
    std::ostringstream s;
    for (const auto& k : order_) s << k << ' ' << map_.at(k).first->impl << '\n';
    return s.str();
  }

 private:
  void trim() {
    while (long(order_.size()) > capacity_) {
      map_.erase(order_.back());
      order_.pop_back();
    }
  }
  std::mutex mu_;
  long capacity_ = kCacheCapacity;
  std::list<std::string> order_;  // most recently used first
  std::unordered_map<std::string, std::pair<std::shared_ptr<Entry>, std::list<std::string>::iterator>> map_;
};

Cache& cache() {
  static Cache c;
  return c;
}

ffi::Error geometry(const ffi::AnyBuffer& x_like, ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions yd,
                    ffi::AnyBuffer::Dimensions wd, ffi::DataType wtype, int64_t pt, int64_t pb, int64_t pl,
                    int64_t pr, Geometry* g) {
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

// `body()` with every exception turned into an FFI error.
template <typename Body>
ffi::Error guarded(Body body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("oneDNN: ") + e.what());
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, "oneDNN conv: out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("oneDNN conv: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("oneDNN conv: unknown exception");
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwdImpl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y,
                       int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right, bool has_bias) {
  Geometry g;
  if (auto err = geometry(x, x.dimensions(), y->dimensions(), w.dimensions(), w.element_type(), pad_top,
                          pad_bottom, pad_left, pad_right, &g);
      err.failure())
    return err;
  if (y->element_type() != x.element_type()) return ffi::Error::InvalidArgument("oneDNN conv: y dtype != x dtype");
  if (g.n == 0) return ffi::Error::Success();
  return guarded([&] {
    auto e = cache().get(g.key("fwd", has_bias), [&](Entry& e) {
      auto pd = g.fwd_pd(has_bias, user_scratchpad());
      e.conv = make_prim<dnnl::convolution_forward>(pd);
      e.weights(g, g.wdt, pd.weights_desc(), true);
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory wu(e->user_w, cpu_engine(), w.untyped_data());
    if (e->reorder_w) reorder(s, e->w_reorder, wu, e->wbuf);
    std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(g.src(), cpu_engine(), x.untyped_data())},
                                         {DNNL_ARG_WEIGHTS, e->reorder_w ? e->wbuf : wu},
                                         {DNNL_ARG_DST, memory(g.dst(), cpu_engine(), y->untyped_data())}};
    if (has_bias) args.emplace(DNNL_ARG_BIAS, memory(g.bias(), cpu_engine(), b.untyped_data()));
    e->conv.run(s, std::move(args));
    s.wait();
  });
}

ffi::Error ConvBwdDataImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx, int64_t pad_top,
                           int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  Geometry g;
  if (auto err = geometry(dy, dx->dimensions(), dy.dimensions(), w.dimensions(), w.element_type(), pad_top,
                          pad_bottom, pad_left, pad_right, &g);
      err.failure())
    return err;
  if (dx->element_type() != dy.element_type()) return ffi::Error::InvalidArgument("oneDNN conv: dx dtype != dy dtype");
  if (g.n == 0) return ffi::Error::Success();
  return guarded([&] {
    auto e = cache().get(g.key("bwd_data"), [&](Entry& e) {
      auto hint = g.fwd_pd(false);
      auto pd = dnnl::convolution_backward_data::primitive_desc(
          cpu_engine(), dnnl::algorithm::convolution_direct, g.src(), g.weights(g.act, tag::any), g.dst(),
          g.strides(), g.pad_l(), g.pad_r(), hint, user_scratchpad());
      e.conv = make_prim<dnnl::convolution_backward_data>(pd);
      e.weights(g, g.wdt, pd.weights_desc(), true);
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory wu(e->user_w, cpu_engine(), w.untyped_data());
    if (e->reorder_w) reorder(s, e->w_reorder, wu, e->wbuf);
    e->conv.run(s, {{DNNL_ARG_DIFF_DST, memory(g.dst(), cpu_engine(), dy.untyped_data())},
                    {DNNL_ARG_WEIGHTS, e->reorder_w ? e->wbuf : wu},
                    {DNNL_ARG_DIFF_SRC, memory(g.src(), cpu_engine(), dx->untyped_data())}});
    s.wait();
  });
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
  if (g.n == 0) {  // sums over no images
    std::memset(dw->untyped_data(), 0, dw->size_bytes());
    std::memset(db->untyped_data(), 0, db->size_bytes());
    return ffi::Error::Success();
  }
  return guarded([&] {
    auto e = cache().get(g.key("bwd_weights"), [&](Entry& e) {
      auto hint = g.fwd_pd(true);
      e.reorder_act = g.ic < 16;  // nhwc with few channels takes a slow kernel (10x at 3 channels)
      tag act = e.reorder_act ? tag::any : tag::nhwc;
      auto pd = dnnl::convolution_backward_weights::primitive_desc(
          cpu_engine(), dnnl::algorithm::convolution_direct, g.src(act), g.weights(dt::f32, tag::any), g.bias(),
          g.dst(act), g.strides(), g.pad_l(), g.pad_r(), hint, user_scratchpad());
      if (e.reorder_act) {
        e.src_buf = memory(pd.src_desc(), cpu_engine());
        e.ddst_buf = memory(pd.diff_dst_desc(), cpu_engine());
        e.src_reorder = make_reorder(g.src(), pd.src_desc());
        e.ddst_reorder = make_reorder(g.dst(), pd.diff_dst_desc());
      }
      e.conv = make_prim<dnnl::convolution_backward_weights>(pd);
      e.weights(g, dt::f32, pd.diff_weights_desc(), false);
      e.impl = pd.impl_info_str();
    });
    std::lock_guard<std::mutex> lock(e->mu);
    auto& s = cpu_stream();
    memory wu(e->user_w, cpu_engine(), dw->untyped_data());
    memory src(g.src(), cpu_engine(), x.untyped_data()), ddst(g.dst(), cpu_engine(), dy.untyped_data());
    if (e->reorder_act) {
      reorder(s, e->src_reorder, src, e->src_buf);
      reorder(s, e->ddst_reorder, ddst, e->ddst_buf);
    }
    e->conv.run(s, {{DNNL_ARG_SRC, e->reorder_act ? e->src_buf : src},
                    {DNNL_ARG_DIFF_DST, e->reorder_act ? e->ddst_buf : ddst},
                    {DNNL_ARG_DIFF_WEIGHTS, e->reorder_w ? e->wbuf : wu},
                    {DNNL_ARG_DIFF_BIAS, memory(g.bias(), cpu_engine(), db->untyped_data())}});
    if (e->reorder_w) reorder(s, e->w_reorder, e->wbuf, wu);
    s.wait();
  });
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

// The implementation oneDNN chose for each cached primitive ("key impl" per line, the most recently used first),
// for benchmarks and tests.
extern "C" int BccdOnednnDescribe(char* out, int size) {
  std::string text;
  try {
    text = cache().describe();
  } catch (...) {
    return -1;
  }
  if (size > 0) {
    int m = std::min<int>(size - 1, text.size());
    text.copy(out, m);
    out[m] = '\0';
  }
  return int(text.size());
}

// Sets the cache's capacity to `n` entries when n >= 0 (dropping the least recently used beyond it); returns the
// capacity before.
extern "C" long BccdOnednnCacheCapacity(long n) { return cache().set_capacity(n); }

// 1 when oneDNN runs bfloat16 convolutions on native instructions here (AVX512-BF16, AMX or
// AVX2-VNNI-2); 0 when it would emulate them.
extern "C" int BccdOnednnNativeBf16() {
  unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  auto has = [isa](unsigned mask) { return (isa & mask) == mask; };
  return has(dnnl_cpu_isa_avx512_core_bf16) || has(dnnl_cpu_isa_avx2_vnni_2);
}
