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

/** A loaded tokenizer (see the Tokenizer section). */
typedef struct mc_tokenizer mc_tokenizer;

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

/** Writes a random-weight Hugging Face checkpoint (config.json, generation_config.json,
 *  model.safetensors) into out_dir (created if needed), for demos and benchmarks.
 *  preset: "tiny" or the exact configs of "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b",
 *  "qwen2.5-coder-3b", "qwen2.5-coder-7b"; or NULL with config_path naming a config.json
 *  to copy the architecture from. dtype: MC_BF16, MC_F16 or MC_F32. Matrices are uniform
 *  with standard deviation 0.02 from seed; norm weights 1; biases 0.
 *  MC_ERR_INVALID_ARG for an unknown preset (the message lists the known ones). */
MC_API mc_status mc_checkpoint_init(const char *preset, const char *config_path, mc_dtype dtype,
                                    uint64_t seed, const char *out_dir);

/** mc_checkpoint_init with matrices of standard deviation init_std (in (0, 10]) instead
 *  of 0.02. A larger value gives a random model whose logits span a wider range, which
 *  makes fine-tuning demos on random models show more. */
MC_API mc_status mc_checkpoint_init_std(const char *preset, const char *config_path,
                                        mc_dtype dtype, uint64_t seed, float init_std,
                                        const char *out_dir);

/** Writes a little-endian float32 C-order .npy file (format 1.0) of ndim dims
 *  (1..8) with the given shape, atomically (temporary name, fsync, rename). */
MC_API mc_status mc_npy_write_f32(const char *path, const float *data, const size_t *shape,
                                  int ndim);

/* ------------------------------------------------------------------------------------ */
/* LoRA adapters                                                                         */
/* ------------------------------------------------------------------------------------ */

/** A LoRA adapter for one model: rank, alpha, target projections, and the A/B weights
 *  (f32). It borrows the model, which must outlive it. */
typedef struct mc_adapter mc_adapter;

/** Target projection bits for mc_lora_params.targets. */
enum {
    MC_LORA_Q = 1 << 0,    /**< self_attn.q_proj */
    MC_LORA_K = 1 << 1,    /**< self_attn.k_proj */
    MC_LORA_V = 1 << 2,    /**< self_attn.v_proj */
    MC_LORA_O = 1 << 3,    /**< self_attn.o_proj */
    MC_LORA_GATE = 1 << 4, /**< mlp.gate_proj */
    MC_LORA_UP = 1 << 5,   /**< mlp.up_proj */
    MC_LORA_DOWN = 1 << 6, /**< mlp.down_proj */
    MC_LORA_ALL = 0x7f     /**< all seven projections */
};

/** Shape of a new adapter. */
typedef struct mc_lora_params {
    int rank;          /**< r >= 1. Default 8 */
    float alpha;       /**< > 0; scale = alpha / r (alpha / sqrt(r) with rslora). Default 16 */
    float dropout;     /**< in [0, 1), applied to the LoRA input while training. Default 0 */
    int rslora;        /**< 1: rank-stabilised scale alpha / sqrt(r). Default 0 */
    unsigned targets;  /**< MC_LORA_* bits. Default MC_LORA_ALL */
    int num_layers;    /**< adapt the last num_layers layers; 0 or -1 = all. Default 0 */
    uint64_t seed;     /**< initialisation seed (A kaiming-uniform as PEFT, B zero). Default 0 */
} mc_lora_params;

/** Default LoRA parameters (see the field comments). */
MC_API mc_lora_params mc_lora_default_params(void);

/** Creates a freshly initialised adapter for model (A kaiming-uniform, B zero: it does not
 *  change the model's outputs until trained). MC_ERR_INVALID_ARG names a bad parameter. */
MC_API mc_status mc_adapter_create(const mc_model *model, const mc_lora_params *params,
                                   mc_adapter **out);

/** Loads an adapter folder: PEFT (adapter_config.json + adapter_model.safetensors) or
 *  mlx-lm (adapter_config.json + adapters.safetensors). Every tensor is checked against the
 *  model (MC_ERR_SHAPE, MC_ERR_MISSING_TENSOR, MC_ERR_CONFIG_TYPE naming it); PEFT options
 *  this library does not implement (DoRA, rank_pattern, alpha_pattern, modules_to_save,
 *  biases, fan_in_fan_out, ...) give MC_ERR_UNSUPPORTED naming the option. */
MC_API mc_status mc_adapter_load(const mc_model *model, const char *dir, mc_adapter **out);

/** Writes the adapter in PEFT format (adapter_config.json + adapter_model.safetensors)
 *  into dir (created if needed), each file atomically. */
MC_API mc_status mc_adapter_save(const mc_adapter *adapter, const char *dir);

/** Frees an adapter. NULL is a no-op. */
MC_API void mc_adapter_free(mc_adapter *adapter);

