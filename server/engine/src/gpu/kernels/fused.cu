// Fused element-wise passes of a DiT block, bf16 in and out, f32 arithmetic.
//
// Why: the plain path runs each step of `LN(x)·(1+scale)+shift`, `x + gate·(y+bias)`,
// `gelu(y+bias)` and the q/k RMSNorm + RoPE as separate candle ops (broadcasts through a
// strided-index kernel, f32 round trips): 5–10 passes over a 60 MB activation at 45–220 GB/s,
// ~1.9 s of a 6 s step. Each kernel here reads its inputs once and writes its output once with
// 16-byte accesses. The GEMMs before them run without bias; the bias is added here.
//
// All rounding to bf16 happens once, at the store (the reference rounds after every op; the
// difference is within bf16's own rounding, checked against the plain path).
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

struct alignas(16) Bf16x8 {
    __nv_bfloat162 v[4];
};

__device__ __forceinline__ void unpack8(const Bf16x8 &p, float (&f)[8]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = __bfloat1622float2(p.v[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

__device__ __forceinline__ Bf16x8 pack8(const float (&f)[8]) {
    Bf16x8 p;
#pragma unroll
    for (int i = 0; i < 4; ++i) p.v[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    return p;
}

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float (&f)[8]) {
    unpack8(*reinterpret_cast<const Bf16x8 *>(p), f);
}

__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float (&f)[8]) {
    *reinterpret_cast<Bf16x8 *>(p) = pack8(f);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// Sum over a block of LN_THREADS threads; `scratch` holds one float per warp.
template <int THREADS>
__device__ __forceinline__ float block_sum(float x, float *scratch) {
    x = warp_sum(x);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // scratch may still be read from a previous call
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < THREADS / 32; ++w) total += scratch[w];
    return total;
}

__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * x * (1.f + tanhf(k * (x + 0.044715f * x * x * x)));
}

constexpr int LN_THREADS = 256;
constexpr int LN_VECS = 2;  // 8-element vectors per thread: rows up to 256·8·2 = 4096 wide

}  // namespace

// out = LayerNorm(x)·(1 + scale[b]) + shift[b] for x [rows, dim], scale/shift [batch, dim] rows
// `param_stride` apart (views into the block's [batch, 6·dim] modulation), b = row / rows_per_batch.
// Two-pass statistics in f32 from registers (one read of x).
// Grid: rows; block: LN_THREADS. dim % 8 == 0, dim ≤ 4096.
extern "C" __global__ void __launch_bounds__(LN_THREADS)
    engine_ln_modulate_bf16(const __nv_bfloat16 *__restrict__ x, const __nv_bfloat16 *__restrict__ shift,
                            const __nv_bfloat16 *__restrict__ scale, long long param_stride,
                            __nv_bfloat16 *__restrict__ out, int rows_per_batch, int dim, float eps) {
    __shared__ float scratch[LN_THREADS / 32];
    const long long row = blockIdx.x;
    const int b = (int)(row / rows_per_batch);
    const __nv_bfloat16 *xr = x + row * dim;
    const int vecs = dim / 8;
    float f[LN_VECS][8];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        const int vec = threadIdx.x + i * LN_THREADS;
        if (vec < vecs) {
            load8(xr + vec * 8, f[i]);
#pragma unroll
            for (int e = 0; e < 8; ++e) sum += f[i][e];
        }
    }
    const float mean = block_sum<LN_THREADS>(sum, scratch) / dim;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        const int vec = threadIdx.x + i * LN_THREADS;
        if (vec < vecs) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float d = f[i][e] - mean;
                sq += d * d;
            }
        }
    }
    const float rstd = rsqrtf(block_sum<LN_THREADS>(sq, scratch) / dim + eps);
#pragma unroll
    for (int i = 0; i < LN_VECS; ++i) {
        const int vec = threadIdx.x + i * LN_THREADS;
        if (vec < vecs) {
            float sc[8], sh[8], y[8];
            load8(scale + b * param_stride + vec * 8, sc);
            load8(shift + b * param_stride + vec * 8, sh);
#pragma unroll
            for (int e = 0; e < 8; ++e) y[e] = (f[i][e] - mean) * rstd * (1.f + sc[e]) + sh[e];
            store8(out + row * dim + vec * 8, y);
        }
    }
}

// out = x + gate[b]·(y + bias) for x, y [rows, dim], bias [dim], gate [batch, dim] rows
// `gate_stride` apart.
// Grid-stride over 8-element vectors. dim % 8 == 0.
extern "C" __global__ void engine_gated_residual_bf16(const __nv_bfloat16 *__restrict__ x,
                                                      const __nv_bfloat16 *__restrict__ y,
                                                      const __nv_bfloat16 *__restrict__ bias,
                                                      const __nv_bfloat16 *__restrict__ gate, long long gate_stride,
                                                      __nv_bfloat16 *__restrict__ out, long long rows_per_batch,
                                                      int dim, long long vecs) {
    const int dim_vecs = dim / 8;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < vecs; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / dim_vecs;
        const int col = (int)(i % dim_vecs) * 8;
        const int b = (int)(row / rows_per_batch);
        float xv[8], yv[8], bv[8], gv[8], r[8];
        load8(x + i * 8, xv);
        load8(y + i * 8, yv);
        load8(bias + col, bv);
        load8(gate + b * gate_stride + col, gv);
#pragma unroll
        for (int e = 0; e < 8; ++e) r[e] = xv[e] + gv[e] * (yv[e] + bv[e]);
        store8(out + i * 8, r);
    }
}

