// Fused ("flash") attention forward for the DiT's joint attention: head dim 128, bf16 in and out,
// f32 scores and accumulators, non-causal, per-batch key length (padded text keys at the end of
// the key sequence are left out).
//
// Why: the plain path writes the f32 score matrix (2 × 24 × 9,630² elements per block at 640²)
// to memory, reads it back for the softmax and again for the weighted sum: ~16 bytes of traffic
// per score, 4 s of a 6 s step. Here the scores of a 16-query × 64-key tile live in registers,
// the softmax is the online one (running max and sum, rescaling the accumulator), and only q, k,
// v and the output touch memory.
//
// Layout: q, k, v are joint buffers [B, S, H, 128] (row = token, head-major within the row),
// produced by the fused q/k/v preparation kernel. The output is split by token: rows [0, split)
// go to out0 [B, split, H·128], rows [split, S) to out1 [B, S − split, H·128] — the image and
// text streams' inputs to their output projections, with no transpose or copy in between.
//
// Scheme (FlashAttention-2 on mma.sync, sm_80+): a block of WARPS warps owns 16·WARPS queries,
// each warp 16 rows held as bf16 A fragments in registers. Key and value tiles of 64 rows stream
// through shared memory with cp.async: V_j loads while S = Q·K_jᵀ is computed, K_{j+1} while
// O += P·V_j is. Shared-memory rows are XOR-swizzled in 16-byte chunks so that ldmatrix reads
// are conflict-free.
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

