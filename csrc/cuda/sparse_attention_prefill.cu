// CUDA backend of token_sparse_prefill: window-query row statistics (online
// softmax), key scores, the drop rule (block-wide bisection on the score mass +
// radix select, ties by lower index), then a tiled flash-attention kernel over
// the gathered kept set (fp32 FMA tiles in shared memory; no tensor-core MMA
// yet) and the scatter back (dropped rows 0).
#include "attn_common.cuh"

namespace softdec {
namespace {

using namespace attn_checks;
using namespace attn_cuda;

// ------------------------------------------------------------------ prefill: scoring
// Row statistics (max, sum of exp) of the last w queries of (b, h): one warp per query.
template <typename T>
__global__ void prefill_rowstats_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                        int G, int L, int w, int d, bool causal, float scale, bool vec,
                                        float2* __restrict__ stats /* [B, Hq, w] */) {
  extern __shared__ float sq[];  // [nw][d]
  const int h = blockIdx.y, b = blockIdx.z, Hq = gridDim.y, g = h / G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int r = blockIdx.x * nw + warp;  // window row
  float* qr = sq + warp * d;
  if (r < w) {
    const int i = L - w + r;
    for (int x = lane; x < d; x += 32) qr[x] = scale * to_float(q[b * qs.b + h * qs.h + static_cast<int64_t>(i) * qs.n + x]);
  }
  __syncwarp();
  if (r >= w) return;
  const int i = L - w + r;
  const int jend = causal ? i + 1 : L;
  float m = kNegInf, l = 0.f;
  for (int j = 0; j < jend; ++j) {
    float part[1];
    lane_dots<T, 1>(qr, d, 1, k + b * ks.b + g * ks.h + static_cast<int64_t>(j) * ks.n, d, vec, lane, part);
    const float s = nan_to_neginf(warp_sum(part[0]));
    if (s == kNegInf) continue;
    const float mn = fmaxf(m, s);
    l = l * __expf(m - mn) + __expf(s - mn);
    m = mn;
  }
  if (lane == 0) stats[(static_cast<int64_t>(b) * Hq + h) * w + r] = make_float2(m, l);
}

// score[j] = sum_r exp(s_rj - m_r) / l_r: one warp per key j, looping over the window rows.
template <typename T>
__global__ void prefill_score_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                     const float2* __restrict__ stats, int G, int L, int w, int d, bool causal,
                                     float scale, bool vec, float* __restrict__ score /* [B, Hq, L] */) {
  extern __shared__ float sk[];  // [nw][d]
  const int h = blockIdx.y, b = blockIdx.z, Hq = gridDim.y, g = h / G;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  const int j = blockIdx.x * nw + warp;
  if (j >= L) return;
  float* kr = sk + warp * d;
  for (int x = lane; x < d; x += 32) kr[x] = scale * to_float(k[b * ks.b + g * ks.h + static_cast<int64_t>(j) * ks.n + x]);
  __syncwarp();
  const float2* st = stats + (static_cast<int64_t>(b) * Hq + h) * w;
  float acc = 0.f;
  for (int r = 0; r < w; ++r) {
    const int i = L - w + r;
    if (causal && j > i) continue;
    const float2 ml = st[r];
    if (ml.x == kNegInf || !(ml.y > 0.f)) continue;
    float part[1];
    lane_dots<T, 1>(kr, d, 1, q + b * qs.b + h * qs.h + static_cast<int64_t>(i) * qs.n, d, vec, lane, part);
    const float s = nan_to_neginf(warp_sum(part[0]));
    acc += __expf(s - ml.x) / ml.y;
  }
  if (lane == 0) score[(static_cast<int64_t>(b) * Hq + h) * L + j] = acc;
}

