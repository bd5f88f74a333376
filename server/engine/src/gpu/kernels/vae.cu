// Fused element-wise passes of the VAE, bf16 in and out, f32 arithmetic, on channel-first
// activations [B, C, H·W].
//
// Why: the plain path runs the VAE's L2 "RMS" norm as eight candle ops (an f32 copy, square, a
// reduction over the strided channel axis, sqrt, clamp, two broadcasts through candle's
// strided-index kernel, a cast) plus SiLU, and adds each convolution's bias and the residual in
// two more broadcast passes: at 640² that is most of a 140 ms layer decode. Each kernel here
// reads its inputs once (the norm twice: statistics, then output) with 16-byte accesses.
//
// Layout: a thread owns 8 consecutive pixels of one image and walks the channels, so a warp's
// loads of one channel are 512 contiguous bytes. H·W % 8 == 0 (checked by the caller).
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

struct alignas(16) Bf16x8 {
    __nv_bfloat162 v[4];
};

__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float (&f)[8]) {
    const Bf16x8 q = *reinterpret_cast<const Bf16x8 *>(p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 x = __bfloat1622float2(q.v[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float (&f)[8]) {
    Bf16x8 q;
#pragma unroll
    for (int i = 0; i < 4; ++i) q.v[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<Bf16x8 *>(p) = q;
}

__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }

}  // namespace

// out[b, c, p] = act((x[b, c, p] + bias[c]) / max(‖x[b, :, p] + bias‖₂, 1e-12) · scale · gamma[c])
// for x [batch, channels, hw]: `F.normalize` over channels (QwenImageRMS_norm) with the previous
// convolution's bias folded in when `has_bias` (else `bias` is not read) and SiLU when `silu_out`.
// Grid-stride over batch · hw / 8 pixel groups.
extern "C" __global__ void engine_vae_norm_bf16(const __nv_bfloat16 *__restrict__ x,
                                               const __nv_bfloat16 *__restrict__ bias,
                                               const __nv_bfloat16 *__restrict__ gamma,
                                               __nv_bfloat16 *__restrict__ out, int channels, long long hw,
                                               long long groups, float scale, int has_bias, int silu_out) {
    const long long groups_per_image = hw / 8;
    for (long long g = blockIdx.x * (long long)blockDim.x + threadIdx.x; g < groups;
         g += (long long)gridDim.x * blockDim.x) {
        const long long b = g / groups_per_image;
        const long long base = b * channels * hw + (g % groups_per_image) * 8;
        float ss[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        for (int c = 0; c < channels; ++c) {
            float v[8];
            load8(x + base + c * hw, v);
            const float bc = has_bias ? __bfloat162float(bias[c]) : 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float t = v[e] + bc;
                ss[e] += t * t;
            }
        }
        float inv[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) inv[e] = scale / fmaxf(sqrtf(ss[e]), 1e-12f);
        for (int c = 0; c < channels; ++c) {
            float v[8];
            load8(x + base + c * hw, v);
            const float bc = has_bias ? __bfloat162float(bias[c]) : 0.f;
            const float gc = __bfloat162float(gamma[c]);
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const float y = (v[e] + bc) * inv[e] * gc;
                v[e] = silu_out ? silu(y) : y;
            }
            store8(out + base + c * hw, v);
        }
    }
}

// out[b, c, p] = y[b, c, p] + bias[c] (+ residual[b, c, p] when `has_residual`) for
// y [batch, channels, hw]: a convolution's bias and a residual connection in one pass.
// Grid-stride over the batch · channels · hw / 8 vectors.
extern "C" __global__ void engine_vae_bias_residual_bf16(const __nv_bfloat16 *__restrict__ y,
                                                         const __nv_bfloat16 *__restrict__ bias,
                                                         const __nv_bfloat16 *__restrict__ residual,
                                                         __nv_bfloat16 *__restrict__ out, int channels,
                                                         long long hw, long long vecs, int has_residual) {
    const long long vecs_per_channel = hw / 8;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < vecs;
         i += (long long)gridDim.x * blockDim.x) {
        const float bc = __bfloat162float(bias[(i / vecs_per_channel) % channels]);
        float v[8];
        load8(y + i * 8, v);
        if (has_residual) {
            float r[8];
            load8(residual + i * 8, r);
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] += bc + r[e];
        } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] += bc;
        }
        store8(out + i * 8, v);
    }
}

// The columns of a band of output rows for a convolution as a GEMM in channel-first order:
//   cols[b, k, q] = x[b, ci, (r0 + r)·stride + ky − pad, c·stride + kx − pad] (0 outside x)
// for k = (ci·kh + ky)·kw + kx (the weight's own [out, in, kh, kw] flattening) and
// q = r·w_out + c, 0 ≤ r < rows. Then `weight[out, k] · cols[b]` is the band of the output
// [b, out, rows, w_out] already in channel-first layout (no transpose pass, unlike candle's
// im2col, whose [pixels, k] columns give a [pixels, out] product).
// One element per thread, grid-stride; consecutive threads write consecutive q (coalesced).
extern "C" __global__ void engine_vae_im2col_bf16(const __nv_bfloat16 *__restrict__ x,
                                                 __nv_bfloat16 *__restrict__ cols, int channels, int h, int w,
                                                 int kh, int kw, int stride, int pad, int w_out, int r0, int rows,
                                                 long long total) {
    const int q_len = rows * w_out;
    const int k_len = channels * kh * kw;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int q = (int)(i % q_len);
        const long long bk = i / q_len;
        const int k = (int)(bk % k_len);
        const long long b = bk / k_len;
        const int r = q / w_out, c = q % w_out;
        const int kx = k % kw, ky = (k / kw) % kh, ci = k / (kw * kh);
        const int y = (r0 + r) * stride + ky - pad;
        const int xx = c * stride + kx - pad;
        __nv_bfloat16 v = __float2bfloat16(0.f);
        if (y >= 0 && y < h && xx >= 0 && xx < w) v = x[((b * channels + ci) * h + y) * (long long)w + xx];
        cols[i] = v;
    }
}
