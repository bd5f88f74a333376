// sweep.cu — times every cuBLASLt algorithm its heuristic offers for the DiT block's GEMMs,
// *under sustained load*, to see whether cuBLAS's first choice is also the fastest once the card
// sits at its power limit (the heuristic ranks for an unthrottled clock). Development harness for
// issue 11; not part of the engine build.
//
// Build (here, with shared/cuda's toolchain sourced, or on the GPU machine):
//   nvcc -O2 -std=c++17 -o sweep scripts/gemm_algos/sweep.cu -lcublasLt
// Run: ./sweep [rows_640=19200] [rows_1024=49152] [ms_per_candidate=150]
//
// Each GEMM is the engine's: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias, + GELU where the engine folds
// them into the epilogue), bf16 in and out, f32 accumulation; in cuBLAS's column-major terms
// yᵀ[N, M] = op_T(W) · xᵀ. Operands are random with the engine bench's statistics (x ~ N(0, 1),
// W ~ N(0, 1/K)). Per shape: the card is heated for 2 s with the heuristic's first choice; every
// configuration cuBLASLt accepts (algorithm ids × tiles × stages × cluster shapes × swizzling,
// validated by cublasLtMatmulAlgoCheck) is timed briefly; the 6 fastest then race the first
// choice in alternating sustained bursts (A B A B A B, `ms_per_candidate` each), so clock drift
// under the power limit hits both alike. SHAPES=0,2 restricts the shapes (indices in main);
// HEURISTIC_ONLY=1 races only the heuristic's candidates (the enumeration is slow on the host).
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { \
  std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e)); std::exit(1); } } while (0)
#define LT(x) do { cublasStatus_t st_ = (x); if (st_ != CUBLAS_STATUS_SUCCESS) { \
  std::fprintf(stderr, "%s:%d cublasLt status %d\n", __FILE__, __LINE__, (int)st_); std::exit(1); } } while (0)

enum class Epi { None, Bias, BiasGelu };

struct Shape {
  const char* name;
  int m, n, k;  // rows of x, outputs, inputs
  Epi epi;
};

// Fills `n` bf16 values ~ N(0, std) on the device (via a host buffer; setup only).
static __nv_bfloat16* random_bf16(size_t n, float std, unsigned seed) {
  std::vector<__nv_bfloat16> h(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, std);
  for (auto& v : h) v = __float2bfloat16(d(rng));
  __nv_bfloat16* p;
  CK(cudaMalloc(&p, n * sizeof(__nv_bfloat16)));
  CK(cudaMemcpy(p, h.data(), n * sizeof(__nv_bfloat16), cudaMemcpyHostToDevice));
  return p;
}

struct Gemm {
  cublasLtHandle_t lt;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, c;
  const __nv_bfloat16 *w, *x, *bias;
  __nv_bfloat16* y;
  void* ws;
  size_t ws_size;
  cudaStream_t stream;

  void run(const cublasLtMatmulAlgo_t& algo) const {
    const float one = 1.f, zero = 0.f;
    LT(cublasLtMatmul(lt, desc, &one, w, a, x, b, &zero, y, c, y, c, &algo, ws, ws_size, stream));
  }
};

// Mean milliseconds per GEMM over about `ms` of back-to-back runs.
static double time_algo(const Gemm& g, const cublasLtMatmulAlgo_t& algo, double ms) {
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  // Calibrate the repeat count on a short burst, then time the sustained run.
  CK(cudaEventRecord(e0, g.stream));
  for (int i = 0; i < 5; i++) g.run(algo);
  CK(cudaEventRecord(e1, g.stream));
  CK(cudaEventSynchronize(e1));
  float first = 0;
  CK(cudaEventElapsedTime(&first, e0, e1));
  int reps = std::max(10, (int)(ms / (first / 5)));
  CK(cudaEventRecord(e0, g.stream));
  for (int i = 0; i < reps; i++) g.run(algo);
  CK(cudaEventRecord(e1, g.stream));
  CK(cudaEventSynchronize(e1));
  float total = 0;
  CK(cudaEventElapsedTime(&total, e0, e1));
  CK(cudaEventDestroy(e0));
  CK(cudaEventDestroy(e1));
  return total / reps;
}

// One configuration attribute of `algo`, read at its declared width.
static int attr(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t which) {
  size_t written = 0;
  if (which == CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID || which == CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID) {
    uint16_t v = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, which, &v, sizeof(v), &written) != CUBLAS_STATUS_SUCCESS) return -1;
    return v;
  }
  uint32_t v = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(&algo, which, &v, sizeof(v), &written) != CUBLAS_STATUS_SUCCESS) return -1;
  return (int)v;
}

static std::string describe(const cublasLtMatmulAlgo_t& a) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "algo %d tile %d stages %d splitk %d swizzle %d custom %d cluster %d inner %d",
                attr(a, CUBLASLT_ALGO_CONFIG_ID), attr(a, CUBLASLT_ALGO_CONFIG_TILE_ID),
                attr(a, CUBLASLT_ALGO_CONFIG_STAGES_ID), attr(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                attr(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), attr(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
                attr(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), attr(a, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID));
  return buf;
}

