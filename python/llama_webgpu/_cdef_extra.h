/*
 * Hand-written additions to the cffi cdef of llama_webgpu._cffi.
 *
 * tools/gen_cffi.py appends this file, after the declarations it generates from
 * the vendored llama.cpp headers.  It is cffi cdef syntax, not plain C.
 *
 * - The block between the BEGIN/END lwgpu_procs markers is the C API of the
 *   generated Dawn proc table header (llama_webgpu_procs.h).  It is kept only
 *   when gen_cffi.py is given --procs-header, and it is then redeclared in the
 *   C source, after that header, so any difference is a compile error.
 * - Each extern "Python" callback carries a "// matches: TYPEDEF" note naming the
 *   llama.cpp/ggml function-pointer typedef it must be passable as.  gen_cffi.py
 *   checks that the typedef exists and makes the C compiler enforce it (a
 *   mismatch is a "conflicting types" error).
 */

// BEGIN lwgpu_procs
size_t lwgpu_procs_count(void);
const char *lwgpu_procs_name(size_t i);
int lwgpu_procs_set(const char *name, void *fn);
size_t lwgpu_procs_missing(void);
int lwgpu_procs_load_library(const char *path);
const char *lwgpu_procs_last_error(void);
// END lwgpu_procs

/* llama_log_set / ggml_log_set / ggml_backend_load...: log messages. */
extern "Python" void _lw_log_callback(enum ggml_log_level level, const char *text, void *user_data);  // matches: ggml_log_callback

/* llama_model_params.progress_callback: return false to cancel the load. */
extern "Python" bool _lw_progress_callback(float progress, void *user_data);  // matches: llama_progress_callback

/* llama_set_abort_callback / llama_context_params.abort_callback: return true to abort. */
extern "Python" bool _lw_abort_callback(void *data);  // matches: ggml_abort_callback

/* llama_context_params.cb_eval: inspect tensors while a graph is computed. */
extern "Python" bool _lw_eval_callback(struct ggml_tensor *t, bool ask, void *user_data);  // matches: ggml_backend_sched_eval_callback

/* Ours (the C body is in tools/gen_cffi.py, C_HELPERS): an abort callback reading an int flag. */
bool lw_abort_flag(void *flag);

/* Ours (C_HELPERS too): greedy sampling's logit bias, see the comment there. */
int32_t lw_biased_best(const float *logits, int32_t n, int32_t best, const int32_t *ids, const float *biases, int32_t nb);

/* Ours (C_HELPERS too): greedy's first maximum, greedy after a logit bias, and one step of a generation (decode, then
   choose: greedy with a logit bias, or the sampler chain); see there. */
int32_t lw_first_max(const float *x, int32_t n);
int32_t lw_greedy(const float *logits, int32_t n, const int32_t *ids, const float *biases, int32_t nb);
#define LW_STEP_DEVICE_FAULT -1000
#define LW_STEP_NO_LOGITS -1001
#define LW_STEP_NO_TOKEN -1002
int32_t lw_decode_greedy(struct llama_context *ctx, struct llama_batch *batch, llama_token token, llama_pos pos, int32_t n_vocab, const int32_t *ids, const float *biases, int32_t nb, struct llama_sampler *chain, const char *(*fault)(ggml_backend_reg_t), ggml_backend_reg_t reg, llama_token *out);
int32_t lw_decode_sample(struct llama_context *ctx, struct llama_batch *batch, llama_token token, llama_pos pos, struct llama_sampler *chain, const char *(*fault)(ggml_backend_reg_t), ggml_backend_reg_t reg, llama_token *out);
