// Row softmax over f32 scores, one thread block per row.
//
// candle's softmax kernel gives each row a single warp with one load in flight per thread, which
// leaves a long attention row (~10k keys) latency-bound far below memory bandwidth. Here a block
// of threads shares the row: pass 1 keeps a running (max, sum of exp) per thread (the "online"
// softmax, one read), the block combines the pairs, pass 2 writes exp(x - max) / sum (the second
// read mostly hits L2: a row is 40 KB). 12 bytes of traffic per element instead of 20, and enough
// loads in flight to reach bandwidth.
#include <math.h>

__device__ __forceinline__ void combine(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    s = (mn == -INFINITY) ? 0.f : s * expf(m - mn) + s2 * expf(m2 - mn);
    m = mn;
}

__device__ __forceinline__ void warp_combine(float &m, float &s) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        combine(m, s, m2, s2);
    }
}

extern "C" __global__ void engine_softmax_rows_f32(const float *__restrict__ x, float *__restrict__ y, const int ncols) {
    const float *xr = x + (size_t)blockIdx.x * ncols;
    float *yr = y + (size_t)blockIdx.x * ncols;

    float m = -INFINITY, s = 0.f;
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) {
        const float v = xr[c];
        if (v == -INFINITY) continue;
        if (v > m) {
            s = s * expf(m - v) + 1.f;
            m = v;
        } else {
            s += expf(v - m);
        }
    }
    warp_combine(m, s);

    __shared__ float warp_m[32], warp_s[32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        warp_m[warp] = m;
        warp_s[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = (blockDim.x + 31) / 32;
        m = lane < warps ? warp_m[lane] : -INFINITY;
        s = lane < warps ? warp_s[lane] : 0.f;
        warp_combine(m, s);
        if (lane == 0) {
            warp_m[0] = m;
            warp_s[0] = s;
        }
    }
    __syncthreads();
    const float row_max = warp_m[0];
    const float inv_sum = 1.f / warp_s[0];
    for (int c = threadIdx.x; c < ncols; c += blockDim.x) {
        yr[c] = expf(xr[c] - row_max) * inv_sum;
    }
}