// Every configuration cuBLASLt accepts for this GEMM beyond its heuristic's few: each algorithm
// id × its tiles × its stage counts × cluster shapes (auto, 1×1, 2×1, 1×2) × CTA swizzling, no
// split-K (these GEMMs have 1,800+ output tiles), each validated by cublasLtMatmulAlgoCheck.
static std::vector<cublasLtMatmulAlgo_t> enumerate(const Gemm& g, size_t ws_size) {
  std::vector<cublasLtMatmulAlgo_t> out;
  int ids[256];
  int n_ids = 0;
  LT(cublasLtMatmulAlgoGetIds(g.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                              CUDA_R_16BF, 256, ids, &n_ids));
  for (int i = 0; i < n_ids; i++) {
    cublasLtMatmulAlgo_t base;
    if (cublasLtMatmulAlgoInit(g.lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                               CUDA_R_16BF, ids[i], &base) != CUBLAS_STATUS_SUCCESS)
      continue;
    size_t written = 0;
    std::vector<uint32_t> tiles(128), stages(128);
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_TILE_IDS, tiles.data(), tiles.size() * 4, &written);
    tiles.resize(std::max<size_t>(written / 4, 1));
    if (written == 0) tiles[0] = 0;
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_STAGES_IDS, stages.data(), stages.size() * 4, &written);
    stages.resize(std::max<size_t>(written / 4, 1));
    if (written == 0) stages[0] = 0;
    uint32_t swizzle_support = 0;
    cublasLtMatmulAlgoCapGetAttribute(&base, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT, &swizzle_support, 4, &written);
    for (uint32_t tile : tiles)
      for (uint32_t stage : stages)
        for (uint16_t cluster : {0, 2, 3, 5})
          for (uint32_t swizzle = 0; swizzle <= (swizzle_support ? 1u : 0u); swizzle++) {
            cublasLtMatmulAlgo_t a = base;
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, 4);
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stage, 4);
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, 2);
            cublasLtMatmulAlgoConfigSetAttribute(&a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &swizzle, 4);
            cublasLtMatmulHeuristicResult_t r{};
            if (cublasLtMatmulAlgoCheck(g.lt, g.desc, g.a, g.b, g.c, g.c, &a, &r) != CUBLAS_STATUS_SUCCESS) continue;
            if (r.workspaceSize > ws_size) continue;
            out.push_back(a);
          }
  }
  return out;
}

// A against B in alternating sustained bursts (A B A B …), so clock drift hits both alike;
// returns (mean ms of A, mean ms of B).
static std::pair<double, double> ab(const Gemm& g, const cublasLtMatmulAlgo_t& a, const cublasLtMatmulAlgo_t& b,
                                    double ms, int rounds) {
  double ta = 0, tb = 0;
  for (int r = 0; r < rounds; r++) {
    ta += time_algo(g, a, ms);
    tb += time_algo(g, b, ms);
  }
  return {ta / rounds, tb / rounds};
}