/** Number of trainable parameters (all A and B elements). */
MC_API size_t mc_adapter_n_params(const mc_adapter *adapter);

/** Like mc_model_eval, with the adapter applied unmerged (scale multiplies its LoRA
 *  scale; 1 = as trained). adapter NULL = the base model. */
MC_API mc_status mc_model_eval_adapter(mc_model *model, const mc_adapter *adapter, float scale,
                                       const int32_t *ids, size_t n, float *logits, double *loss);

/** Writes a merged Hugging Face checkpoint into out_dir: W' = W + scale * B A for every
 *  adapted projection, stored in the base model's dtype; other tensors copied; config.json,
 *  generation_config.json and tokenizer files copied from model_dir (the base folder). */
MC_API mc_status mc_adapter_fuse(const mc_model *model, const mc_adapter *adapter,
                                 const char *model_dir, const char *out_dir);

/* ------------------------------------------------------------------------------------ */
/* Training                                                                              */
/* ------------------------------------------------------------------------------------ */

/** Progress of a training run, passed to the progress callback after every optimizer
 *  step (is_eval 0) and every validation (is_eval 1). */
typedef struct mc_train_progress {
    int step;               /**< optimizer steps done */
    int total_steps;        /**< steps the run will do */
    int is_eval;            /**< 1: val_loss is fresh */
    double loss;            /**< mean loss of this step's targets (before its update) */
    double val_loss;        /**< mean validation loss (when is_eval) */
    double lr;              /**< learning rate used by this step */
    double grad_norm;       /**< global gradient norm before clipping */
    double tokens_per_s;    /**< trained tokens per second over the last step */
    double eta_s;           /**< estimated seconds left */
    uint64_t peak_rss;      /**< peak resident memory of the process, bytes */
    long long tokens;       /**< tokens trained so far */
} mc_train_progress;

/** Progress callback; return non-zero to stop the run after a checkpoint. */
typedef int (*mc_train_callback)(const mc_train_progress *p, void *user);

/** Options of a LoRA training run; start from mc_train_default_params(). Flag names of
 *  `mcandle train` are given in brackets. */
typedef struct mc_train_params {
    const char *train_path;     /**< train.jsonl, or a folder holding train.jsonl and
                                     optionally valid.jsonl / test.jsonl [--data] */
    const char *valid_path;     /**< validation jsonl; NULL = <folder>/valid.jsonl if any */
    const char *test_path;      /**< test jsonl; NULL = <folder>/test.jsonl if any */
    const mc_tokenizer *tokenizer; /**< needed for text/chat/prompt lines; NULL = ids only */
    const char *adapter_path;   /**< output folder for the adapter and checkpoints
                                     [--adapter-path] (required) */
    const char *resume_dir;     /**< continue the run saved in this folder [--resume] */
    const char *log_jsonl;      /**< one JSON object per step and per evaluation
                                     [--log-jsonl] */
    int batch_size;             /**< examples per micro-batch [--batch-size] 4 */
    int iters;                  /**< optimizer steps [--iters] 1000 (0: use epochs) */
    int epochs;                 /**< passes over the data when iters == 0 [--epochs] */
    int grad_accumulation;      /**< micro-batches per optimizer step [--grad-accumulation-steps] 1 */
    int max_seq_length;         /**< longer examples are truncated [--max-seq-length] 2048 */
    int mask_prompt;            /**< loss on completions/assistant turns only [--mask-prompt] */
    int pack;                   /**< fill micro-batches with whole short examples up to
                                     batch_size * max_seq_length tokens [--pack] */
    int shuffle;                /**< shuffle examples every epoch [--no-shuffle] 1 */
    int grad_checkpoint;        /**< recompute layer activations in backward [--grad-checkpoint] */
    int skip_invalid;           /**< skip invalid jsonl lines (counted) [--skip-invalid] */
    const char *optimizer;      /**< "adamw" or "sgd" [--optimizer] "adamw" */
    double learning_rate;       /**< peak learning rate [--learning-rate] 1e-5 */
    double weight_decay;        /**< decoupled weight decay [--weight-decay] 0 */
    double beta1, beta2, eps;   /**< AdamW [--adam-beta1/2, --adam-eps] 0.9, 0.999, 1e-8 */
    double momentum;            /**< SGD momentum [--momentum] 0 */
    double max_grad_norm;       /**< clip by global norm; 0 = off [--grad-clip] 0 */
    const char *lr_schedule;    /**< "constant", "linear" or "cosine" [--lr-schedule] */
    int warmup_steps;           /**< linear warmup from 0 [--warmup] 0 */
    double min_lr;              /**< end of linear/cosine decay [--min-lr] 0 */
    int steps_per_report;       /**< progress callback cadence [--steps-per-report] 1 */
    int steps_per_eval;         /**< validation cadence; 0 = only at the end
                                     [--steps-per-eval] 200 */
    int val_batches;            /**< validation micro-batches; -1 = all [--val-batches] 25 */
    int early_stop_patience;    /**< stop after this many evaluations without a better
                                     validation loss; 0 = off [--early-stop] */
    int save_every;             /**< checkpoint every N steps; 0 = only at the end
                                     [--save-every] 100 */
    uint64_t seed;              /**< data order, dropout, initialisation [--seed] 0 */
    mc_train_callback on_progress; /**< optional */
    void *user;                 /**< passed to on_progress */
} mc_train_params;