constexpr int HD = 128;               // head dimension
constexpr int BC = 64;                // keys per tile
constexpr int ROW_CHUNKS = HD / 8;    // 16-byte chunks per row

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Element offset of (row, 16-byte chunk) in a swizzled [64][128] bf16 tile.
__device__ __forceinline__ int swizzled(int row, int chunk) {
    return row * HD + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool valid) {
    const int bytes = valid ? 16 : 0;  // 0: the destination is zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

// c += a · b for one 16×8×16 bf16 tile, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats as bf16x2, the first in the low half (the lower column of a fragment).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ uint32_t load_u32(const __nv_bfloat16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

// Rows [row0, row0 + 64) of one head into a swizzled tile; rows at or past `rows` are zeros.
template <int THREADS>
__device__ __forceinline__ void load_tile(__nv_bfloat16 *tile, const __nv_bfloat16 *head, int row0, int rows,
                                          long long row_stride, int tid) {
#pragma unroll
    for (int i = tid; i < BC * ROW_CHUNKS; i += THREADS) {
        const int row = i / ROW_CHUNKS, chunk = i % ROW_CHUNKS;
        const bool valid = row0 + row < rows;
        const __nv_bfloat16 *src = valid ? head + (long long)(row0 + row) * row_stride + chunk * 8 : head;
        cp_async16(tile + swizzled(row, chunk), src, valid);
    }
}

// WARPS warps per block; each warp owns MT tiles of 16 query rows (MT = 2 halves the
// shared-memory reads per tensor-core op: one K/V fragment feeds both row tiles); keys are
// consumed KN at a time (64, or 32 to leave registers for MT = 2).
template <int WARPS, int MT, int KN>
__device__ __forceinline__ void flash_attention(const __nv_bfloat16 *__restrict__ q, const __nv_bfloat16 *__restrict__ k,
                                                const __nv_bfloat16 *__restrict__ v, __nv_bfloat16 *__restrict__ out0,
                                                __nv_bfloat16 *__restrict__ out1, const unsigned int *__restrict__ kv_len,
                                                int seq, int heads, int split, float scale_log2) {
    constexpr int THREADS = WARPS * 32;
    constexpr int ROWS = WARPS * 16 * MT;
    constexpr int NT = KN / 8;  // 8-key accumulator tiles per sub-tile
    __shared__ __align__(128) __nv_bfloat16 k_tile[BC * HD];
    __shared__ __align__(128) __nv_bfloat16 v_tile[BC * HD];

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;  // fragment row group and column pair
    const int b = blockIdx.z, h = blockIdx.y;
    const long long row_stride = (long long)heads * HD;
    const long long head_base = (long long)b * seq * row_stride + (long long)h * HD;
    const __nv_bfloat16 *qh = q + head_base, *kh = k + head_base, *vh = v + head_base;
    const int keys = min((int)kv_len[b], seq);

    // This warp's query rows as A fragments (8 k-steps of 16 dims per row tile).
    const int first_row = blockIdx.x * ROWS + warp * 16 * MT + g;
    uint32_t qa[MT][8][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int r0 = first_row + mt * 16, r1 = r0 + 8;
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
            const int c = kk * 16 + 2 * t;
            qa[mt][kk][0] = r0 < seq ? load_u32(qh + r0 * row_stride + c) : 0u;
            qa[mt][kk][1] = r1 < seq ? load_u32(qh + r1 * row_stride + c) : 0u;
            qa[mt][kk][2] = r0 < seq ? load_u32(qh + r0 * row_stride + c + 8) : 0u;
            qa[mt][kk][3] = r1 < seq ? load_u32(qh + r1 * row_stride + c + 8) : 0u;
        }
    }

    float o[MT][16][4];
    float row_max[MT][2], row_sum[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int i = 0; i < 16; ++i) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -INFINITY;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    // ldmatrix lane roles: which of the four 8×8 matrices this lane addresses, and its row in it.
    const int mat = lane >> 3, mrow = lane & 7;

    const int tiles = (keys + BC - 1) / BC;
    if (tiles > 0) load_tile<THREADS>(k_tile, kh, 0, keys, row_stride, tid);
    cp_async_commit();
    for (int j = 0; j < tiles; ++j) {
        load_tile<THREADS>(v_tile, vh, j * BC, keys, row_stride, tid);
        cp_async_commit();
        cp_async_wait<1>();  // K_j has landed (V_j may still be in flight)
        __syncthreads();

        // Per KN-key sub-tile: S = Q·K_jᵀ, the online softmax, the probabilities as bf16 A
        // fragments; P·V right away when KN < 64, else after K_{j+1} is on its way.
        uint32_t pa[MT][KN / 16][4];
#pragma unroll
        for (int sub = 0; sub < BC / KN; ++sub) {
            float s[MT][NT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int i = 0; i < NT; ++i) s[mt][i][0] = s[mt][i][1] = s[mt][i][2] = s[mt][i][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    uint32_t r[4];
                    ldsm_x4(r, k_tile + swizzled(sub * KN + np * 16 + (mat >> 1) * 8 + mrow, kk * 2 + (mat & 1)));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(s[mt][2 * np], qa[mt][kk], r[0], r[1]);
                        mma_bf16(s[mt][2 * np + 1], qa[mt][kk], r[2], r[3]);
                    }
                }
            }

            // Online softmax in base 2: scores scaled by log2(e)/sqrt(d); keys past `keys` are −∞.
            const int key0 = j * BC + sub * KN;
            const bool tail = key0 + KN > keys;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float x = s[mt][nt][e] * scale_log2;
                        if (tail && key0 + nt * 8 + 2 * t + (e & 1) >= keys) x = -INFINITY;
                        s[mt][nt][e] = x;
                    }
                }
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * half], s[mt][nt][2 * half + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float new_max = fmaxf(row_max[mt][half], mx);
                    const float base = new_max == -INFINITY ? 0.f : new_max;
                    const float correction = exp2f(row_max[mt][half] - base);
                    float sum = 0.f;
#pragma unroll
                    for (int nt = 0; nt < NT; ++nt) {
                        const float p0 = exp2f(s[mt][nt][2 * half] - base);
                        const float p1 = exp2f(s[mt][nt][2 * half + 1] - base);
                        s[mt][nt][2 * half] = p0;
                        s[mt][nt][2 * half + 1] = p1;
                        sum += p0 + p1;
                    }
                    // Each lane keeps a partial sum over its own columns; the quad adds them at the end.
                    row_sum[mt][half] = row_sum[mt][half] * correction + sum;
                    row_max[mt][half] = new_max;
                    // Earlier sub-tiles' probabilities of this row were scaled to the old max:
                    // fold the correction into the accumulator now and into them below.
#pragma unroll
                    for (int dt = 0; dt < 16; ++dt) {
                        o[mt][dt][2 * half] *= correction;
                        o[mt][dt][2 * half + 1] *= correction;
                    }
                }
                // P as bf16 A fragments: the accumulators of two 8-key tiles are one 16-key A tile.
