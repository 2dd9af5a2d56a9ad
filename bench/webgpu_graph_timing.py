"""Adds host-time measurement to a copy of ggml-webgpu.cpp (for bench/webgpu_variants.sh --timing).

    python bench/webgpu_graph_timing.py [--sections] SRC OUT

The copy times every graph_compute call (encoding and submitting a graph: host work, since the
GPU runs asynchronously) and prints, at exit, the median, mean, p10 and p90 in microseconds over
the calls after the first four (which compile pipelines), and the last graph's node count, as
one `LW_MEASURE ...` line on stderr.

With --sections the copy also splits each call, and prints the medians per graph in microseconds
as a second line, `LW_SECTIONS ...`:
  encode     ggml_webgpu_encode: parameters, bind group lookup and Dawn's pass encoding;
  dawn_pass  of that, only Dawn's SetPipeline/SetBindGroup/DispatchWorkgroups calls;
  finish     CommandEncoder::Finish;
  submit     the parameter upload and Queue::Submit;
  between    host time from the end of one call to the start of the next (llama.cpp's graph
             building and input upload, and waiting for the previous token's results);
  wait       of that, the time spent waiting for the GPU: in the backend's synchronize (the
             GPU's work up to then finishing) and in get_tensor (mapping its staging buffer);
with the dispatches per graph and how many graphs were replayed without encoding (patches/0018:
their encode and dispatch figures are 0, so medians over mostly replayed graphs show the replay),
and once, `LW_OPS ...`, how many dispatches each op took in the last encoded graph (an op fused
with the next ones is counted under its first op, with a `+N` suffix).
"""

import sys
from pathlib import Path