/** Default training parameters (the values in brackets above). */
MC_API mc_train_params mc_train_default_params(void);

/** Outcome of a run. */
typedef struct mc_train_result {
    int steps;                  /**< optimizer steps done in total (including resumed ones) */
    double final_loss;          /**< loss of the last step */
    double val_loss;            /**< last validation loss (NaN when no validation set) */
    double test_loss;           /**< test loss (NaN when no test set) */
    double seconds;             /**< wall time of this call */
    long long tokens;           /**< tokens trained in this call */
    int stopped_early;          /**< 1: early stopping or the callback ended the run */
    size_t n_truncated;         /**< training examples truncated to max_seq_length */
    size_t n_skipped;           /**< invalid lines skipped */
} mc_train_result;

/** Trains adapter (LoRA weights of model) on the data in params. Checkpoints (adapter in
 *  PEFT format + optimizer state, step, data position) go to params->adapter_path every
 *  save_every steps and at the end, each written under a temporary name, fsynced and
 *  renamed; a run given resume_dir continues exactly (bit for bit on CPU) where the saved
 *  one stopped, with adapter's weights replaced by the checkpoint's. A NaN or infinite loss
 *  stops the run with MC_ERR_NUMERIC, keeping the last good checkpoint. */
MC_API mc_status mc_train(mc_model *model, mc_adapter *adapter, const mc_train_params *params,
                          mc_train_result *result);

/* ------------------------------------------------------------------------------------ */
/* Tokenizer                                                                             */
/* ------------------------------------------------------------------------------------ */
/* A tokenizer turns UTF-8 text into token ids exactly as Hugging Face `tokenizers` does for
 * the tokenizer.json it was loaded from, and back. Supported: the BPE model (merges as
 * "a b" strings or [a, b] pairs, ignore_merges, unk_token/fuse_unk; no dropout, no
 * byte_fallback, no continuing_subword_prefix/end_of_word_suffix), normalizers NFC, NFD,
 * NFKC, NFKD and Sequence, pre-tokenizers Split (regex or string, every behaviour,
 * invert), ByteLevel (add_prefix_space, use_regex) and Sequence, post-processors
 * ByteLevel, TemplateProcessing (single sequence), BertProcessing, RobertaProcessing and
 * Sequence, decoder ByteLevel or none, and added tokens with lstrip, rstrip, single_word,
 * normalized and special. Anything else is refused with MC_ERR_UNSUPPORTED naming the
 * component (Unigram, WordPiece, Lowercase, Metaspace, ...), never silently wrong ids.
 *
 * Pipeline of mc_tokenizer_encode, as in Hugging Face: added tokens are found in the raw
 * text first (leftmost-longest), the rest is normalized, added tokens flagged
 * "normalized" are found in the normalized text, the pre-tokenizer splits the remaining
 * pieces, BPE encodes each piece, and the post-processor adds special tokens.
 *
 * Input text must be valid UTF-8: anything else fails with MC_ERR_UTF8 and a message
 * "invalid UTF-8 at byte offset N" (N counted from the start of the text, the first byte
 * of the offending sequence). Overlong forms, surrogates (U+D800..U+DFFF) and code points
 * above U+10FFFF are invalid; NUL bytes are valid text.
 *
 * A loaded tokenizer is immutable apart from an internal cache and may be used from
 * several threads at once. Strings it returns stay valid until mc_tokenizer_free. */

/** A loaded tokenizer (tokenizer.json, plus tokenizer_config.json when present). */
typedef struct mc_tokenizer mc_tokenizer;

/** Loads a tokenizer. path is either a tokenizer.json file or a model folder holding
 *  tokenizer.json (and then tokenizer_config.json too, when present: it supplies the
 *  eos/bos/pad tokens and the chat template). Errors: MC_ERR_FILE_NOT_FOUND,
 *  MC_ERR_JSON (malformed JSON, with the byte offset), MC_ERR_TOKENIZER (an inconsistent
 *  file: missing or mistyped fields, duplicate ids, merges naming unknown tokens, ...),
 *  MC_ERR_UNSUPPORTED (a component this library does not implement, named in the message).
 *  On success *out owns the tokenizer. */
MC_API mc_status mc_tokenizer_load(const char *path, mc_tokenizer **out);

/** Loads tokenizer_json (a file) and, when config_json is not NULL, that
 *  tokenizer_config.json file; otherwise as mc_tokenizer_load. */