// Drop rule and compaction of one (b, h): kept mask, kept positions ascending, count.
__global__ void prefill_select_kernel(const float* __restrict__ score, int L, int w, int64_t min_tokens,
                                      float coverage, bool* __restrict__ kept, int32_t* __restrict__ list,
                                      int32_t* __restrict__ count) {
  using Reduce = cub::BlockReduce<float, kSelThreads>;
  using Scan = cub::BlockScan<int64_t, kSelThreads>;
  __shared__ union {
    typename Reduce::TempStorage red;
    typename Scan::TempStorage scan;
  } tmp;
  __shared__ uint32_t hist[256];
  __shared__ uint32_t s_word;
  __shared__ int64_t s_count;
  __shared__ float s_f;
  __shared__ uint32_t s_key;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  const float* sc = score + row * L;
  bool* kp = kept + row * L;
  int32_t* ls = list + row * L;
  const int nc = L - w;  // candidates: the non-window tokens
  int64_t D = 0;
  const int64_t dmax = attn::max_drop(L, w, min_tokens);
  if (coverage > 0.f && dmax > 0 && nc > 0) {
    float tot = 0.f;
    for (int j = threadIdx.x; j < L; j += blockDim.x) tot += sc[j];
    tot = Reduce(tmp.red).Sum(tot);
    if (threadIdx.x == 0) s_f = tot;
    __syncthreads();
    const float limit = coverage * s_f;
    // Largest key K with mass(key < K) <= limit (bisection over the key space).
    uint32_t lo = 0, hi = 0xffffffffu;  // invariant: mass(< lo) <= limit
    while (lo < hi) {
      const uint32_t mid = lo + (hi - lo + 1) / 2;
      float m = 0.f;
      for (int j = threadIdx.x; j < nc; j += blockDim.x)
        if (order_key(sc[j]) < mid) m += sc[j];
      __syncthreads();
      m = Reduce(tmp.red).Sum(m);
      if (threadIdx.x == 0) s_f = m;
      __syncthreads();
      if (s_f <= limit) lo = mid; else hi = mid - 1;
      __syncthreads();
    }
    // D_mass = #(key < lo) + ties at lo that still fit.
    float mlt = 0.f;
    int64_t nlt = 0, nties = 0;
    for (int j = threadIdx.x; j < nc; j += blockDim.x) {
      const uint32_t key = order_key(sc[j]);
      if (key < lo) { mlt += sc[j]; ++nlt; }
      nties += key == lo;
    }
    __syncthreads();
    mlt = Reduce(tmp.red).Sum(mlt);
    if (threadIdx.x == 0) s_f = mlt;
    __syncthreads();
    mlt = s_f;
    int64_t agg[2] = {nlt, nties};
    for (int a = 0; a < 2; ++a) {
      int64_t tot_a;
      __syncthreads();
      Scan(tmp.scan).ExclusiveSum(agg[a], tot_a);
      if (threadIdx.x == kSelThreads - 1) s_count = tot_a + agg[a];
      __syncthreads();
      agg[a] = s_count;
    }
    nlt = agg[0];
    nties = agg[1];
    const uint32_t u = (lo & 0x80000000u) ? (lo & 0x7fffffffu) : ~lo;  // float bits of key lo
    const float tv = __uint_as_float(u);
    int64_t fit = nties;
    if (tv > 0.f) fit = imin(nties, static_cast<int64_t>(floorf((limit - mlt) / tv)));
    D = imin(nlt + imax(fit, 0), dmax);
  }
  // Drop the D smallest candidates by (score, index): radix select + tie ranks.
  uint32_t kth = 0;
  int64_t less = 0;
  if (D > 0) {
    kth = block_radix_select<kSelThreads>(
        nc, D, false, [&](int64_t j) { return order_key(sc[j]); }, &less, hist, &s_word, &s_count);
    if (threadIdx.x == 0) s_key = kth;
    __syncthreads();
    kth = s_key;
  }
  const int64_t seg = (L + kSelThreads - 1) / kSelThreads;
  const int64_t i0 = imin(L, threadIdx.x * seg), i1 = imin(L, i0 + seg);
  int64_t ties = 0;
  if (D > 0)
    for (int64_t j = i0; j < imin(i1, nc); ++j) ties += order_key(sc[j]) == kth;
  int64_t rank;
  __syncthreads();
  Scan(tmp.scan).ExclusiveSum(ties, rank);
  int64_t keep_n = 0;
  {
    int64_t rk = rank;
    for (int64_t j = i0; j < i1; ++j) {
      bool keep = true;
      if (D > 0 && j < nc) {
        const uint32_t key = order_key(sc[j]);
        if (key < kth) keep = false;
        else if (key == kth) keep = !(rk++ < D - less);
      }
      kp[j] = keep;
      keep_n += keep;
    }
  }
  int64_t off;
  __syncthreads();
  Scan(tmp.scan).ExclusiveSum(keep_n, off);
  for (int64_t j = i0; j < i1; ++j)
    if (kp[j]) ls[off++] = static_cast<int32_t>(j);
  if (threadIdx.x == kSelThreads - 1) count[row] = static_cast<int32_t>(off);
}

// ------------------------------------------------------------------ prefill: gathered flash attention
constexpr int kBr = 32, kBc = 32, kFlashThreads = 128;  // 4 threads per query row
constexpr int kMaxD = 256;