// out = gelu_tanh(y + bias) for y [rows, dim], bias [dim]. dim % 8 == 0.
extern "C" __global__ void engine_bias_gelu_bf16(const __nv_bfloat16 *__restrict__ y, const __nv_bfloat16 *__restrict__ bias,
                                                 __nv_bfloat16 *__restrict__ out, int dim, long long vecs) {
    const int dim_vecs = dim / 8;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < vecs; i += (long long)gridDim.x * blockDim.x) {
        const int col = (int)(i % dim_vecs) * 8;
        float yv[8], bv[8];
        load8(y + i * 8, yv);
        load8(bias + col, bv);
#pragma unroll
        for (int e = 0; e < 8; ++e) yv[e] = gelu_tanh(yv[e] + bv[e]);
        store8(out + i * 8, yv);
    }
}

// One of q, k or v of the joint attention, from the two streams' projections (no bias yet):
//   out[b, s, h, :] = rope(rmsnorm(x[b, s', h, :] + bias[h, :]) · w)
// with the joint token order [image, text]: s < s_img reads the image projection row s (RoPE
// table row s_txt + s, as the tables are ordered [text, image]); s ≥ s_img reads the text row
// s − s_img (table row s − s_img). `flags` bit 0: RMSNorm (w_img / w_txt, f32 [128]); bit 1: RoPE
// (interleaved pairs, cos/sin f32 [s_txt + s_img, 64]). Head dim 128.
// One warp per (token, pair of heads): each half-warp owns a head, 8 dims per lane, 16-byte
// accesses. Block 256 (8 warps); any grid (grid-stride).
extern "C" __global__ void __launch_bounds__(256)
    engine_joint_qkv_bf16(const __nv_bfloat16 *__restrict__ x_img, const __nv_bfloat16 *__restrict__ x_txt,
                          const __nv_bfloat16 *__restrict__ bias_img, const __nv_bfloat16 *__restrict__ bias_txt,
                          const float *__restrict__ w_img, const float *__restrict__ w_txt,
                          const float *__restrict__ cos_t, const float *__restrict__ sin_t,
                          __nv_bfloat16 *__restrict__ out, int batch, int s_img, int s_txt, int heads, float eps,
                          int flags) {
    const int seq = s_img + s_txt;
    const int pairs = (heads + 1) / 2;
    const int items = batch * seq * pairs;
    const int lane = threadIdx.x & 31, sub = lane & 15;
    // Grid-stride over (token, head pair) items, one warp each: a few waves of long-lived blocks
    // instead of tens of thousands of short ones.
    for (int item = blockIdx.x * 8 + (threadIdx.x >> 5); item < items; item += gridDim.x * 8) {
        const int token = item / pairs;
        const int h = (item - token * pairs) * 2 + (lane >> 4);
        const bool active = h < heads;  // an odd head count leaves the last pair's second half idle
        const int s = token % seq, b = token / seq;
        const bool image = s < s_img;
        const int src_row = image ? b * s_img + s : b * s_txt + (s - s_img);
        const int rope_row = image ? s_txt + s : s - s_img;
        const int width = heads * 128;
        const int col = h * 128 + sub * 8;

        float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        if (active) {
            float bv[8];
            load8((image ? x_img : x_txt) + (long long)src_row * width + col, v);
            load8((image ? bias_img : bias_txt) + col, bv);
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] += bv[i];
        }
        if (flags & 1) {
            float ss = 0.f;
#pragma unroll
            for (int i = 0; i < 8; ++i) ss += v[i] * v[i];
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);  // within the half-warp
            const float r = rsqrtf(ss / 128.f + eps);
            const float *w = (image ? w_img : w_txt) + sub * 8;
            const float4 w0 = *reinterpret_cast<const float4 *>(w), w1 = *reinterpret_cast<const float4 *>(w + 4);
            const float wv[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) v[i] = v[i] * r * wv[i];
        }
        if (flags & 2) {
            const float4 c = *reinterpret_cast<const float4 *>(cos_t + (long long)rope_row * 64 + sub * 4);
            const float4 sn = *reinterpret_cast<const float4 *>(sin_t + (long long)rope_row * 64 + sub * 4);
            const float cv[4] = {c.x, c.y, c.z, c.w}, sv[4] = {sn.x, sn.y, sn.z, sn.w};
#pragma unroll
            for (int p = 0; p < 4; ++p) {
                const float re = v[2 * p], im = v[2 * p + 1];
                v[2 * p] = re * cv[p] - im * sv[p];
                v[2 * p + 1] = re * sv[p] + im * cv[p];
            }
        }
        if (active) store8(out + (long long)token * width + col, v);
    }
}
