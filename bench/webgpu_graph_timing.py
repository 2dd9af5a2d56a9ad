"""Adds host-time measurement to a copy of ggml-webgpu.cpp (for bench/webgpu_variants.sh --timing).

    python bench/webgpu_graph_timing.py SRC OUT

The copy times every graph_compute call (encoding and submitting a graph: host work, since the
GPU runs asynchronously) and prints, at exit, the median, mean, p10 and p90 in microseconds over
the calls after the first four (which compile pipelines), and the last graph's node count, as
one `LW_MEASURE ...` line on stderr.
"""

import sys
from pathlib import Path

STATS = r"""
#include <algorithm>
#include <chrono>
#include <cstdio>
namespace lw_measure {
struct stats {
    std::vector<double> us;
    size_t              nodes = 0;
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


def instrument(src: str) -> str:
    anchors = {
        "types": "/* Struct definitions */",
        "entry": "static ggml_status ggml_backend_webgpu_graph_compute(ggml_backend_t backend, "
        "struct ggml_cgraph * cgraph) {\n",
        "exit": "    WEBGPU_CPU_PROFILE_TOTAL_END(graph_compute, ctx->global_ctx);\n",
    }
    for name, text in anchors.items():
        if src.count(text) != 1:
            sys.exit(f"ggml-webgpu.cpp changed: anchor {name!r} not found once")
    src = src.replace(anchors["types"], STATS + anchors["types"])
    src = src.replace(anchors["entry"], anchors["entry"] + START)
    return src.replace(anchors["exit"], STOP + anchors["exit"])


if __name__ == "__main__":
    Path(sys.argv[2]).write_text(instrument(Path(sys.argv[1]).read_text()))