static void sweep(cublasLtHandle_t lt, const Shape& s, void* ws, size_t ws_size, double ms, cudaStream_t stream) {
  Gemm g{};
  g.lt = lt;
  g.ws = ws;
  g.ws_size = ws_size;
  g.stream = stream;
  g.w = random_bf16((size_t)s.n * s.k, 1.f / std::sqrt((float)s.k), 1);
  g.x = random_bf16((size_t)s.m * s.k, 1.f, 2);
  g.bias = random_bf16((size_t)s.n, 0.02f, 3);
  CK(cudaMalloc(&g.y, (size_t)s.m * s.n * sizeof(__nv_bfloat16)));

  LT(cublasLtMatmulDescCreate(&g.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasOperation_t t = CUBLAS_OP_T, n = CUBLAS_OP_N;
  LT(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
  LT(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_TRANSB, &n, sizeof(n)));
  cublasLtEpilogue_t epi = s.epi == Epi::None ? CUBLASLT_EPILOGUE_DEFAULT
                         : s.epi == Epi::Bias ? CUBLASLT_EPILOGUE_BIAS
                                              : CUBLASLT_EPILOGUE_GELU_BIAS;
  LT(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  if (s.epi != Epi::None) {
    LT(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g.bias, sizeof(g.bias)));
    cudaDataType_t bt = CUDA_R_16BF;
    LT(cublasLtMatmulDescSetAttribute(g.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  LT(cublasLtMatrixLayoutCreate(&g.a, CUDA_R_16BF, s.k, s.n, s.k));  // W as stored: K × N column-major
  LT(cublasLtMatrixLayoutCreate(&g.b, CUDA_R_16BF, s.k, s.m, s.k));  // xᵀ
  LT(cublasLtMatrixLayoutCreate(&g.c, CUDA_R_16BF, s.n, s.m, s.n));  // yᵀ

  cublasLtMatmulPreference_t pref;
  LT(cublasLtMatmulPreferenceCreate(&pref));
  LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size, sizeof(ws_size)));
  // Everything this shape allocated, for both exits below.
  auto release = [&] {
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatrixLayoutDestroy(g.a);
    cublasLtMatrixLayoutDestroy(g.b);
    cublasLtMatrixLayoutDestroy(g.c);
    cublasLtMatmulDescDestroy(g.desc);
    CK(cudaFree((void*)g.w));
    CK(cudaFree((void*)g.x));
    CK(cudaFree((void*)g.bias));
    CK(cudaFree(g.y));
  };
  const int want = 64;
  std::vector<cublasLtMatmulHeuristicResult_t> res(want);
  int got = 0;
  LT(cublasLtMatmulAlgoGetHeuristic(lt, g.desc, g.a, g.b, g.c, g.c, pref, want, res.data(), &got));
  double flop = 2.0 * s.m * s.n * s.k;
  if (got == 0) {
    std::printf("\n## %s: cuBLASLt offers no algorithm\n", s.name);
    release();
    return;
  }

  // Heat the card with the first choice so every candidate is timed at the sustained clock.
  time_algo(g, res[0].algo, 2000);
  double base = time_algo(g, res[0].algo, ms);
  std::printf("\n## %s: M %d, N %d, K %d, %s — %d candidates; first choice %.3f ms (%.0f TFLOP/s)\n",
              s.name, s.m, s.n, s.k, s.epi == Epi::None ? "no epilogue" : s.epi == Epi::Bias ? "bias" : "bias+GELU",
              got, base, flop / base / 1e9);
  for (int i = 0; i < got; i++)
    std::printf("  heuristic %d: %s\n", i, describe(res[i].algo).c_str());

  // Every accepted configuration, timed briefly (cheap filter); the 6 fastest then race the
  // heuristic's first choice in alternating sustained bursts. HEURISTIC_ONLY=1 skips the
  // enumeration (its cublasLtMatmulAlgoCheck calls take a minute or more per shape on the host)
  // and races the heuristic's own candidates.
  std::vector<cublasLtMatmulAlgo_t> all;
  if (!std::getenv("HEURISTIC_ONLY")) all = enumerate(g, g.ws_size);
  for (int i = 0; i < got; i++) all.push_back(res[i].algo);
  std::vector<std::pair<double, int>> quick;
  for (int i = 0; i < (int)all.size(); i++) {
    g.run(all[i]);  // a configuration that fails at launch is skipped
    if (cudaStreamSynchronize(stream) != cudaSuccess) { cudaGetLastError(); continue; }
    quick.push_back({time_algo(g, all[i], 8), i});
  }
  std::sort(quick.begin(), quick.end());
  std::printf("%zu configurations accepted; quick times: fastest %.4f ms, heuristic's first %.4f ms\n", quick.size(),
              quick.empty() ? 0.0 : quick[0].first, time_algo(g, res[0].algo, 8));
  time_algo(g, res[0].algo, 1000);  // back to the sustained clock
  for (int j = 0; j < std::min<int>(6, (int)quick.size()); j++) {
    const auto& cand = all[quick[j].second];
    auto [t_first, t_cand] = ab(g, res[0].algo, cand, ms, 3);
    std::printf("  A/B %.4f ms vs first %.4f ms (%.3f, %.0f TFLOP/s): %s\n", t_cand, t_first, t_cand / t_first,
                flop / t_cand / 1e9, describe(cand).c_str());
  }

  release();
}

int main(int argc, char** argv) {
  int rows640 = argc > 1 ? std::atoi(argv[1]) : 19200;
  int rows1024 = argc > 2 ? std::atoi(argv[2]) : 49152;
  double ms = argc > 3 ? std::atof(argv[3]) : 150;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("# %s, %d SMs; %.0f ms per candidate after a 2 s heat-up per shape\n", prop.name,
              prop.multiProcessorCount, ms);
  cublasLtHandle_t lt;
  LT(cublasLtCreate(&lt));
  size_t ws_size = 32u << 20;
  void* ws;
  CK(cudaMalloc(&ws, ws_size));
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  const Shape shapes[] = {
      {"640² q/k/out projection", rows640, 3072, 3072, Epi::None},
      {"640² v projection (bias)", rows640, 3072, 3072, Epi::Bias},
      {"640² MLP in (bias+GELU)", rows640, 12288, 3072, Epi::BiasGelu},
      {"640² MLP out", rows640, 3072, 12288, Epi::None},
      {"1024² q/k/out projection", rows1024, 3072, 3072, Epi::None},
      {"1024² MLP in (bias+GELU)", rows1024, 12288, 3072, Epi::BiasGelu},
      {"1024² MLP out", rows1024, 3072, 12288, Epi::None},
  };
  const char* only = std::getenv("SHAPES");  // e.g. "0,2,3"
  for (int i = 0; i < (int)(sizeof(shapes) / sizeof(shapes[0])); i++) {
    if (only && std::string(",") .append(only).append(",").find("," + std::to_string(i) + ",") == std::string::npos)
      continue;
    sweep(lt, shapes[i], ws, ws_size, ms, stream);
    std::fflush(stdout);
  }
  return 0;
}
