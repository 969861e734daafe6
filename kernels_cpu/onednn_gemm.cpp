#include "kernels_cpu/onednn_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <compare>
#include <map>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <unordered_map>
#include <vector>

#include "common/error.h"
#include "format/dtype.h"
#include "format/quant_blocks.h"
#include "kernels_cpu/ref_ops.h"

#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_OMP
// The OpenMP API of libgomp, which Debian's libdnnl2 runs on (declared here rather than through
// omp.h, which clang lacks without libomp-dev).
extern "C" int omp_get_max_threads(void);
extern "C" void omp_set_num_threads(int);
#elif DNNL_CPU_RUNTIME != DNNL_RUNTIME_SEQ
#error "oneDNN with a TBB or threadpool CPU runtime: onednn_gemm.cpp only knows how to keep OpenMP to one thread"
#endif

namespace itera {

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using Desc = dnnl::memory::desc;

// Every oneDNN call runs inside one: the calling thread asks OpenMP for one thread, so oneDNN
// starts no team (and sizes its primitives for one thread); the caller's setting comes back after.
struct OneThread {
#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_OMP
    int saved = omp_get_max_threads();
    OneThread() { omp_set_num_threads(1); }
    ~OneThread() { omp_set_num_threads(saved); }
#else
    OneThread() {}
    ~OneThread() {}
#endif
};

const dnnl::engine& cpu_engine() {
    static const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    return engine;
}

// How a weight enters the matmul: fp32 row_major as it lies in the file; fp32 rows16 and fp16 (either
// layout) as an FP32 copy of its values in the primitive's preferred layout; the block formats (q8_0, q4_0, nf4, q3_0,
// q2_0) as s8 rows, since oneDNN 2.6 has neither per-block scales nor 4-bit weights. The s8 grid of a 4-, 3- or 2-bit
// row is finer than the row's own (127 steps up to its largest value against 8, 4 or 1.5 up to a block's), so the
// second rounding adds little to what the format already lost, and the int8 kernels run about twice the FP32 speed.
enum class Kind { f32_in_place, f32_packed, u8s8 };

Kind kind_of(const Weight& w) {
    if (w.dtype == DType::f32) return w.layout == Layout::row_major ? Kind::f32_in_place : Kind::f32_packed;
    return w.dtype == DType::f16 ? Kind::f32_packed : Kind::u8s8;
}

// One primitive, shared by every weight of its shape. `id` is unique in the process, so per-thread
// argument caches can never confuse an entry with a later one at the same address.
struct Entry {
    uint64_t id = 0;
    dnnl::matmul prim;
    Desc src, wei, dst, scratch;
    std::string impl;
};

std::atomic<uint64_t> next_entry_id{1};

// A weight copy in the primitive's preferred layout; q8_0 also keeps its per-row scale and the row
// sums of the s8 values (for the activation zero point).
struct Packed {
    Desc layout;
    dnnl::memory mem;
    std::vector<float> scale, rowsum;
};

// What one thread owns: its stream, memory objects per primitive (only the handles change per
// call), the scratchpad and the int8 activation buffers.
struct ThreadArgs {
    dnnl::memory src, wei, dst, scratch;
};

struct ThreadState {
    dnnl::stream stream{cpu_engine()};
    std::unordered_map<uint64_t, ThreadArgs> args;  // by Entry::id
    std::vector<uint8_t> scratch;                   // 64 bytes of slack for alignment
    std::vector<uint8_t> xq;
    std::vector<float> sx, zx;
    std::vector<int32_t> acc;

