// cuDNN's fused attention (the frontend's SDPA forward graph) behind a small C ABI for the
// engine's Rust code (`src/gpu/cudnn_attention.rs`), built only with the `cudnn-attention`
// feature.
//
// Why cuDNN: on Hopper its SDPA kernels use the warpgroup tensor-core instructions (wgmma) and
// reach about twice the rate of our own mma.sync flash kernel. The frontend is header-only and
// loads libcudnn / libcudart at run time (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING): a machine
// without cuDNN gets an error here and the engine keeps its own kernel.
//
// Tensors: q, k, v and o are bf16 [B, S, H, D] buffers (cuDNN's logical [B, H, S, D] with strides
// {S·H·D, D, H·D, 1}); seq_q / seq_kv are int32 [B] on the device (padding mask: batch row b
// attends to its first seq_kv[b] keys). One graph per (B, H, S, D, scale, autotune), built on
// first use and cached; calls are serialised by a mutex (the engine drives one GPU from one
// thread). With `autotune`, every execution plan cuDNN offers is built and the first run times
// them and keeps the fastest (a one-time cost per shape); otherwise cuDNN's heuristic pick runs.
#define NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING
#include <cudnn_frontend.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

#include <dlfcn.h>

namespace fe = cudnn_frontend;

// The frontend resolves every cuDNN call through this handle; we open the library on first use.
namespace cudnn_frontend {
void *cudnn_dlhandle = nullptr;
}

namespace {

constexpr int64_t UID_Q = 1, UID_K = 2, UID_V = 3, UID_O = 4, UID_SEQ_Q = 5, UID_SEQ_KV = 6;

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, float, bool>;

struct Entry {
    std::shared_ptr<fe::graph::Graph> graph;
    bool needs_tuning = false;
};

struct State {
    std::mutex lock;
    cudnnHandle_t handle = nullptr;
    std::map<Key, Entry> graphs;
};

State &state() {
    static State s;
    return s;
}

void write_error(char *err, int64_t err_len, const std::string &msg) {
    if (err == nullptr || err_len <= 0) return;
    const size_t n = std::min<size_t>(msg.size(), static_cast<size_t>(err_len - 1));
    std::memcpy(err, msg.data(), n);
    err[n] = '\0';
}

#define ENGINE_TRY(step, call)                                                            \
    do {                                                                                  \
        auto status__ = (call);                                                           \
        if (status__.is_bad()) {                                                          \
            error = std::string(step) + ": " + status__.get_message();                    \
            return nullptr;                                                               \
        }                                                                                 \
    } while (0)

std::shared_ptr<fe::graph::Graph> build_graph(cudnnHandle_t handle, int64_t b, int64_t h, int64_t s, int64_t d,
                                              float scale, bool all_plans, std::string &error) {
    auto graph = std::make_shared<fe::graph::Graph>();
    graph->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    const std::vector<int64_t> dim = {b, h, s, d};
    const std::vector<int64_t> stride = {s * h * d, d, h * d, 1};
    auto tensor = [&](const char *name, int64_t uid) {
        return graph->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim(dim).set_stride(stride));
    };
    auto q = tensor("q", UID_Q), k = tensor("k", UID_K), v = tensor("v", UID_V);
    auto lengths = [&](const char *name, int64_t uid) {
        return graph->tensor(fe::graph::Tensor_attributes()
                                 .set_name(name)
                                 .set_uid(uid)
                                 .set_dim({b, 1, 1, 1})
                                 .set_stride({1, 1, 1, 1})
                                 .set_data_type(fe::DataType_t::INT32));
    };
    auto seq_q = lengths("seq_q", UID_SEQ_Q), seq_kv = lengths("seq_kv", UID_SEQ_KV);
    auto options = fe::graph::SDPA_attributes()
                       .set_name("joint_attention")
                       .set_generate_stats(false)
                       .set_attn_scale(scale)
                       .set_padding_mask(true)
                       .set_seq_len_q(seq_q)
                       .set_seq_len_kv(seq_kv);
    auto outputs = graph->sdpa(q, k, v, options);
    outputs[0]->set_output(true).set_dim(dim).set_stride(stride).set_uid(UID_O);

    ENGINE_TRY("validate", graph->validate());
    ENGINE_TRY("build_operation_graph", graph->build_operation_graph(handle));
    ENGINE_TRY("create_execution_plans", graph->create_execution_plans({fe::HeurMode_t::A}));
    ENGINE_TRY("check_support", graph->check_support(handle));
    ENGINE_TRY("build_plans",
               graph->build_plans(handle, all_plans ? fe::BuildPlanPolicy_t::ALL : fe::BuildPlanPolicy_t::HEURISTICS_CHOICE));
    return graph;
}