MC_API mc_status mc_tokenizer_load_files(const char *tokenizer_json, const char *config_json,
                                         mc_tokenizer **out);

/** Parses a tokenizer from memory: json[0..len) is the tokenizer.json text, config[0..
 *  config_len) the tokenizer_config.json text (config may be NULL). name is used in
 *  messages only. Errors as mc_tokenizer_load. */
MC_API mc_status mc_tokenizer_parse(const char *json, size_t len, const char *config,
                                    size_t config_len, const char *name, mc_tokenizer **out);

/** Frees a tokenizer. NULL is a no-op. */
MC_API void mc_tokenizer_free(mc_tokenizer *tok);

/** Encodes text[0..len) into token ids. add_special != 0 lets the post-processor add its
 *  special tokens (a BOS for Llama-3-style files; nothing for Qwen), as Hugging Face's
 *  add_special_tokens=True. Added tokens written in the text (e.g. "<|im_start|>") are
 *  always recognised, as in Hugging Face. ids[0..cap) receives the ids and *n_out how many
 *  there are; when they do not fit, MC_ERR_BUFFER_TOO_SMALL is returned with *n_out = the
 *  count needed (ids holds the first cap of them). ids may be NULL when cap == 0.
 *  Errors: MC_ERR_UTF8 (offset in the message), MC_ERR_OOM. */
MC_API mc_status mc_tokenizer_encode(const mc_tokenizer *tok, const char *text, size_t len,
                                     int add_special, int32_t *ids, size_t cap, size_t *n_out);

/** Decodes ids[0..n) into UTF-8 text, as Hugging Face's decode: byte-level tokens are
 *  mapped back to bytes and any invalid UTF-8 that results (a token sequence cut inside a
 *  character) is replaced by U+FFFD, one per maximal invalid subsequence. skip_special != 0
 *  drops special added tokens. buf[0..cap) receives the text and a terminating NUL;
 *  *len_out the text length (without the NUL). When buf is too small (cap < length + 1),
 *  MC_ERR_BUFFER_TOO_SMALL is returned with *len_out = the length. buf may be NULL when
 *  cap == 0. Errors: MC_ERR_TOKEN_ID for an id outside the vocabulary (the message gives
 *  its position). */
MC_API mc_status mc_tokenizer_decode(const mc_tokenizer *tok, const int32_t *ids, size_t n,
                                     int skip_special, char *buf, size_t cap, size_t *len_out);

/** Writes the bytes one token stands for (a byte-level token's raw bytes, which may be part
 *  of a UTF-8 character; an added token's text) into buf[0..cap) and its length into
 *  *len_out; a NUL follows when it fits. For streaming decoders that join pieces
 *  themselves. MC_ERR_TOKEN_ID for an unknown id, MC_ERR_BUFFER_TOO_SMALL when cap < length
 *  (*len_out = length). */
MC_API mc_status mc_tokenizer_token_bytes(const mc_tokenizer *tok, int32_t id, char *buf,
                                          size_t cap, size_t *len_out);

/** Number of token ids: 1 + the largest id of the vocabulary and the added tokens
 *  (151,669 for the Qwen tokenizer; a model's embedding may have more rows). */
MC_API int32_t mc_tokenizer_vocab_size(const mc_tokenizer *tok);

/** Id of a token given as it is spelled in tokenizer.json (byte-level form, e.g. "Ġthe",
 *  or an added token such as "<|im_end|>"); -1 when there is none. */
MC_API int32_t mc_tokenizer_token_to_id(const mc_tokenizer *tok, const char *token);

/** Spelling of token id as in tokenizer.json (NUL-terminated, owned by the tokenizer);
 *  NULL for an id outside the vocabulary. */
MC_API const char *mc_tokenizer_id_to_token(const mc_tokenizer *tok, int32_t id);

/** 1 when id is a special added token (skipped by decode with skip_special), else 0. */
MC_API int mc_tokenizer_is_special(const mc_tokenizer *tok, int32_t id);

/** Well-known tokens, for mc_tokenizer_special_id. */
typedef enum mc_special_token {
    MC_TOKEN_BOS = 0,        /**< tokenizer_config.json bos_token, else the post-processor's
                                  single leading token; Qwen has none */
    MC_TOKEN_EOS = 1,        /**< tokenizer_config.json eos_token, else <|endoftext|> */
    MC_TOKEN_PAD = 2,        /**< tokenizer_config.json pad_token */
    MC_TOKEN_ENDOFTEXT = 3,  /**< <|endoftext|> */
    MC_TOKEN_IM_START = 4,   /**< <|im_start|> (ChatML) */
    MC_TOKEN_IM_END = 5,     /**< <|im_end|> (ChatML) */
    MC_TOKEN_FIM_PREFIX = 6, /**< <|fim_prefix|> */
    MC_TOKEN_FIM_MIDDLE = 7, /**< <|fim_middle|> */
    MC_TOKEN_FIM_SUFFIX = 8, /**< <|fim_suffix|> */
    MC_TOKEN_FIM_PAD = 9,    /**< <|fim_pad|> */
    MC_TOKEN_REPO_NAME = 10, /**< <|repo_name|> */
    MC_TOKEN_FILE_SEP = 11   /**< <|file_sep|> */
} mc_special_token;

