/* mcandle.h - public C API of libmcandle (metal-candle).
 *
 * metal-candle loads Qwen2.5(-Coder) Hugging Face checkpoints, scores and generates text,
 * and fine-tunes LoRA adapters, in one native library with CPU and GPU backends.
 *
 * Conventions
 *  - Every fallible function returns an mc_status. MC_OK (0) is success. On failure,
 *    mc_last_error() returns a message (thread-local) naming the file, tensor, key or line.
 *  - Objects are opaque handles. The creator frees: every mc_X_load/mc_X_create has an
 *    mc_X_free, and mc_X_free(NULL) is a no-op.
 *  - Lifetimes: a model must outlive every object created from it (contexts, adapters).
 *    Strings returned by the library are owned by the object they come from and stay valid
 *    until that object is freed, unless a function says otherwise.
 *  - Parameter structs come from mc_X_default_params(); a zero field means "take it from
 *    the model" where the field's comment says so.
 *  - Nothing in the library writes to stdout or stderr or calls exit(); diagnostics go to
 *    the log callback (mc_set_log).
 */
#ifndef MCANDLE_H
#define MCANDLE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(MC_BUILD_SHARED)
#define MC_API __declspec(dllexport)
#elif defined(__GNUC__)
#define MC_API __attribute__((visibility("default")))
#else
#define MC_API
#endif

/** Library version as a string, e.g. "0.1.0". */
#define MC_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------------------ */
/* Status codes and errors                                                               */
/* ------------------------------------------------------------------------------------ */

/** Result of every fallible call. Each code has one meaning; the message says where. */
typedef enum mc_status {
    MC_OK = 0,                /**< success */
    MC_ERR_INVALID_ARG = 1,   /**< a parameter is out of range, NULL or contradictory */
    MC_ERR_OOM = 2,           /**< an allocation failed (host or device memory) */
    MC_ERR_IO = 3,            /**< a file could not be opened, read, written or mapped */
    MC_ERR_NOT_DIR = 4,       /**< a path that must be a folder is not one */
    MC_ERR_FILE_NOT_FOUND = 5, /**< a required file does not exist */
    MC_ERR_TRUNCATED = 6,     /**< a file ends before its declared content does */
    MC_ERR_HEADER_SIZE = 7,   /**< a safetensors header length lies beyond the file */
    MC_ERR_JSON = 8,          /**< malformed JSON (file and byte offset in the message) */
    MC_ERR_DTYPE = 9,         /**< an unknown or unsupported tensor dtype */
    MC_ERR_OFFSETS = 10,      /**< tensor data offsets out of range or inconsistent */
    MC_ERR_OVERLAP = 11,      /**< two tensors' data ranges overlap */
    MC_ERR_TENSOR_SIZE = 12,  /**< byte size differs from product(shape) x dtype size */
    MC_ERR_DUPLICATE = 13,    /**< a tensor (or token) name occurs twice */
    MC_ERR_MISSING_TENSOR = 14, /**< a tensor the config implies is absent */
    MC_ERR_SHAPE = 15,        /**< a tensor's shape disagrees with the config */
    MC_ERR_CONFIG_MISSING = 16, /**< a required config key is absent */
    MC_ERR_CONFIG_TYPE = 17,  /**< a config key has the wrong JSON type or an impossible value */
    MC_ERR_UNSUPPORTED = 18,  /**< a valid input this library does not implement */
    MC_ERR_TOKENIZER = 19,    /**< a tokenizer file is invalid or inconsistent */
    MC_ERR_UTF8 = 20,         /**< input text is not valid UTF-8 (byte offset in the message) */
    MC_ERR_BUFFER_TOO_SMALL = 21, /**< caller buffer too small; the needed size is reported */
    MC_ERR_TOKEN_ID = 22,     /**< a token id is outside the vocabulary */
    MC_ERR_CONTEXT_FULL = 23, /**< the sequence does not fit the context (KV cache) */
    MC_ERR_BACKEND = 24,      /**< a backend (device) failure: no device, kernel error */
    MC_ERR_DATA = 25,         /**< a dataset line is invalid (file:line in the message) */
    MC_ERR_NUMERIC = 26,      /**< a NaN or infinity appeared where a finite value is needed */
    MC_ERR_CANCELLED = 27,    /**< the caller asked to stop (callback or signal) */
    MC_ERR_INTERNAL = 28      /**< a broken internal invariant; please report it */
} mc_status;

/** Short constant name of a status code ("MC_ERR_JSON"); never NULL. */
MC_API const char *mc_status_name(mc_status s);

/** Message describing the latest failure on this thread ("" if none). Valid until the
 *  next failing call on the same thread. */
MC_API const char *mc_last_error(void);

/** Log levels for the log callback. */
typedef enum mc_log_level { MC_LOG_DEBUG = 0, MC_LOG_INFO = 1, MC_LOG_WARN = 2, MC_LOG_ERROR = 3 } mc_log_level;

