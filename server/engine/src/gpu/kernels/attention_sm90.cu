// Fused attention forward for Hopper (sm_90a): the DiT's joint attention on the tensor cores'
// asynchronous path (wgmma), with tiles brought in by the copy engine (TMA).
//
// Same contract as attention.cu's kernel: q, k, v are joint buffers [B, S, H, 128] bf16; batch
// row b attends to its first kv_len[b] keys; the output rows [0, split) go to out0
// [B, split, H·128] and [split, S) to out1 [B, S − split, H·128].
//
// Why a second kernel: mma.sync reaches ~250 TFLOP/s here and cuDNN's plans ~500; Hopper's
// wgmma issues 64×128×16 products per warpgroup from shared memory without register staging, and
// TMA moves whole tiles with one instruction while the math warps keep computing.
//
// Scheme (FlashAttention-3's):
// - a block owns 128 query rows of one (batch, head); warpgroups 0 and 1 are consumers of 64
//   rows each, warpgroup 2 the producer (setmaxnreg moves registers from it to the consumers);
// - the producer's first lane loads Q once, then streams K and V tiles of 128 keys through a
//   two-stage ring in shared memory with TMA; each stage has "full" mbarriers (the copy engine
//   counts the bytes in) and "free" ones (every consumer thread arrives when done with a tile);
// - consumers compute S = Q·Kᵀ with wgmma (both operands in shared memory), do the online
//   softmax in registers (exp2 domain), and O += P·V with P straight from the S accumulators
//   (the f32 accumulator layout of one 64×16 slice is wgmma's A-register layout, so the
//   conversion is a bf16 pack), V from shared memory read transposed (MN-major);
// - the softmax of tile j runs while the tensor cores still compute P_{j−1}·V_{j−1}
//   (intra-warpgroup overlap), and the two consumer warpgroups take turns issuing their GEMMs
//   (pingpong, named barriers);
// - tiles are 128-byte swizzled: the TMA writes them in the layout the wgmma descriptors read.
//   Each 128-row tile is stored as two halves of 64 head dims (128 bytes per row each).
//
// Measured in docs/benchmarks.md; scripts/flash_sm90/ checks and times it against PyTorch
// (PINGPONG and KV_STAGES are compile-time switches for that harness).
#include <cuda.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace sm90 {

constexpr int HD = 128;            // head dimension
constexpr int BM = 128;            // query rows per block (2 consumer warpgroups × 64)
constexpr int BN = 128;            // keys per tile
#ifndef KV_STAGES
#define KV_STAGES 2
#endif
constexpr int STAGES = KV_STAGES;  // K/V ring depth
constexpr int CONSUMERS = 256;     // consumer threads (warpgroups 0 and 1)
constexpr int THREADS = CONSUMERS + 128;  // + the producer warpgroup
// Register split (setmaxnreg): the producer needs few, the consumers hold two 64×128 f32
// accumulators and two P fragments. 128·24 + 256·240 ≤ 64 K registers.
constexpr int PRODUCER_REGS = 24;
constexpr int CONSUMER_REGS = 240;
constexpr int HALF_BYTES = 128 * 128;           // one 128-row × 64-dim half tile
constexpr int TILE_BYTES = 2 * HALF_BYTES;      // 32 KB
// Shared memory: Q, K[STAGES], V[STAGES], then the mbarriers; +1 KB to align the base to 1024.
constexpr int SMEM_BYTES = TILE_BYTES * (1 + 2 * STAGES) + 128 + 1024;
static_assert(SMEM_BYTES <= 227 * 1024, "more shared memory than a Hopper block can have");

#ifndef PINGPONG
#define PINGPONG 1
#endif
#ifndef V_LBO
#define V_LBO HALF_BYTES  // MN-major B: distance between the two 64-dim halves
#endif
#ifndef V_SBO
#define V_SBO 1024        // MN-major B: distance between groups of 8 keys
#endif

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---- mbarrier -----------------------------------------------------------------------------
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    asm volatile(
        "{\n"
        ".reg .pred done;\n"
        "WAIT_%=:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
        "@!done bra WAIT_%=;\n"
        "}\n" ::"r"(bar),
        "r"(parity)
        : "memory");
}

// ---- TMA ----------------------------------------------------------------------------------
// Box {64 dims, 1 head, 128 rows, 1 batch} of a [B, S, H, 128] tensor into 16 KB of shared
// memory, 128-byte swizzled; rows past S are zero-filled.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap *map, uint32_t bar, int d, int h, int s,
                                         int b) {
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
        "[%6];\n" ::"r"(dst),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(d), "r"(h), "r"(s), "r"(b), "r"(bar)
        : "memory");
}