// The cached graph for this shape (built now if new), with the state's lock held by the caller.
Entry *graph_for(State &st, int64_t b, int64_t h, int64_t s, int64_t d, float scale, bool autotune,
                 std::string &error) {
    if (fe::cudnn_dlhandle == nullptr) {
        fe::cudnn_dlhandle = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_GLOBAL);
        if (fe::cudnn_dlhandle == nullptr) {
            const char *why = dlerror();
            error = std::string("loading libcudnn.so.9: ") + (why ? why : "not found");
            return nullptr;
        }
    }
    if (st.handle == nullptr) {
        try {
            auto status = fe::detail::create_handle(&st.handle);
            if (status != CUDNN_STATUS_SUCCESS) {
                error = std::string("cudnnCreate: ") + fe::detail::get_error_string(status);
                st.handle = nullptr;
                return nullptr;
            }
        } catch (const std::exception &e) {
            error = std::string("loading cuDNN: ") + e.what();
            return nullptr;
        }
    }
    const Key key{b, h, s, d, scale, autotune};
    auto found = st.graphs.find(key);
    if (found != st.graphs.end()) return &found->second;
    auto graph = build_graph(st.handle, b, h, s, d, scale, autotune, error);
    if (!graph) return nullptr;
    const bool several = autotune && graph->get_execution_plan_count() > 1;
    return &st.graphs.emplace(key, Entry{graph, several}).first->second;
}

// Runs `body(entry)` on the graph for this shape under the state's lock, turning every failure
// (building the graph, a bad status, a frontend exception) into 1 and a message in `err`.
template <class Body>
int with_graph(int64_t b, int64_t h, int64_t s, int64_t d, float scale, int autotune, char *err, int64_t err_len,
               Body body) {
    State &st = state();
    std::lock_guard<std::mutex> guard(st.lock);
    std::string error;
    try {
        Entry *entry = graph_for(st, b, h, s, d, scale, autotune != 0, error);
        if (entry) error = body(st, *entry);
        if (error.empty()) return 0;
    } catch (const std::exception &e) {
        error = std::string("cuDNN frontend: ") + e.what();
    }
    write_error(err, err_len, error);
    return 1;
}

}  // namespace

// Builds (or finds) the graph for this shape and reports the workspace it needs. 0 = ok.
extern "C" int engine_cudnn_sdpa_prepare(int64_t b, int64_t h, int64_t s, int64_t d, float scale, int autotune,
                                         int64_t *workspace_bytes, char *err, int64_t err_len) {
    return with_graph(b, h, s, d, scale, autotune, err, err_len, [&](State &, Entry &entry) -> std::string {
        int64_t bytes = 0;
        auto status = entry.graph->get_workspace_size(bytes);
        if (status.is_bad()) return "get_workspace_size: " + status.get_message();
        // The tuning run tries every plan: it needs the largest plan's workspace.
        if (entry.needs_tuning) bytes = std::max(bytes, entry.graph->get_autotune_workspace_size());
        *workspace_bytes = bytes;
        return "";
    });
}

// Runs the attention on `stream` (a CUstream / cudaStream_t). 0 = ok.
extern "C" int engine_cudnn_sdpa_run(void *stream, const void *q, const void *k, const void *v, void *o,
                                     const int32_t *seq_q, const int32_t *seq_kv, int64_t b, int64_t h, int64_t s,
                                     int64_t d, float scale, int autotune, void *workspace, char *err,
                                     int64_t err_len) {
    return with_graph(b, h, s, d, scale, autotune, err, err_len, [&](State &st, Entry &entry) -> std::string {
        auto status = fe::detail::set_stream(st.handle, static_cast<cudaStream_t>(stream));
        if (status != CUDNN_STATUS_SUCCESS) return std::string("cudnnSetStream: ") + fe::detail::get_error_string(status);
        std::unordered_map<int64_t, void *> pack = {
            {UID_Q, const_cast<void *>(q)},
            {UID_K, const_cast<void *>(k)},
            {UID_V, const_cast<void *>(v)},
            {UID_O, o},
            {UID_SEQ_Q, const_cast<int32_t *>(seq_q)},
            {UID_SEQ_KV, const_cast<int32_t *>(seq_kv)},
        };
        if (entry.needs_tuning) {
            // Times every plan on these buffers and makes the fastest the candidate; a failed
            // tuning keeps the heuristic's first plan.
            entry.needs_tuning = false;
            (void)entry.graph->autotune(st.handle, pack, workspace);
        }
        auto result = entry.graph->execute(st.handle, pack, workspace);
        if (result.is_bad()) return "execute: " + result.get_message();
        return "";
    });
}
