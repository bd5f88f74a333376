// Development harness for src/gpu/kernels/attention_sm90.cu on the GPU machine: builds the TMA
// descriptors the way the engine does and launches the kernel, so check.py can compare it with
// PyTorch's attention and time it. Built there with nvcc (see check.py); not part of the engine.
#ifndef KERNEL_SRC
#define KERNEL_SRC "../../server/engine/src/gpu/kernels/attention_sm90.cu"
#endif
#include KERNEL_SRC
#include <cstdio>

static int make_map(CUtensorMap *map, void *base, int batch, int seq, int heads) {
    cuuint64_t dims[4] = {128, (cuuint64_t)heads, (cuuint64_t)seq, (cuuint64_t)batch};
    cuuint64_t strides[3] = {256, (cuuint64_t)heads * 256, (cuuint64_t)seq * heads * 256};
    cuuint32_t box[4] = {64, 1, 128, 1};
    cuuint32_t elem[4] = {1, 1, 1, 1};
    CUresult r = cuTensorMapEncodeTiled(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, base, dims, strides, box, elem,
                                        CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                        CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r);
        return 1;
    }
    return 0;
}

extern "C" int flash_sm90(void *q, void *k, void *v, const unsigned *kv_len, void *out0, void *out1, int batch, int seq,
                          int heads, int split, void *stream) {
    CUtensorMap mq, mk, mv;
    if (make_map(&mq, q, batch, seq, heads) || make_map(&mk, k, batch, seq, heads) || make_map(&mv, v, batch, seq, heads))
        return 1;
    const int smem = sm90::SMEM_BYTES;
    cudaError_t e = cudaFuncSetAttribute(engine_flash_attention_sm90, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess) {
        fprintf(stderr, "cudaFuncSetAttribute: %s\n", cudaGetErrorString(e));
        return 2;
    }
    dim3 grid((seq + sm90::BM - 1) / sm90::BM, heads, batch);
    const float scale_log2 = 1.4426950408889634f / sqrtf(128.f);
    engine_flash_attention_sm90<<<grid, sm90::THREADS, smem, (cudaStream_t)stream>>>(
        mq, mk, mv, kv_len, (__nv_bfloat16 *)out0, (__nv_bfloat16 *)out1, seq, heads, split, scale_log2);
    e = cudaGetLastError();
    if (e != cudaSuccess) {
        fprintf(stderr, "launch: %s\n", cudaGetErrorString(e));
        return 3;
    }
    return 0;
}