    ThreadArgs& args_for(const Entry& e) {
        if (args.size() > 4096) args.clear();  // entries of objects long gone; rebuilt on demand
        auto it = args.find(e.id);
        if (it == args.end()) {
            const dnnl::engine& eng = cpu_engine();
            it =
                args.emplace(e.id, ThreadArgs{dnnl::memory(e.src, eng, nullptr), dnnl::memory(e.wei, eng, nullptr),
                                              dnnl::memory(e.dst, eng, nullptr), dnnl::memory(e.scratch, eng, nullptr)})
                    .first;
        }
        return it->second;
    }
    void* scratch_of(size_t bytes) {
        if (scratch.size() < bytes + 64) scratch.resize(bytes + 64);
        const uintptr_t p = reinterpret_cast<uintptr_t>(scratch.data());
        return scratch.data() + ((64 - p % 64) % 64);
    }
};

ThreadState& thread_state() {
    thread_local ThreadState state;
    return state;
}

std::unique_ptr<Entry> make_entry(Kind kind, int32_t rows, int32_t cols, int32_t batch) {
    const dnnl::memory::dim M = batch, K = cols, N = rows;
    const bool int8 = kind == Kind::u8s8;
    const Desc src({M, K}, int8 ? dt::u8 : dt::f32, tag::ab);
    // W [N, K] row-major read as B [K, N]: element (k, n) at n * K + k.
    const Desc wei = kind == Kind::f32_in_place ? Desc({K, N}, dt::f32, dnnl::memory::dims{1, K})
                                                : Desc({K, N}, int8 ? dt::s8 : dt::f32, tag::any);
    const Desc dst({M, N}, int8 ? dt::s32 : dt::f32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // thread-safe execution
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, cpu_engine());
    auto e = std::make_unique<Entry>();
    e->id = next_entry_id++;
    e->prim = dnnl::matmul(pd);
    e->src = pd.src_desc();
    e->wei = pd.weights_desc();
    e->dst = pd.dst_desc();
    e->scratch = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    return e;
}

// A block-format row -> s8 with one scale for the row (round to nearest); non-finite values make the
// scale NaN so that they still show in the output, as they would on the native path.
void requantize_row(const Weight& w, int32_t r, std::vector<float>& tmp, int8_t* q, float* scale, float* rowsum) {
    const int32_t cols = w.cols;
    ref::load_row(w, r, tmp.data());
    float amax = 0.0f, probe = 0.0f;
    for (int32_t c = 0; c < cols; c++) {
        amax = std::max(amax, std::fabs(tmp[c]));
        probe += tmp[c] * 0.0f;
    }
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    int32_t sum = 0;
    for (int32_t c = 0; c < cols; c++) {
        const long v = std::clamp(std::lrint(tmp[c] * inv), -127L, 127L);
        q[c] = static_cast<int8_t>(v);
        sum += static_cast<int32_t>(v);
    }
    *scale = probe == 0.0f ? amax / 127.0f : NAN;
    *rowsum = static_cast<float>(sum);
}

std::unique_ptr<Packed> pack(const Weight& w, const Desc& layout, dnnl::stream& stream) {
    const dnnl::memory::dim K = w.cols, N = w.rows;
    const size_t n = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols);
    auto p = std::make_unique<Packed>();
    p->layout = layout;
    p->mem = dnnl::memory(layout, cpu_engine());
    std::vector<float> f32;
    std::vector<int8_t> s8;
    dnnl::memory plain;
    if (kind_of(w) == Kind::f32_packed) {
        f32.resize(n);
        for (int32_t r = 0; r < w.rows; r++) ref::load_row(w, r, f32.data() + static_cast<size_t>(r) * w.cols);
        plain = dnnl::memory(Desc({K, N}, dt::f32, dnnl::memory::dims{1, K}), cpu_engine(), f32.data());
    } else {
        std::vector<float> tmp(static_cast<size_t>(w.cols));
        s8.resize(n);
        p->scale.resize(static_cast<size_t>(w.rows));
        p->rowsum.resize(static_cast<size_t>(w.rows));
        for (int32_t r = 0; r < w.rows; r++)
            requantize_row(w, r, tmp, s8.data() + static_cast<size_t>(r) * w.cols, &p->scale[r], &p->rowsum[r]);
        plain = dnnl::memory(Desc({K, N}, dt::s8, dnnl::memory::dims{1, K}), cpu_engine(), s8.data());
    }
    dnnl::reorder(plain, p->mem).execute(stream, plain, p->mem);
    stream.wait();
    return p;
}