// ---- wgmma --------------------------------------------------------------------------------
// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62–63).
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo, uint32_t sbo) {
    return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (static_cast<uint64_t>((lbo & 0x3FFFF) >> 4) << 16) |
           (static_cast<uint64_t>((sbo & 0x3FFFF) >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Named barriers 1 and 2 hand the tensor cores back and forth between the two consumer
// warpgroups ("pingpong"): one issues its two GEMMs while the other runs its softmax.
__device__ __forceinline__ void turn_wait(int wg) {
#if PINGPONG
    asm volatile("bar.sync %0, 256;\n" ::"r"(1 + wg) : "memory");
#endif
}
__device__ __forceinline__ void turn_pass(int wg) {
#if PINGPONG
    asm volatile("bar.arrive %0, 256;\n" ::"r"(2 - wg) : "memory");
#endif
}

// Keeps the compiler from moving accumulator reads/writes across the asynchronous wgmma.
__device__ __forceinline__ void fence_regs(float (&r)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

#define WG_D64                                                                                                   \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, " \
    "%23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "  \
    "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
#define WG_OUT64(d)                                                                                              \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),  \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),   \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),  \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),  \
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),  \
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),  \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),  \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d (64×128 f32, this warpgroup) = or += A (smem, K-major) · B (smem, K-major), K = 16.
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_D64 ", %64, %65, p, 1, 1, 0, 0;\n"
        "}\n"
        : WG_OUT64(d)
        : "l"(a), "l"(b), "r"(accumulate));
}

// d += A (registers, 64×16 bf16) · B (smem, MN-major: read transposed), K = 16.
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %69, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_D64
        ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
        "}\n"
        : WG_OUT64(d)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t *>(&v);
}

// 2^x on the SFU alone. exp2f without fast math is `ex2.approx.f32`, which keeps denormal
// results by scaling around the SFU: a compare and two predicated multiplies per score. Softmax
// probabilities below 2^-126 are zero once rounded to bf16 for P·V anyway, so flush them.
#ifndef EX2_FTZ
#define EX2_FTZ 1
#endif
__device__ __forceinline__ float exp2_ftz(float x) {
#if EX2_FTZ
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

template <int N> __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void fence_frags(uint32_t (&p)[8][4]) {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
        for (int r = 0; r < 4; ++r) asm volatile("" : "+r"(p[kk][r])::"memory");
}

// Issues S = Q·Kᵀ for this warpgroup's 64 rows: K = 128 head dims in 8 steps of 16 (32 bytes
// inside a 128-byte row; dims 64–127 live in the other half tile).
__device__ __forceinline__ void qk_issue(float (&s)[64], uint32_t q_rows, uint32_t k_tile) {
    fence_regs(s);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        const uint32_t off = (kk / 4) * HALF_BYTES + (kk % 4) * 32;
        wgmma_ss(s, desc_sw128(q_rows + off, 16, 1024), desc_sw128(k_tile + off, 16, 1024), kk > 0);
    }
}

// Issues O += P·V: K = 128 keys in 8 steps of 16 key rows (2 KB each); V read MN-major.
__device__ __forceinline__ void pv_issue(float (&o)[64], const uint32_t (&p)[8][4], uint32_t v_tile) {
    fence_regs(o);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wgmma_rs(o, p[kk], desc_sw128(v_tile + kk * 2048, V_LBO, V_SBO));
}