/** Id of a well-known token, or -1 when the tokenizer has none. */
MC_API int32_t mc_tokenizer_special_id(const mc_tokenizer *tok, mc_special_token which);

/** One chat message; both strings NUL-terminated UTF-8. */
typedef struct mc_chat_message {
    const char *role;    /**< "system", "user", "assistant" or "tool" */
    const char *content; /**< message text */
} mc_chat_message;

/** Options for mc_chat_render. */
typedef struct mc_chat_params {
    const char *template_name; /**< NULL: the tokenizer's own chat template (from
                                    tokenizer_config.json); or a name: "chatml" (plain
                                    ChatML), "qwen2.5" (ChatML with Qwen2.5's default system
                                    prompt and tool messages; also "qwen2.5-coder"), "qwen3"
                                    (Qwen3's thinking format) */
    int add_generation_prompt; /**< 1: end with "<|im_start|>assistant\n". Default 1 */
    int enable_thinking;       /**< qwen3 only: 0 adds an empty think block after the
                                    generation prompt. Default 1 */
} mc_chat_params;

/** Default chat parameters: the tokenizer's template, with a generation prompt. */
MC_API mc_chat_params mc_chat_default_params(void);

/** Name of the chat template style found in tokenizer_config.json ("qwen2.5", "qwen3",
 *  "chatml"), or NULL when there is none or it is not of the ChatML family. A
 *  "qwen2.5"-style template's default system prompt is read from the template itself. */
MC_API const char *mc_tokenizer_chat_template(const mc_tokenizer *tok);

/** Renders messages[0..n) as the prompt text the chat template produces (what
 *  transformers' apply_chat_template(tokenize=False) returns), into buf[0..cap) with a
 *  NUL; *len_out = its length. Qwen2.5 style: "<|im_start|>{role}\n{content}<|im_end|>\n"
 *  per message, a default system message ("You are Qwen, created by Alibaba Cloud. You are
 *  a helpful assistant.") when the first message is not a system one, and consecutive
 *  "tool" messages grouped in one user turn; roles other than system, user, assistant and
 *  tool are left out, as the template does. tok may be NULL when params->template_name is
 *  set. Errors: MC_ERR_UNSUPPORTED when the tokenizer's template is not ChatML-family and
 *  no name was given, MC_ERR_INVALID_ARG for an unknown name or a NULL role/content,
 *  MC_ERR_BUFFER_TOO_SMALL as mc_tokenizer_decode. Encode the text with
 *  mc_tokenizer_encode(add_special = 0) to get the prompt ids. */
MC_API mc_status mc_chat_render(const mc_tokenizer *tok, const mc_chat_message *messages,
                                size_t n, const mc_chat_params *params, char *buf, size_t cap,
                                size_t *len_out);

/** Builds a Qwen2.5-Coder fill-in-the-middle prompt,
 *  "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>", into buf[0..cap) with a
 *  NUL; the model then generates the middle. tok may be NULL; otherwise
 *  MC_ERR_UNSUPPORTED when it lacks the FIM tokens. MC_ERR_BUFFER_TOO_SMALL as
 *  mc_tokenizer_decode. */
MC_API mc_status mc_fim_render(const mc_tokenizer *tok, const char *prefix, const char *suffix,
                               char *buf, size_t cap, size_t *len_out);

/** One file of a repository-level prompt. */
typedef struct mc_repo_file {
    const char *path;    /**< file path as shown to the model */
    const char *content; /**< file text */
} mc_repo_file;

/** Builds a Qwen2.5-Coder repository-level prompt:
 *  "<|repo_name|>{repo}\n", then "<|file_sep|>{path}\n{content}\n" for each context file,
 *  then "<|file_sep|>{path}\n" for the file being written, followed by prefix (plain
 *  continuation) or, when suffix is not NULL, by
 *  "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>". Output and errors as
 *  mc_fim_render (MC_ERR_UNSUPPORTED also when <|repo_name|>/<|file_sep|> are missing). */
MC_API mc_status mc_fim_render_repo(const mc_tokenizer *tok, const char *repo,
                                    const mc_repo_file *files, size_t n_files, const char *path,
                                    const char *prefix, const char *suffix, char *buf,
                                    size_t cap, size_t *len_out);