// The per-call int8 passes touch batch * (cols + rows) values next to oneDNN's batch * rows * cols
// multiply-adds, so they must not be scalar: the two element-wise loops get one clone per x86-64
// level (the widest the CPU has is picked at load time), and the range search is SSE2 by hand
// (compilers keep float min / max reductions scalar unless NaN and -0 may be ignored).
// Under ThreadSanitizer one plain version: the clones' resolvers run while the dynamic loader
// relocates, before the TSan runtime is up, and crash in the instrumentation they get.
#if defined(__SANITIZE_THREAD__)
#define ITERA_X86_CLONES
#else
#define ITERA_X86_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif

// [min(x, 0), max(x, 0)]; *finite is false when x holds a NaN or an infinity.
void range_of(const float* x, int32_t n, float* lo, float* hi, bool* finite) {
    __m128 vlo = _mm_setzero_ps(), vhi = vlo, probe = vlo;  // probe: sum of x * 0, NaN unless all finite
    int32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const __m128 v = _mm_loadu_ps(x + i);
        vlo = _mm_min_ps(vlo, v);
        vhi = _mm_max_ps(vhi, v);
        probe = _mm_add_ps(probe, _mm_mul_ps(v, _mm_setzero_ps()));
    }
    float l[4], h[4], p[4];
    _mm_storeu_ps(l, vlo);
    _mm_storeu_ps(h, vhi);
    _mm_storeu_ps(p, probe);
    float rlo = std::min(std::min(l[0], l[1]), std::min(l[2], l[3]));
    float rhi = std::max(std::max(h[0], h[1]), std::max(h[2], h[3]));
    float rp = p[0] + p[1] + p[2] + p[3];
    for (; i < n; i++) {
        rlo = std::min(rlo, x[i]);
        rhi = std::max(rhi, x[i]);
        rp += x[i] * 0.0f;
    }
    *lo = rlo;
    *hi = rhi;
    *finite = rp == 0.0f;
}

// q = clamp(floor(x * inv + offset), 0, top): offset = zero point + 0.5 rounds half up.
ITERA_X86_CLONES void quantize_u8(const float* __restrict x, int32_t n, float inv, float offset, float top,
                                  uint8_t* __restrict q) {
    for (int32_t i = 0; i < n; i++) {
        float t = x[i] * inv + offset;
        t = t > 0.0f ? t : 0.0f;
        t = t < top ? t : top;
        q[i] = static_cast<uint8_t>(static_cast<int32_t>(t));
    }
}

// y[r] = sx * sw[r] * (acc[r] - zx * rowsum[r])
ITERA_X86_CLONES void dequantize_s32(const int32_t* __restrict acc, int32_t rows, float sx, float zx,
                                     const float* __restrict sw, const float* __restrict rowsum, float* __restrict y) {
    for (int32_t r = 0; r < rows; r++) y[r] = (static_cast<float>(acc[r]) - zx * rowsum[r]) * (sx * sw[r]);
}

// Each row to u8 on its own affine grid of `levels` steps over [min(x, 0), max(x, 0)] (zero stays
// exact): x ~= sx * (u - zx), at most sx / 2 off. A non-finite input makes sx NaN.
void quantize_rows_u8(const float* x, int32_t batch, int32_t n, int32_t levels, uint8_t* q, float* sx, float* zx) {
    for (int32_t b = 0; b < batch; b++) {
        const float* xb = x + static_cast<size_t>(b) * n;
        float lo, hi;
        bool finite;
        range_of(xb, n, &lo, &hi, &finite);
        const float s = hi > lo ? (hi - lo) / static_cast<float>(levels) : 1.0f;
        const float inv = 1.0f / s;
        const float z = std::nearbyint(-lo * inv);
        quantize_u8(xb, n, inv, z + 0.5f, static_cast<float>(levels), q + static_cast<size_t>(b) * n);
        sx[b] = finite ? s : NAN;
        zx[b] = z;
    }
}