STATS = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
namespace lw_measure {
using clock = std::chrono::steady_clock;
static double us_since(clock::time_point t0) {
    return std::chrono::duration<double, std::micro>(clock::now() - t0).count();
}
static double median_after_warmup(const std::vector<double> & xs) {
    std::vector<double> v(xs.begin() + 4, xs.end());
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
enum section { ENCODE, DAWN_PASS, FINISH, SUBMIT, BETWEEN, WAIT, DISPATCHES, N_SECTIONS };
static const char * section_names[N_SECTIONS] = { "encode",  "dawn_pass", "finish",    "submit",
                                                  "between", "wait",      "dispatches" };
struct stats {
    std::vector<double>             us;
    size_t                          nodes = 0;
    double                          acc[N_SECTIONS] = {};
    std::vector<double>             per_graph[N_SECTIONS];
    clock::time_point               last_exit;
    bool                            has_exit = false;
    std::map<std::string, unsigned> ops, graph_ops;
    size_t                          replayed = 0;
    double                          waited   = 0;  // since the last graph (get_tensor's map waits)
    void begin_graph() {
        for (double & a : acc) {
            a = 0;
        }
        acc[WAIT] = waited;
        waited    = 0;
        if (has_exit) {
            acc[BETWEEN] = us_since(last_exit);
        }
        graph_ops.clear();
    }
    void end_graph() {
        if (graph_ops.empty()) {
            replayed++;  // nothing encoded: replayed from a record (patches/0018), or empty
        } else {
            ops = graph_ops;
        }
        for (int i = 0; i < N_SECTIONS; i++) {
            per_graph[i].push_back(acc[i]);
        }
        last_exit = clock::now();
        has_exit  = true;
    }
    ~stats() {
        if (us.size() < 8) {
            return;
        }
        std::vector<double> v(us.begin() + 4, us.end());
        std::sort(v.begin(), v.end());
        double sum = 0;
        for (double x : v) {
            sum += x;
        }
        fprintf(stderr,
                "LW_MEASURE graph_compute calls=%zu median_us=%.1f mean_us=%.1f p10=%.1f p90=%.1f "
                "nodes_last=%zu\n",
                v.size(), v[v.size() / 2], sum / v.size(), v[v.size() / 10], v[v.size() * 9 / 10],
                nodes);
        if (per_graph[ENCODE].size() == us.size()) {
            fprintf(stderr, "LW_SECTIONS");
            for (int i = 0; i < N_SECTIONS; i++) {
                fprintf(stderr, " %s=%.1f", section_names[i], median_after_warmup(per_graph[i]));
            }
            fprintf(stderr, " graphs_without_encoding=%zu\nLW_OPS", replayed);
            for (const auto & kv : ops) {
                fprintf(stderr, " %s=%u", kv.first.c_str(), kv.second);
            }
            fprintf(stderr, "\n");
        }
    }
};
static stats g;
}  // namespace lw_measure
"""

START = "    auto lw_t0 = std::chrono::steady_clock::now();\n"
STOP = (
    "    lw_measure::g.us.push_back(\n"
    "        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - lw_t0)"
    ".count());\n"
    "    lw_measure::g.nodes = cgraph->n_nodes;\n"
)

ANCHORS = {
    "types": "/* Struct definitions */",
    "entry": "static ggml_status ggml_backend_webgpu_graph_compute(ggml_backend_t backend, "
    "struct ggml_cgraph * cgraph) {\n",
    "exit": "    WEBGPU_CPU_PROFILE_TOTAL_END(graph_compute, ctx->global_ctx);\n",
}

DISPATCH_LOOP = (
    "    for (size_t i = 0; i < dispatches.size(); i++) {\n"
    "        if (ctx->batch_compute_passes) {\n"
)

# (anchor, replacement, expected count) for --sections
SECTIONS = [
    (
        "        if (auto cmd = ggml_webgpu_encode(ctx, cgraph, node_idx, num_encoded_ops)) {\n",
        "        auto lw_e0  = lw_measure::clock::now();\n"
        "        auto lw_cmd = ggml_webgpu_encode(ctx, cgraph, node_idx, num_encoded_ops);\n"
        "        lw_measure::g.acc[lw_measure::ENCODE] += lw_measure::us_since(lw_e0);\n"
        "        if (lw_cmd) {\n"
        "            lw_measure::g.acc[lw_measure::DISPATCHES] += lw_cmd->num_kernels;\n"
        "            std::string lw_op = ggml_op_desc(cgraph->nodes[node_idx]);\n"
        "            if (num_encoded_ops > 1) {\n"
        '                lw_op += "+" + std::to_string(num_encoded_ops - 1);\n'
        "            }\n"
        "            lw_measure::g.graph_ops[lw_op] += lw_cmd->num_kernels;\n"
        "        }\n"
        "        if (auto cmd = lw_cmd) {\n",
        1,
    ),
    (
        "ggml_backend_webgpu_submit_commands(ctx, batch_commands, num_inflight_batches);\n",
        "auto lw_s0 = lw_measure::clock::now();\n"
        "        ggml_backend_webgpu_submit_commands(ctx, batch_commands, num_inflight_batches);\n"
        "        lw_measure::g.acc[lw_measure::SUBMIT] += lw_measure::us_since(lw_s0);\n",
        2,
    ),
    (
        "wgpu::CommandBuffer batch_commands = ctx->active_command_encoder.Finish();\n",
        "auto lw_f0 = lw_measure::clock::now();\n"
        "        wgpu::CommandBuffer batch_commands = ctx->active_command_encoder.Finish();\n"
        "        lw_measure::g.acc[lw_measure::FINISH] += lw_measure::us_since(lw_f0);\n",
        2,
    ),
    (
        DISPATCH_LOOP,
        "    auto lw_d0 = lw_measure::clock::now();\n" + DISPATCH_LOOP,
        1,
    ),
    (
        "    }\n#endif\n\n    return result;\n}\n",
        "    }\n    lw_measure::g.acc[lw_measure::DAWN_PASS] += lw_measure::us_since(lw_d0);\n"
        "#endif\n\n    return result;\n}\n",
        1,
    ),
    (
        "    if (!ggml_backend_webgpu_map_buffer(buf_ctx->global_ctx, "
        "buf_ctx->global_ctx->get_tensor_staging_buf,\n"
        "                                        wgpu::MapMode::Read, 0, final_size)) {\n",
        "    auto       lw_w0     = lw_measure::clock::now();\n"
        "    const bool lw_mapped = ggml_backend_webgpu_map_buffer(\n"
        "        buf_ctx->global_ctx, buf_ctx->global_ctx->get_tensor_staging_buf, "
        "wgpu::MapMode::Read, 0, final_size);\n"
        "    lw_measure::g.waited += lw_measure::us_since(lw_w0);\n"
        "    if (!lw_mapped) {\n",
        1,
    ),
    (
        "    ggml_backend_webgpu_wait_queue(backend_ctx->webgpu_ctx->global_ctx);\n}\n",
        "    auto lw_q0 = lw_measure::clock::now();\n"
        "    ggml_backend_webgpu_wait_queue(backend_ctx->webgpu_ctx->global_ctx);\n"
        "    lw_measure::g.waited += lw_measure::us_since(lw_q0);\n}\n",
        1,
    ),
]


def instrument(src: str, sections: bool = False) -> str:
    for name, text in ANCHORS.items():
        if src.count(text) != 1:
            sys.exit(f"ggml-webgpu.cpp changed: anchor {name!r} not found once")
    src = src.replace(ANCHORS["types"], STATS + ANCHORS["types"])
    start, stop = START, STOP
    if sections:
        for anchor, replacement, count in SECTIONS:
            if src.count(anchor) != count:
                sys.exit(f"ggml-webgpu.cpp changed: {anchor.strip()!r} not found {count} times")
            src = src.replace(anchor, replacement)
        start += "    lw_measure::g.begin_graph();\n"
        stop += "    lw_measure::g.end_graph();\n"
    src = src.replace(ANCHORS["entry"], ANCHORS["entry"] + start)
    return src.replace(ANCHORS["exit"], stop + ANCHORS["exit"])


if __name__ == "__main__":
    args = sys.argv[1:]
    sections = "--sections" in args
    src, out = [a for a in args if a != "--sections"]
    Path(out).write_text(instrument(Path(src).read_text(), sections))