/** Log callback: receives one message (no trailing newline) and the user pointer. */
typedef void (*mc_log_fn)(mc_log_level level, const char *msg, void *user);

/** Installs a process-wide log callback (NULL silences the library, the default). */
MC_API void mc_set_log(mc_log_fn fn, void *user);

/* ------------------------------------------------------------------------------------ */
/* Data types                                                                            */
/* ------------------------------------------------------------------------------------ */

/** Element types of tensors in checkpoint files. */
typedef enum mc_dtype { MC_F32 = 0, MC_F16 = 1, MC_BF16 = 2 } mc_dtype;

/** Name of a dtype as safetensors spells it ("F32", "F16", "BF16"); never NULL. */
MC_API const char *mc_dtype_name(mc_dtype t);

/** Size in bytes of one element of dtype t. */
MC_API size_t mc_dtype_size(mc_dtype t);

/* ------------------------------------------------------------------------------------ */
/* Models                                                                                */
/* ------------------------------------------------------------------------------------ */

/** An immutable loaded checkpoint: config, weights (mmapped on CPU), backend. */
typedef struct mc_model mc_model;

/** Options for mc_model_load. */
typedef struct mc_model_params {
    const char *device; /**< "cpu" (default when NULL) or "cuda" where built in */
    int n_threads;      /**< CPU threads; 0 = all available cores */
    int reference;      /**< 1 = use the plain reference kernels (slow; for testing) */
} mc_model_params;

/** Default model parameters: CPU, all cores, fast kernels. */
MC_API mc_model_params mc_model_default_params(void);

/** Loads a Hugging Face checkpoint folder (config.json, model.safetensors or a sharded
 *  model.safetensors.index.json, optional generation_config.json). Every tensor the config
 *  implies is checked for presence and shape. On success *out owns the model. */
MC_API mc_status mc_model_load(const char *dir, const mc_model_params *params, mc_model **out);

/** Frees a model and unmaps its files. NULL is a no-op. */
MC_API void mc_model_free(mc_model *model);

/** What a loaded model is (all sizes from config.json). */
typedef struct mc_model_info {
    const char *architecture; /**< e.g. "Qwen2ForCausalLM"; owned by the model */
    const char *model_type;   /**< e.g. "qwen2"; owned by the model */
    int n_layers;             /**< decoder layers */
    int hidden_size;          /**< model width */
    int intermediate_size;    /**< MLP width */
    int n_heads;              /**< query heads */
    int n_kv_heads;           /**< key/value heads (GQA when < n_heads) */
    int head_dim;             /**< per-head width */
    int vocab_size;           /**< rows of the embedding */
    int max_position_embeddings; /**< context length the model was trained for */
    int tie_word_embeddings;  /**< 1 when lm_head shares the embedding */
    int has_qkv_bias;         /**< 1 for Qwen2 (q/k/v projections carry biases) */
    float rope_theta;         /**< RoPE base */
    float rms_norm_eps;       /**< RMSNorm epsilon */
    int bos_token_id;         /**< -1 when absent */
    int n_eos_token_ids;      /**< number of valid entries in eos_token_ids */
    int eos_token_ids[8];     /**< end-of-sequence ids (config, then generation_config) */
    mc_dtype dtype;           /**< dtype of the weights as stored */
    uint64_t n_params;        /**< parameter count (tied embedding counted once) */
    uint64_t weight_bytes;    /**< bytes of weights as stored */
} mc_model_info;

/** Fills *info with the model's description. */
MC_API mc_status mc_model_get_info(const mc_model *model, mc_model_info *info);

/** Bytes of memory a context of n_ctx positions needs beside the weights (KV cache and
 *  activations for a prompt of up to n_batch tokens). */
MC_API uint64_t mc_model_context_bytes(const mc_model *model, int n_ctx, int n_batch);

/** Scores a token sequence: runs the full causal forward pass over ids[0..n).
 *  logits (may be NULL) receives n x vocab_size floats, row t = logits after ids[0..t].
 *  loss (may be NULL) receives the mean next-token cross-entropy over the n-1 targets
 *  (NaN-free; 0 when n == 1). Errors: MC_ERR_TOKEN_ID for an id outside the vocabulary,
 *  MC_ERR_INVALID_ARG for n == 0. */
MC_API mc_status mc_model_eval(mc_model *model, const int32_t *ids, size_t n, float *logits,
                               double *loss);

/* ------------------------------------------------------------------------------------ */
/* Tokenizer                                                                             */
/* ------------------------------------------------------------------------------------ */
/* (tokenizer declarations go here) */

/* ------------------------------------------------------------------------------------ */
/* Sampling                                                                              */
/* ------------------------------------------------------------------------------------ */
/* (sampler declarations go here) */

/* ------------------------------------------------------------------------------------ */
/* Contexts and generation                                                               */
/* ------------------------------------------------------------------------------------ */
/* (context and generation declarations go here) */

#ifdef __cplusplus
}
#endif
#endif /* MCANDLE_H */