void execute(const Entry& e, ThreadState& ts, ThreadArgs& a) {
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, a.src.get()},
                               {DNNL_ARG_WEIGHTS, a.wei.get()},
                               {DNNL_ARG_DST, a.dst.get()},
                               {DNNL_ARG_SCRATCHPAD, a.scratch.get()}};
    const size_t scratch = e.scratch.get_size();
    if (scratch > 0) a.scratch.set_data_handle(ts.scratch_of(scratch));
    // The C call takes the arguments as an array: no per-call map as in primitive::execute.
    dnnl::error::wrap_c_api(dnnl_primitive_execute(e.prim.get(), ts.stream.get(), scratch > 0 ? 4 : 3, args),
                            "could not execute the matmul");
    ts.stream.wait();
}

std::string shape_text(const Weight& w, int32_t batch) {
    return std::string(dtype_name(w.dtype)) + " " + std::to_string(w.rows) + "x" + std::to_string(w.cols) + " batch " +
           std::to_string(batch);
}

}  // namespace

struct OnednnGemm::Impl {
    struct EntryKey {
        Kind kind;
        int32_t rows, cols, batch;
        auto operator<=>(const EntryKey&) const = default;
    };
    struct WeightKey {
        uintptr_t data;
        DType dtype;
        int32_t rows, cols;
        auto operator<=>(const WeightKey&) const = default;
    };

    std::mutex mutex;  // guards both maps; what they point to never moves or changes once made
    std::map<EntryKey, std::unique_ptr<Entry>> entries;
    std::map<WeightKey, std::vector<std::unique_ptr<Packed>>> packed;

    const Entry& entry(Kind kind, const Weight& w, int32_t batch) {
        std::unique_ptr<Entry>& e = entries[EntryKey{kind, w.rows, w.cols, batch}];
        if (!e) e = make_entry(kind, w.rows, w.cols, batch);
        return *e;
    }
    const Packed& packed_for(const Weight& w, const Desc& layout) {
        auto& copies = packed[WeightKey{reinterpret_cast<uintptr_t>(w.data), w.dtype, w.rows, w.cols}];
        for (const auto& p : copies)
            if (p->layout == layout) return *p;
        copies.push_back(pack(w, layout, thread_state().stream));
        return *copies.back();
    }
};

OnednnGemm::OnednnGemm() : impl_(std::make_unique<Impl>()) {
    if (dnnl_version()->cpu_runtime != DNNL_CPU_RUNTIME)
        throw Error("libdnnl's CPU runtime (" + std::to_string(dnnl_version()->cpu_runtime) +
                    ") is not the one its headers declare (" + std::to_string(DNNL_CPU_RUNTIME) + ")");
}

OnednnGemm::~OnednnGemm() = default;

bool OnednnGemm::handles(const Weight& w) {
    switch (w.dtype) {
        case DType::f32:
        case DType::f16:
            return true;
        case DType::q8_0:
        case DType::q4_0:
        case DType::nf4:
        case DType::q3_0:
        case DType::q2_0:
            return w.cols <= 65536;  // u8 * s8 sums: 255 * 127 * cols must stay below 2^31
        default:
            return false;
    }
}