/* ------------------------------------------------------------------------------------ */
/* Sampling                                                                              */
/* ------------------------------------------------------------------------------------ */
/* A sampler turns one row of next-token logits into a token id. It applies one fixed
 * chain, in this order (each stage is skipped when its parameter has the "off" value):
 *   1. logit bias           l[id] += bias                     (mc_logit_bias entries)
 *   2. repetition penalty   for each distinct id among the last repetition_last_n
 *                           accepted tokens (prompt and generated):
 *                           l = l > 0 ? l / penalty : l * penalty   (Hugging Face)
 *   3. presence/frequency   l[id] -= presence * (c > 0) + frequency * c, where c counts
 *                           the generated tokens only (prompt tokens do not count;
 *                           OpenAI semantics, as vLLM implements them)
 *   4. greedy               if temperature == 0: argmax (ties -> lowest id); stop here
 *   5. temperature          x = (l - max(l)) / temperature; p ~ exp(x)
 *   6. top-k                keep the k most probable tokens (ties -> lowest ids)
 *   7. top-p                keep the smallest most-probable set whose probability,
 *                           renormalized after top-k, is >= top_p
 *   8. min-p                keep tokens with p >= min_p * p_max
 *   9. draw                 one uniform draw from the seeded RNG over what is left
 * This is the order of Hugging Face transformers' generate (bias, penalties, then the
 * temperature, top-k, top-p and min-p warpers). Tokens whose logit is -inf have
 * probability 0 and are never chosen. Each stage keeps exactly the set that a full sort
 * of the vocabulary would give (up to the rounding of probability sums at the top-p
 * boundary), without sorting the vocabulary: a step costs a few passes over the logits.
 * Same seed + same parameters + same logits -> the same tokens on every machine. */

/** A sampler: parameters, token history for the penalties, scratch space and an RNG.
 *  One sampler serves one sequence; it is not thread-safe. */
typedef struct mc_sampler mc_sampler;

/** One logit-bias entry: bias is added to the logit of token (stage 1). A bias of
 *  -INFINITY bans the token; NaN and +INFINITY are rejected. */
typedef struct mc_logit_bias {
    int32_t token; /**< token id in [0, vocab_size) */
    float bias;    /**< added to the logit; entries for the same id add up */
} mc_logit_bias;

/** Sampler parameters. Take them from mc_sampler_default_params() and change fields. */
typedef struct mc_sampler_params {
    float temperature;        /**< >= 0; 0 = greedy (argmax). Default 0.8 */
    int32_t top_k;            /**< >= 0; 0 = off. Default 40 */
    float top_p;              /**< in (0, 1]; 1 = off. Default 0.95 */
    float min_p;              /**< in [0, 1]; 0 = off. Default 0.05 */
    float repetition_penalty; /**< > 0; 1 = off; > 1 discourages repeats. Default 1 */
    int32_t repetition_last_n; /**< >= 0: how many most recent accepted tokens (prompt and
                                    generated) the repetition penalty looks at; 0 = all of
                                    them (Hugging Face semantics). Default 0 */
    float presence_penalty;   /**< finite; 0 = off (OpenAI uses [-2, 2]). Default 0 */
    float frequency_penalty;  /**< finite; 0 = off (OpenAI uses [-2, 2]). Default 0 */
    const mc_logit_bias *logit_bias; /**< n_logit_bias entries, or NULL; copied by
                                          mc_sampler_create (borrowed only during the call) */
    size_t n_logit_bias;      /**< entries in logit_bias. Default 0 */
    uint64_t seed;            /**< RNG seed. Default 0 (fixed, so runs repeat; pass e.g.
                                   a time-derived value for varied output) */
} mc_sampler_params;

/** Default sampler parameters, the same as llama.cpp's: temperature 0.8, top_k 40,
 *  top_p 0.95, min_p 0.05, no repetition/presence/frequency penalty, no logit bias, seed 0.
 *  The repetition window defaults to the whole history (Hugging Face semantics). */
MC_API mc_sampler_params mc_sampler_default_params(void);

/** Creates a sampler for logits rows of vocab_size floats. params NULL = the defaults.
 *  Every parameter is checked: MC_ERR_INVALID_ARG (with a message naming the parameter and
 *  its value) for temperature < 0, top_k < 0, top_p outside (0, 1], min_p outside [0, 1],
 *  repetition_penalty <= 0, repetition_last_n < 0, a NaN or infinite value (a logit bias may
 *  be -INFINITY), a logit-bias id outside [0, vocab_size), or vocab_size <= 0.
 *  MC_ERR_OOM when memory runs out. On success *out owns the sampler. */
MC_API mc_status mc_sampler_create(const mc_sampler_params *params, int32_t vocab_size,
                                   mc_sampler **out);

/** Frees a sampler. NULL is a no-op. */
MC_API void mc_sampler_free(mc_sampler *s);

/** Forgets the token history and re-seeds the RNG with params.seed, so the sampler behaves
 *  as if just created. */
MC_API void mc_sampler_reset(mc_sampler *s);

