// How fast one MUL_MAT of a given shape runs on a GPU backend, for the shapes test-backend-ops
// does not time (its perf cases fix m = 4096, k = 14336). Built by bench/gpu_prepare.sh beside
// the C tools; the backend comes from GGML_BACKEND_PATH as for llama-bench:
//
//   GGML_BACKEND_PATH=.../libggml-webgpu.so mm_shapes TYPE N M,K [M,K ...]
//
// e.g. `mm_shapes q4_0 512 4096,4096 1024,4096 14336,4096 4096,14336` (an 8B layer's matrices at
// pp512). Each shape runs as a graph of COPIES products of the same weights (random, quantized to
// TYPE) and activations, in batches for at least a second; prints microseconds per product and
// TFLOPS of the fastest batch and of the median one, and the weight bytes read per second.
// MM_DISTINCT_MB=S gives the products weights of their own, as many copies as make S MiB, used in
// turn (decode reads every matrix from memory once a token, while the same weights COPIES times
// stay in the GPU's L2 cache).
#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <utility>
#include <vector>

static constexpr int COPIES = 8;
static constexpr int    BATCH   = 5;
static constexpr double SECONDS = 1.0;

static ggml_type type_by_name(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; t++) {
        const char * tn = ggml_type_name((ggml_type) t);
        if (tn != nullptr && strcmp(tn, name) == 0) {
            return (ggml_type) t;
        }
    }
    fprintf(stderr, "unknown type %s\n", name);
    exit(2);
}

static std::pair<double, double> time_shape(ggml_backend_t backend, ggml_type type, int64_t m, int64_t n, int64_t k) {
    const char *     distinct_env = getenv("MM_DISTINCT_MB");
    const double     weight_mib   = (double) ggml_row_size(type, k) * m / (1 << 20);
    const int distinct = distinct_env != nullptr ? std::max(1, (int) std::ceil(atof(distinct_env) / weight_mib)) : 1;
    const int        copies       = std::max(COPIES, distinct);
    ggml_init_params ip = { ggml_tensor_overhead() * (2 * copies + 8) + ggml_graph_overhead(), nullptr, true };
    ggml_context *   ctx   = ggml_init(ip);
    ggml_context *   ctx_w = ggml_init(ip);  // the weights in a buffer of their own, as a model's are
    std::vector<ggml_tensor *> as;
    for (int i = 0; i < distinct; i++) {
        as.push_back(ggml_new_tensor_2d(ctx_w, type, k, m));
    }
    ggml_tensor * a  = as[0];
    ggml_tensor * b  = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, k, n);
    ggml_cgraph * gf = ggml_new_graph(ctx);
    for (int i = 0; i < copies; i++) {
        ggml_build_forward_expand(gf, ggml_mul_mat(ctx, as[i % distinct], b));
    }
    ggml_backend_buffer_t buf   = ggml_backend_alloc_ctx_tensors(ctx, backend);
    ggml_backend_buffer_t buf_w = ggml_backend_alloc_ctx_tensors(ctx_w, backend);
    if (buf == nullptr || buf_w == nullptr) {
        fprintf(stderr, "could not allocate %lld x %lld x %lld\n", (long long) m, (long long) n, (long long) k);
        exit(1);
    }

    std::mt19937                          rng(42);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float>                    values(k * std::max(m, n));
    for (float & v : values) {
        v = dist(rng);
    }
    std::vector<uint8_t> weights(ggml_nbytes(a));
    if (type == GGML_TYPE_F32) {
        memcpy(weights.data(), values.data(), weights.size());
    } else if (type == GGML_TYPE_F16) {
        ggml_fp32_to_fp16_row(values.data(), (ggml_fp16_t *) weights.data(), m * k);
    } else {
        ggml_quantize_chunk(type, values.data(), weights.data(), 0, m, k, nullptr);
    }
    for (ggml_tensor * w : as) {
        ggml_backend_tensor_set(w, weights.data(), 0, weights.size());
    }
    ggml_backend_tensor_set(b, values.data(), 0, ggml_nbytes(b));

    for (int i = 0; i < 3; i++) {  // pipelines, buffers, clocks
        ggml_backend_graph_compute(backend, gf);
    }
    // batches of BATCH graphs for at least SECONDS: the machine's other work shows as slow
    // batches, so the fastest and the median batch are both reported
    std::vector<double> batches;
    const auto          begin = std::chrono::steady_clock::now();
    while (batches.size() < 5 ||
           std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count() < SECONDS) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < BATCH; i++) {
            if (ggml_backend_graph_compute(backend, gf) != GGML_STATUS_SUCCESS) {
                fprintf(stderr, "graph_compute failed\n");
                exit(1);
            }
        }
        batches.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() /
                          BATCH / copies);
    }
    std::sort(batches.begin(), batches.end());
    const double best   = batches.front();
    const double median = batches[batches.size() / 2];
    ggml_backend_buffer_free(buf);
    ggml_backend_buffer_free(buf_w);
    ggml_free(ctx);
    ggml_free(ctx_w);
    return { best, median };
}

int main(int argc, char ** argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s TYPE N M,K [M,K ...]\n", argv[0]);
        return 2;
    }
    const ggml_type type = type_by_name(argv[1]);
    const int64_t   n    = atoll(argv[2]);
    ggml_backend_load_all();
    ggml_backend_t backend = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_GPU, nullptr);
    if (backend == nullptr) {
        fprintf(stderr, "no GPU backend (GGML_BACKEND_PATH?)\n");
        return 1;
    }
    printf("%s, %s, n = %lld\n", ggml_backend_name(backend), argv[1], (long long) n);
    for (int i = 3; i < argc; i++) {
        long long m = 0, k = 0;
        if (sscanf(argv[i], "%lld,%lld", &m, &k) != 2) {
            fprintf(stderr, "bad shape %s (M,K)\n", argv[i]);
            return 2;
        }
        const auto [best, median] = time_shape(backend, type, m, n, k);
        const double bytes = (double) ggml_row_size(type, k) * m;
        printf("  m %6lld  k %6lld  %9.1f us  %6.1f TFLOPS %7.0f GB/s  (median batch %9.1f us, %6.1f, %7.0f)\n", m,
               k, best, 2.0 * m * n * k / best / 1e6, bytes / best / 1e3, median, 2.0 * m * n * k / median / 1e6,
               bytes / median / 1e3);
        fflush(stdout);
    }
    ggml_backend_free(backend);
    return 0;
}