void OnednnGemm::run(const Weight& w, const float* x, int32_t batch, float* y) {
    if (!handles(w)) throw Error("oneDNN gemm: no path for " + shape_text(w, batch));
    if (batch <= 0 || w.rows <= 0) return;
    const size_t out = static_cast<size_t>(batch) * static_cast<size_t>(w.rows);
    if (w.cols <= 0) {  // an empty sum (oneDNN refuses zero-sized dimensions)
        std::fill(y, y + out, 0.0f);
        return;
    }
    OneThread one;
    try {
        const Kind kind = kind_of(w);
        const Entry* e;
        const Packed* p = nullptr;
        {
            std::lock_guard<std::mutex> lock(impl_->mutex);
            e = &impl_->entry(kind, w, batch);
            if (kind != Kind::f32_in_place) p = &impl_->packed_for(w, e->wei);
        }
        ThreadState& ts = thread_state();
        ThreadArgs& a = ts.args_for(*e);
        // oneDNN takes non-const handles; it only reads src and weights.
        a.wei.set_data_handle(p ? p->mem.get_data_handle() : const_cast<void*>(w.data));
        if (kind != Kind::u8s8) {
            a.src.set_data_handle(const_cast<float*>(x));
            a.dst.set_data_handle(y);
            execute(*e, ts, a);
            return;
        }
        ts.xq.resize(static_cast<size_t>(batch) * static_cast<size_t>(w.cols));
        ts.sx.resize(static_cast<size_t>(batch));
        ts.zx.resize(static_cast<size_t>(batch));
        ts.acc.resize(out);
        quantize_rows_u8(x, batch, w.cols, activation_levels(), ts.xq.data(), ts.sx.data(), ts.zx.data());
        a.src.set_data_handle(ts.xq.data());
        a.dst.set_data_handle(ts.acc.data());
        execute(*e, ts, a);
        const float* sw = p->scale.data();
        const float* rowsum = p->rowsum.data();
        for (int32_t b = 0; b < batch; b++)
            dequantize_s32(ts.acc.data() + static_cast<size_t>(b) * w.rows, w.rows, ts.sx[b], ts.zx[b], sw, rowsum,
                           y + static_cast<size_t>(b) * w.rows);
    } catch (const dnnl::error& e) {
        throw Error("oneDNN matmul " + shape_text(w, batch) + ": " + e.what());
    }
}

std::string OnednnGemm::implementation(const Weight& w, int32_t batch) {
    if (!handles(w) || batch <= 0 || w.rows <= 0 || w.cols <= 0) return "none";
    OneThread one;
    try {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        return impl_->entry(kind_of(w), w, batch).impl;
    } catch (const dnnl::error& e) {
        throw Error("oneDNN matmul " + shape_text(w, batch) + ": " + e.what());
    }
}

// Without VNNI, oneDNN multiplies u8 by s8 with vpmaddubsw, whose 16-bit sums of two products
// saturate (2 * 255 * 127 > 32767): there the activations get 7 bits (measured: 8 bits fail the
// error bound of tests/test_onednn_gemm.cpp under ONEDNN_MAX_CPU_ISA=AVX512_CORE or AVX2).
int32_t OnednnGemm::activation_levels() {
    static const int32_t levels = [] {
        const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
        const bool vnni = isa == dnnl::cpu_isa::avx2_vnni || isa == dnnl::cpu_isa::avx512_core_vnni ||
                          isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx;
        return vnni ? 255 : 127;
    }();
    return levels;
}

size_t OnednnGemm::cached_bytes() const {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    size_t bytes = 0;
    for (const auto& [key, copies] : impl_->packed)
        for (const auto& p : copies)
            bytes += p->layout.get_size() + (p->scale.size() + p->rowsum.size()) * sizeof(float);
    return bytes;
}

std::string onednn_info() {
    const dnnl_version_t* v = dnnl_version();
    const char* runtime = v->cpu_runtime == DNNL_RUNTIME_OMP   ? "OpenMP"
                          : v->cpu_runtime == DNNL_RUNTIME_SEQ ? "sequential"
                                                               : "other";
    return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
           ", CPU runtime " + runtime + ", 1 thread per call, int8 activations on " +
           std::to_string(OnednnGemm::activation_levels()) + " steps";
}

}  // namespace itera