/** Records prompt tokens ids[0..n) in the history: they count for the repetition penalty
 *  but not for the presence and frequency penalties. Call once per prompt before sampling.
 *  MC_ERR_TOKEN_ID (nothing recorded) when an id is outside [0, vocab_size). */
MC_API mc_status mc_sampler_accept_prompt(mc_sampler *s, const int32_t *ids, size_t n);

/** Records one generated token that the sampler did not choose itself (a forced token,
 *  or the tokens of a resumed run): it counts for all penalties. mc_sampler_sample already
 *  records the tokens it returns, so do not call this for those.
 *  MC_ERR_TOKEN_ID when token is outside [0, vocab_size). */
MC_API mc_status mc_sampler_accept(mc_sampler *s, int32_t token);

/** Chooses the next token from logits[0..vocab_size) (not modified) with the chain above,
 *  writes it to *token_out and records it as generated (like mc_sampler_accept).
 *  logprob_out (may be NULL) receives the log-probability of the chosen token under the
 *  model's raw distribution, log_softmax(logits)[token], before bias, penalties,
 *  temperature and truncation (what mlx-lm and OpenAI report). Greedy sampling uses no
 *  random numbers; any other sample uses exactly one 64-bit draw.
 *  Errors: MC_ERR_INVALID_ARG for NULL pointers; MC_ERR_NUMERIC when a logit is NaN or
 *  +inf (after bias and penalties) or when every logit is -inf (all tokens banned). */
MC_API mc_status mc_sampler_sample(mc_sampler *s, const float *logits, int32_t *token_out,
                                   float *logprob_out);

/** Copies the RNG state (4 words of xoshiro256**) for a checkpoint. To resume a run
 *  exactly: create a sampler with the same parameters, accept the prompt, accept each
 *  token generated so far, then mc_sampler_set_rng_state with the saved words. */
MC_API void mc_sampler_get_rng_state(const mc_sampler *s, uint64_t state[4]);

/** Restores an RNG state saved by mc_sampler_get_rng_state. MC_ERR_INVALID_ARG for the
 *  all-zero state, which no seed produces and which would repeat forever. */
MC_API mc_status mc_sampler_set_rng_state(mc_sampler *s, const uint64_t state[4]);

/* ------------------------------------------------------------------------------------ */
/* Contexts and generation                                                               */
/* ------------------------------------------------------------------------------------ */
/* A context is the per-run state of a model: KV caches for n_seq sequences of n_ctx
 * positions each, and activation scratch. It borrows the model, which must outlive it.
 * A context is not thread-safe; use one per thread. */

/** Per-run state of a model (KV caches and scratch). */
typedef struct mc_context mc_context;

/** Options for mc_context_create. */
typedef struct mc_context_params {
    int n_ctx;   /**< positions per sequence; 0 = min(max_position_embeddings, 4096) */
    int n_batch; /**< prompt tokens per forward pass (prefill chunk); 0 = 512 */
    int n_seq;   /**< sequences with their own caches (batch generation); 0 = 1 */
} mc_context_params;

/** Default context parameters (all zero: take them from the model). */
MC_API mc_context_params mc_context_default_params(void);

/** Creates a context for model. MC_ERR_OOM says how many bytes were needed. */
MC_API mc_status mc_context_create(mc_model *model, const mc_context_params *params,
                                   mc_context **out);

/** Frees a context. NULL is a no-op. */
MC_API void mc_context_free(mc_context *ctx);

/** Positions per sequence of the context. */
MC_API int mc_context_n_ctx(const mc_context *ctx);

/** Positions already cached for sequence seq (0 for an unknown seq). */
MC_API int mc_context_n_past(const mc_context *ctx, int seq);

/** Applies adapter (unmerged) to everything the context computes from now on, with its
 *  LoRA scale multiplied by scale (1 = as trained); NULL removes it. The adapter must
 *  belong to the context's model and outlive its use. Caches are reset. */
MC_API mc_status mc_context_set_adapter(mc_context *ctx, const mc_adapter *adapter, float scale);

/** Empties the cache of sequence seq, or of all sequences when seq < 0. */
MC_API void mc_context_reset(mc_context *ctx, int seq);

/** Appends ids[0..n) to sequence seq (in passes of n_batch tokens) and, when logits is not
 *  NULL, writes the vocab_size logits that follow the last of them.
 *  MC_ERR_CONTEXT_FULL when they do not fit (nothing is appended), MC_ERR_TOKEN_ID for an
 *  id outside the vocabulary, MC_ERR_INVALID_ARG for n == 0 or an unknown seq. */
MC_API mc_status mc_context_decode(mc_context *ctx, int seq, const int32_t *ids, size_t n,
                                   float *logits);