// Online softmax of one tile of scores (base 2): masks keys ≥ `keys`, updates the running max
// and (per-lane partial) sum, returns the factor the accumulator must be rescaled by, and P as
// bf16 A fragments (keys 16kk..16kk+15 are accumulator chunks 2kk and 2kk+1). Each row's 128
// scores are spread over a quad of lanes.
__device__ __forceinline__ void softmax_tile(float (&s)[64], int key0, int keys, int lane, float scale_log2,
                                             float (&row_max)[2], float (&row_sum)[2], float (&corr)[2],
                                             uint32_t (&p)[8][4]) {
    if (key0 + BN > keys) {
#pragma unroll
        for (int n = 0; n < 16; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const bool dead = key0 + 8 * n + 2 * (lane % 4) + e >= keys;
                if (dead) s[4 * n + e] = s[4 * n + 2 + e] = -INFINITY;
            }
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        float mx = -INFINITY;
#pragma unroll
        for (int n = 0; n < 16; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * i], s[4 * n + 2 * i + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, 2));
        const float m_new = fmaxf(row_max[i], mx * scale_log2);
        corr[i] = exp2_ftz(row_max[i] - m_new);
        row_max[i] = m_new;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < 16; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float v = exp2_ftz(fmaf(s[4 * n + 2 * i + e], scale_log2, -m_new));
                s[4 * n + 2 * i + e] = v;
                sum += v;
            }
        row_sum[i] = row_sum[i] * corr[i] + sum;
    }
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
        p[kk][0] = pack_bf16(s[8 * kk + 0], s[8 * kk + 1]);
        p[kk][1] = pack_bf16(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack_bf16(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack_bf16(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

}  // namespace sm90

// Grid (⌈S/128⌉, H, B), 384 threads, sm90::SMEM_BYTES of dynamic shared memory.
extern "C" __global__ void __launch_bounds__(sm90::THREADS, 1)
    engine_flash_attention_sm90(const __grid_constant__ CUtensorMap map_q, const __grid_constant__ CUtensorMap map_k,
                                const __grid_constant__ CUtensorMap map_v, const unsigned int *__restrict__ kv_len,
                                __nv_bfloat16 *__restrict__ out0, __nv_bfloat16 *__restrict__ out1, int seq, int heads,
                                int split, float scale_log2) {
    using namespace sm90;
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    // The swizzle pattern repeats every 1024 bytes: tiles must start on such a boundary.
    uint8_t *smem = reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
    const uint32_t s_q = smem_u32(smem);
    const uint32_t s_k = s_q + TILE_BYTES;                 // + stage · TILE_BYTES
    const uint32_t s_v = s_k + STAGES * TILE_BYTES;        // + stage · TILE_BYTES
    const uint32_t bars = s_v + STAGES * TILE_BYTES;
    const uint32_t bar_q = bars;
    // Per stage: K and V "full" (the copy engine counts the bytes in) and "free" (every consumer
    // thread arrives when its wgmma reading the tile has completed). K and V are freed apart: in
    // the pipelined loop below V_j is read one iteration after K_j.
    auto bar_k_full = [&](int st) { return bars + 8 + 8 * st; };
    auto bar_v_full = [&](int st) { return bars + 8 + 8 * STAGES + 8 * st; };
    auto bar_k_free = [&](int st) { return bars + 8 + 16 * STAGES + 8 * st; };
    auto bar_v_free = [&](int st) { return bars + 8 + 24 * STAGES + 8 * st; };

    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int keys = min(static_cast<int>(kv_len[b]), seq);
    const int tiles = (keys + BN - 1) / BN;
    const int tid = threadIdx.x;

    if (tid == 0) {
        mbar_init(bar_q, 1);
        for (int st = 0; st < STAGES; ++st) {
            mbar_init(bar_k_full(st), 1);
            mbar_init(bar_v_full(st), 1);
            mbar_init(bar_k_free(st), CONSUMERS);
            mbar_init(bar_v_free(st), CONSUMERS);
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (tid >= CONSUMERS) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(PRODUCER_REGS));
        // Producer: one lane issues every copy. Tile j reuses the stage of tile j − STAGES once
        // the consumers have freed it (the n-th use of a stage waits for free phase n − 1).
        // With no keys at all the consumers wait for nothing, so nothing is loaded either (a
        // copy still in flight when the block exits would write into a later block's memory).
        if (tid == CONSUMERS && tiles > 0) {
            mbar_expect_tx(bar_q, TILE_BYTES);
            tma_load(s_q, &map_q, bar_q, 0, h, m0, b);
            tma_load(s_q + HALF_BYTES, &map_q, bar_q, 64, h, m0, b);
            for (int j = 0; j < tiles; ++j) {
                const int st = j % STAGES;
                const uint32_t free_parity = ((j / STAGES) - 1) & 1;
                const uint32_t k_dst = s_k + st * TILE_BYTES, v_dst = s_v + st * TILE_BYTES;
                if (j >= STAGES) mbar_wait(bar_k_free(st), free_parity);
                mbar_expect_tx(bar_k_full(st), TILE_BYTES);
                tma_load(k_dst, &map_k, bar_k_full(st), 0, h, j * BN, b);
                tma_load(k_dst + HALF_BYTES, &map_k, bar_k_full(st), 64, h, j * BN, b);
                if (j >= STAGES) mbar_wait(bar_v_free(st), free_parity);
                mbar_expect_tx(bar_v_full(st), TILE_BYTES);
                tma_load(v_dst, &map_v, bar_v_full(st), 0, h, j * BN, b);
                tma_load(v_dst + HALF_BYTES, &map_v, bar_v_full(st), 64, h, j * BN, b);
            }
        }
    } else {
        asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(CONSUMER_REGS));
        // Consumers. Accumulator layout (wgmma m64n128, f32): register 4n + 2i + e holds row
        // warp·16 + lane/4 + 8i, column 8n + 2·(lane%4) + e.
        //
        // Software pipeline (FlashAttention-3's intra-warpgroup overlap): iteration j issues
        // S_j = Q·K_jᵀ and O += P_{j−1}·V_{j−1} back to back, waits for S_j only, and runs the
        // softmax of tile j (exp2 on the SFU) while the tensor cores still work on P_{j−1}·V_{j−1}.
        // O holds Σ_{t<j} P_t·V_t relative to the running max of tile j − 1 until it is rescaled.
        const int wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
        float o[64], s[64];
#pragma unroll
        for (int i = 0; i < 64; ++i) o[i] = 0.f;
        float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f}, corr[2];
        uint32_t p[8][4];
        const uint32_t q_rows = s_q + wg * 64 * 128;  // this warpgroup's 64 rows in each half

        if (tiles > 0) {  // (a row with no keys at all gets zeros)
            if (wg == 1) turn_pass(1);  // warpgroup 0 goes first
            mbar_wait(bar_q, 0);
            mbar_wait(bar_k_full(0), 0);
            turn_wait(wg);
            qk_issue(s, q_rows, s_k);
            wgmma_commit();
            turn_pass(wg);
            wgmma_wait<0>();
            fence_regs(s);
            mbar_arrive(bar_k_free(0));
            softmax_tile(s, 0, keys, lane, scale_log2, row_max, row_sum, corr, p);
            for (int j = 1; j < tiles; ++j) {
                const int st = j % STAGES, prev = (j - 1) % STAGES;
                mbar_wait(bar_k_full(st), (j / STAGES) & 1);
                mbar_wait(bar_v_full(prev), ((j - 1) / STAGES) & 1);
                turn_wait(wg);
                qk_issue(s, q_rows, s_k + st * TILE_BYTES);
                wgmma_commit();
                pv_issue(o, p, s_v + prev * TILE_BYTES);
                wgmma_commit();
                turn_pass(wg);
                wgmma_wait<1>();  // S_j is in; P_{j−1}·V_{j−1} may still run
                fence_regs(s);
                mbar_arrive(bar_k_free(st));
                uint32_t p_next[8][4];
                softmax_tile(s, j * BN, keys, lane, scale_log2, row_max, row_sum, corr, p_next);
                wgmma_wait<0>();
                fence_regs(o);
                fence_frags(p);  // p stays live (unclobbered) until the wgmma reading it is done
                mbar_arrive(bar_v_free(prev));
#pragma unroll
                for (int n = 0; n < 16; ++n) {
                    o[4 * n + 0] *= corr[0];
                    o[4 * n + 1] *= corr[0];
                    o[4 * n + 2] *= corr[1];
                    o[4 * n + 3] *= corr[1];
                }
#pragma unroll
                for (int kk = 0; kk < 8; ++kk)
#pragma unroll
                    for (int r = 0; r < 4; ++r) p[kk][r] = p_next[kk][r];
            }
            {
                const int last = (tiles - 1) % STAGES;
                mbar_wait(bar_v_full(last), ((tiles - 1) / STAGES) & 1);
                turn_wait(wg);
                pv_issue(o, p, s_v + last * TILE_BYTES);
                wgmma_commit();
                turn_pass(wg);
                if (wg == 0) turn_wait(0);  // takes warpgroup 1's last hand-over: no arrival left pending
                wgmma_wait<0>();
                fence_regs(o);
                fence_frags(p);
            }
        }

        // Normalise and store: each lane writes pairs of columns of its two rows.
        const int width = heads * HD;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            float sum = row_sum[i];
            sum += __shfl_xor_sync(0xffffffff, sum, 1);
            sum += __shfl_xor_sync(0xffffffff, sum, 2);
            const float inv = sum > 0.f ? 1.f / sum : 0.f;
            const int row = m0 + wg * 64 + warp * 16 + lane / 4 + 8 * i;
            if (row >= seq) continue;
            __nv_bfloat16 *dst = row < split ? out0 + (static_cast<long long>(b) * split + row) * width
                                             : out1 + (static_cast<long long>(b) * (seq - split) + row - split) * width;
            dst += h * HD + 2 * (lane % 4);
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                const uint32_t v = pack_bf16(o[4 * n + 2 * i] * inv, o[4 * n + 2 * i + 1] * inv);
                *reinterpret_cast<uint32_t *>(dst + 8 * n) = v;
            }
        }
    }
}