template <typename T>
__global__ void prefill_flash_kernel(const T* __restrict__ q, Strides4 qs, const T* __restrict__ k, Strides4 ks,
                                     const T* __restrict__ v, Strides4 vs, const int32_t* __restrict__ list,
                                     const int32_t* __restrict__ count, int G, int L, int d, bool causal,
                                     float scale, T* __restrict__ out /* [B, Hq, L, d] */) {
  extern __shared__ float sm[];
  float* sQ = sm;                 // [kBr][d + 1]
  float* sK = sQ + kBr * (d + 1); // [kBc][d + 1]
  float* sV = sK + kBc * (d + 1); // [kBc][d]
  float* sP = sV + kBc * d;       // [kBr][kBc + 1]
  const int h = blockIdx.y, b = blockIdx.z, Hq = gridDim.y, g = h / G;
  const int64_t row = static_cast<int64_t>(b) * Hq + h;
  const int n = count[row];
  const int a0 = blockIdx.x * kBr;
  if (a0 >= n) return;
  const int32_t* ls = list + row * L;
  const int tid = threadIdx.x, r = tid / 4, sub = tid % 4;
  for (int x = tid; x < kBr * d; x += blockDim.x) {
    const int rr = x / d, i = x % d;
    sQ[rr * (d + 1) + i] = a0 + rr < n ? scale * to_float(q[b * qs.b + h * qs.h + static_cast<int64_t>(ls[a0 + rr]) * qs.n + i]) : 0.f;
  }
  constexpr int kPer = kMaxD / 4;
  float acc[kPer];
#pragma unroll
  for (int x = 0; x < kPer; ++x) acc[x] = 0.f;
  float m = kNegInf, l = 0.f;
  const int kend = causal ? min(n, a0 + kBr) : n;
  for (int c0 = 0; c0 < kend; c0 += kBc) {
    __syncthreads();
    for (int x = tid; x < kBc * d; x += blockDim.x) {
      const int cc = x / d, i = x % d;
      const bool ok = c0 + cc < n;
      const int64_t t = ok ? ls[c0 + cc] : 0;
      sK[cc * (d + 1) + i] = ok ? to_float(k[b * ks.b + g * ks.h + t * ks.n + i]) : 0.f;
      sV[cc * d + i] = ok ? to_float(v[b * vs.b + g * vs.h + t * vs.n + i]) : 0.f;
    }
    __syncthreads();
    // scores: thread (r, sub) computes columns sub, sub+4, ...
    float s[kBc / 4];
    float mt = kNegInf;
#pragma unroll
    for (int cj = 0; cj < kBc / 4; ++cj) {
      const int c = sub + 4 * cj;
      float x = 0.f;
      for (int i = 0; i < d; ++i) x += sQ[r * (d + 1) + i] * sK[c * (d + 1) + i];
      const bool valid = (c0 + c < n) && (!causal || c0 + c <= a0 + r) && (a0 + r < n);
      s[cj] = valid ? x : kNegInf;
      mt = fmaxf(mt, s[cj]);
    }
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
    mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 2));
    const float mn = fmaxf(m, mt);
    const float alpha = (m == kNegInf) ? 0.f : __expf(m - mn);
    float ps = 0.f;
#pragma unroll
    for (int cj = 0; cj < kBc / 4; ++cj) {
      const float p = (s[cj] == kNegInf) ? 0.f : __expf(s[cj] - mn);
      sP[r * (kBc + 1) + sub + 4 * cj] = p;
      ps += p;
    }
    ps += __shfl_xor_sync(0xffffffffu, ps, 1);
    ps += __shfl_xor_sync(0xffffffffu, ps, 2);
    if (mn != kNegInf) {
      l = l * alpha + ps;
      m = mn;
    }
    __syncwarp();
    // acc over this thread's dims i = sub + 4x
#pragma unroll
    for (int x = 0; x < kPer; ++x) {
      const int i = sub + 4 * x;
      if (i < d) {
        float o = acc[x] * alpha;
        for (int c = 0; c < kBc; ++c) o += sP[r * (kBc + 1) + c] * sV[c * d + i];
        acc[x] = o;
      }
    }
  }
  if (a0 + r < n) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* o = out + (row * L + ls[a0 + r]) * d;
#pragma unroll
    for (int x = 0; x < kPer; ++x) {
      const int i = sub + 4 * x;
      if (i < d) o[i] = from_float<T>(acc[x] * inv);
    }
  }
}

template <typename T>
__global__ void zero_dropped_kernel(const bool* __restrict__ kept, int64_t rows_L, int d, T* __restrict__ out) {
  for (int64_t x = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; x < rows_L * d;
       x += static_cast<int64_t>(gridDim.x) * blockDim.x)
    if (!kept[x / d]) out[x] = from_float<T>(0.f);
}