/** Why a generation ended. */
typedef enum mc_stop_reason {
    MC_STOP_NONE = 0,         /**< still running (never in a finished result) */
    MC_STOP_EOS = 1,          /**< an end-of-sequence token was sampled (not included) */
    MC_STOP_MAX_TOKENS = 2,   /**< max_tokens were generated */
    MC_STOP_STRING = 3,       /**< a stop string completed (it is not in the text) */
    MC_STOP_CONTEXT_FULL = 4, /**< the sequence filled its context */
    MC_STOP_CALLBACK = 5      /**< the token callback asked to stop (e.g. on SIGINT) */
} mc_stop_reason;

/** Lower-case name of a stop reason: "eos", "max_tokens", "stop_string", "context_full",
 *  "callback" or "none". */
MC_API const char *mc_stop_reason_name(mc_stop_reason r);

/** Streaming callback, called once per generated token (EOS excluded) of sequence seq:
 *  text[0..len) is the text that became visible with it (possibly empty while a stop string
 *  or an unfinished UTF-8 character is held back; always empty without a tokenizer),
 *  logprob its log-probability under the model. Return non-zero to stop generating.
 *  When generation ends with text still held back (an unfinished stop-string prefix),
 *  one last call delivers it with token -1 (its return value is ignored). */
typedef int (*mc_token_callback)(int seq, const char *text, size_t len, int32_t token,
                                 float logprob, void *user);

/** Options for mc_generate. */
typedef struct mc_generate_params {
    int max_tokens;                /**< > 0: most tokens to generate. Default 256 */
    int ignore_eos;                /**< 1: never stop on EOS (exactly max_tokens unless the
                                        context fills). Default 0 */
    const int32_t *eos_ids;        /**< n_eos ids that end generation; NULL = the model's
                                        (config.json and generation_config.json) */
    int n_eos;                     /**< entries in eos_ids */
    const char *const *stop;       /**< n_stop stop strings, matched on the decoded text
                                        across token boundaries; need a tokenizer */
    int n_stop;                    /**< entries in stop */
    const mc_tokenizer *tokenizer; /**< optional: decodes text for the callback, the result
                                        and stop strings; borrowed for the call */
    mc_sampler_params sampler;     /**< sampling; default mc_sampler_default_params() */
    mc_token_callback on_token;    /**< optional streaming callback */
    void *user;                    /**< passed to on_token */
} mc_generate_params;

/** Default generation parameters: 256 tokens, stop on the model's EOS, default sampler. */
MC_API mc_generate_params mc_generate_default_params(void);

/** A finished generation; release with mc_generation_clear. */
typedef struct mc_generation {
    int32_t *tokens;         /**< [n_tokens] generated ids (EOS not included) */
    size_t n_tokens;
    char *text;              /**< NUL-terminated text shown (NULL without a tokenizer) */
    size_t text_len;
    mc_stop_reason stop_reason;
    size_t prompt_tokens;
    double prefill_seconds;  /**< time to process the prompt and get the first logits */
    double decode_seconds;   /**< time of the token-by-token steps */
    size_t decode_steps;     /**< token-by-token forward passes run */
} mc_generation;

/** Generates a continuation of prompt[0..n_prompt) in sequence 0 of ctx, whose cache is
 *  reset first. The prompt is processed in one batched pass per n_batch tokens, then one
 *  token per step. Errors (nothing generated): MC_ERR_INVALID_ARG for an empty prompt,
 *  max_tokens <= 0, stop strings without a tokenizer, or invalid sampler parameters;
 *  MC_ERR_TOKEN_ID for an id outside the vocabulary; MC_ERR_CONTEXT_FULL when the prompt
 *  leaves no room to generate; MC_ERR_NUMERIC for a NaN or +inf logit. On success *out
 *  owns the result. Plain greedy decoding (temperature 0, no logit bias or penalty, no
 *  on_token callback) takes each token's argmax where the backend keeps the logits (on a
 *  GPU only the token id comes back to the host); the tokens are the same either way. */
MC_API mc_status mc_generate(mc_context *ctx, const int32_t *prompt, size_t n_prompt,
                             const mc_generate_params *params, mc_generation *out);

/** Generates continuations of n prompts at once (n <= the context's n_seq): prompt i is
 *  prompts[i][0..n_prompt[i]) in sequence i, with its own positions, cache, sampler (seed
 *  params->sampler.seed + i) and stop state; decode steps run the active sequences
 *  together. With greedy sampling each result equals mc_generate on that prompt alone.
 *  results[0..n) receive the outputs; the callback gets the sequence index. */
MC_API mc_status mc_generate_batch(mc_context *ctx, const int32_t *const *prompts,
                                   const size_t *n_prompt, int n,
                                   const mc_generate_params *params, mc_generation *results);

/** Frees what a result owns and zeroes it. NULL is a no-op. */
MC_API void mc_generation_clear(mc_generation *g);

#ifdef __cplusplus
}
#endif
#endif /* MCANDLE_H */