#pragma unroll
                for (int kc = 0; kc < NT / 2; ++kc) {
                    uint32_t *p = pa[mt][kc];
                    p[0] = pack_bf16(s[mt][2 * kc][0], s[mt][2 * kc][1]);
                    p[1] = pack_bf16(s[mt][2 * kc][2], s[mt][2 * kc][3]);
                    p[2] = pack_bf16(s[mt][2 * kc + 1][0], s[mt][2 * kc + 1][1]);
                    p[3] = pack_bf16(s[mt][2 * kc + 1][2], s[mt][2 * kc + 1][3]);
                }
            }
            if (KN < BC && sub == 0) {
                // The next sub-tile may raise the max, so P·V of this one comes now, while its
                // probabilities match the accumulator's scale: V_j must have landed.
                cp_async_wait<0>();
                __syncthreads();
            }
            if (KN < BC) {
#pragma unroll
                for (int kc = 0; kc < KN / 16; ++kc) {
#pragma unroll
                    for (int dp = 0; dp < 8; ++dp) {
                        uint32_t r[4];
                        ldsm_x4_trans(r, v_tile + swizzled(sub * KN + kc * 16 + (mat & 1) * 8 + mrow, dp * 2 + (mat >> 1)));
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) {
                            mma_bf16(o[mt][2 * dp], pa[mt][kc], r[0], r[1]);
                            mma_bf16(o[mt][2 * dp + 1], pa[mt][kc], r[2], r[3]);
                        }
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with K_j
        if (j + 1 < tiles) load_tile<THREADS>(k_tile, kh, (j + 1) * BC, keys, row_stride, tid);
        cp_async_commit();

        if (KN == BC) {
            cp_async_wait<1>();  // V_j has landed (K_{j+1} may still be in flight)
            __syncthreads();
            // O += P·V_j: V rows are keys, read transposed into B fragments.
#pragma unroll
            for (int kc = 0; kc < BC / 16; ++kc) {
#pragma unroll
                for (int dp = 0; dp < 8; ++dp) {
                    uint32_t r[4];
                    ldsm_x4_trans(r, v_tile + swizzled(kc * 16 + (mat & 1) * 8 + mrow, dp * 2 + (mat >> 1)));
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_bf16(o[mt][2 * dp], pa[mt][kc], r[0], r[1]);
                        mma_bf16(o[mt][2 * dp + 1], pa[mt][kc], r[2], r[3]);
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with V_j
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float l = row_sum[mt][half];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int row = first_row + mt * 16 + half * 8;
            if (row >= seq) continue;
            __nv_bfloat16 *dst = row < split ? out0 + ((long long)b * split + row) * row_stride
                                             : out1 + ((long long)b * (seq - split) + (row - split)) * row_stride;
            dst += h * HD + 2 * t;
#pragma unroll
            for (int dt = 0; dt < 16; ++dt) {
                *reinterpret_cast<uint32_t *>(dst + dt * 8) =
                    pack_bf16(o[mt][dt][2 * half] * inv, o[mt][dt][2 * half + 1] * inv);
            }
        }
    }
}

}  // namespace

// Grid: (ceil(seq / (16·WARPS·MT)), heads, batch); block: 32·WARPS threads.
#define FLASH_ENTRY(NAME, WARPS, MT, KN)                                                                            \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) NAME(                                                \
        const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, __nv_bfloat16 *out0,             \
        __nv_bfloat16 *out1, const unsigned int *kv_len, int seq, int heads, int split, float scale_log2) {       \
        flash_attention<WARPS, MT, KN>(q, k, v, out0, out1, kv_len, seq, heads, split, scale_log2);               \
    }

FLASH_ENTRY(engine_flash_attn_hd128_w4, 4, 1, 64)
FLASH_ENTRY(engine_flash_attn_hd128_w8, 8, 1, 64)
FLASH_ENTRY(engine_flash_attn_hd128_w4_m2, 4, 2, 32)