template <typename NT>
void prefill_launch(const Tensor& q, const Tensor& k, const Tensor& v, float coverage, int64_t min_tokens,
                    int64_t window, bool causal, float scale, Tensor& out, Tensor& kept) {
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3), Hkv = k.size(1);
  const int G = static_cast<int>(Hq / Hkv);
  const int w = static_cast<int>(imin(window, L));
  cudaStream_t st = current_stream(q);
  const NT* qp = reinterpret_cast<const NT*>(q.data_ptr());
  const NT* kp = reinterpret_cast<const NT*>(k.data_ptr());
  const NT* vp = reinterpret_cast<const NT*>(v.data_ptr());
  const bool veck = vec_ok(k, d, sizeof(NT)), vecq = vec_ok(q, d, sizeof(NT));
  Tensor score = new_empty(q, {B, Hq, L}, ScalarType::Float);
  const bool drop = coverage > 0.f && attn::max_drop(L, w, min_tokens) > 0;
  if (drop) {
    Tensor stats = new_empty(q, {B, Hq, w, 2}, ScalarType::Float);
    const int nw = 8;
    prefill_rowstats_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(w, nw)), Hq, B), nw * 32,
                                   nw * d * sizeof(float), st>>>(
        qp, strides4(q), kp, strides4(k), G, static_cast<int>(L), w, static_cast<int>(d), causal, scale, veck,
        reinterpret_cast<float2*>(stats.mutable_data_ptr<float>()));
    SOFTDEC_CUDA_LAUNCH_CHECK();
    prefill_score_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(L, nw)), Hq, B), nw * 32,
                                nw * d * sizeof(float), st>>>(
        qp, strides4(q), kp, strides4(k), reinterpret_cast<const float2*>(stats.const_data_ptr<float>()), G,
        static_cast<int>(L), w, static_cast<int>(d), causal, scale, vecq, score.mutable_data_ptr<float>());
    SOFTDEC_CUDA_LAUNCH_CHECK();
  }
  Tensor list = new_empty(q, {B, Hq, L}, ScalarType::Int);
  Tensor count = new_empty(q, {B, Hq}, ScalarType::Int);
  prefill_select_kernel<<<dim3(Hq, B), kSelThreads, 0, st>>>(
      score.const_data_ptr<float>(), static_cast<int>(L), w, min_tokens, drop ? coverage : 0.f,
      kept.mutable_data_ptr<bool>(), list.mutable_data_ptr<int32_t>(), count.mutable_data_ptr<int32_t>());
  SOFTDEC_CUDA_LAUNCH_CHECK();
  const size_t smem = (kBr * (d + 1) + kBc * (d + 1) + kBc * d + kBr * (kBc + 1)) * sizeof(float);
  SOFTDEC_CUDA_CHECK(cudaFuncSetAttribute(prefill_flash_kernel<NT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  prefill_flash_kernel<NT><<<dim3(static_cast<unsigned>(attn::ceil_div(L, kBr)), Hq, B), kFlashThreads, smem, st>>>(
      qp, strides4(q), kp, strides4(k), vp, strides4(v), list.const_data_ptr<int32_t>(),
      count.const_data_ptr<int32_t>(), G, static_cast<int>(L), static_cast<int>(d), causal, scale,
      reinterpret_cast<NT*>(out.data_ptr()));
  SOFTDEC_CUDA_LAUNCH_CHECK();
  const int64_t rows_L = B * Hq * L;
  const unsigned zg = static_cast<unsigned>(imin(attn::ceil_div(rows_L * d, 256), 65535));
  zero_dropped_kernel<NT><<<zg, 256, 0, st>>>(kept.const_data_ptr<bool>(), rows_L, static_cast<int>(d),
                                              reinterpret_cast<NT*>(out.data_ptr()));
  SOFTDEC_CUDA_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> token_sparse_prefill_cuda(Tensor q, Tensor k, Tensor v, double coverage,
                                                     int64_t min_tokens, int64_t window, bool causal,
                                                     double scale) {
  check_prefill_args(q, k, v, coverage, min_tokens, window, scale);
  const int64_t B = q.size(0), Hq = q.size(1), L = q.size(2), d = q.size(3);
  SOFTDEC_CHECK(d <= kMaxD, "head_dim must be at most ", kMaxD, " on CUDA, got ", d);
  SOFTDEC_CHECK(L < (int64_t(1) << 31), "L must be below 2^31 on CUDA, got ", L);
  torch::stable::accelerator::DeviceGuard guard(q.get_device_index());
  Tensor out = new_empty(q, {B, Hq, L, d}, q.scalar_type());
  Tensor kept = new_empty(q, {B, Hq, L}, ScalarType::Bool);
  if (B * Hq * L == 0 || d == 0) return {out, kept};
  SOFTDEC_DISPATCH_FLOAT(q.scalar_type(), "q", scalar_t, [&] {
    prefill_launch<typename CudaNative<scalar_t>::type>(q, k, v, static_cast<float>(coverage), min_tokens, window,
                                                    causal, static_cast<float>(scale), out, kept);
  });
  return {out, kept};
}

}  // namespace
}  // namespace softdec

STABLE_TORCH_LIBRARY_IMPL(softdec, CUDA, m) {
  m.impl("token_sparse_prefill", TORCH_BOX(&softdec::token_sparse_prefill_cuda));
}
