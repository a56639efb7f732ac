/* io.h - file access for the library: mmap, whole-file reads, paths, safetensors
 * (single and sharded), Hugging Face config.json / generation_config.json, and .npy.
 *
 * Every parser takes (pointer, length, name-for-messages) so it can be fuzzed; the
 * file-path functions are thin wrappers. Failures return a specific mc_status and set
 * the last-error message naming the file (and tensor or key). */
#ifndef MC_IO_H
#define MC_IO_H

#include "../core/core.h"

/* ---- files and paths ---------------------------------------------------------------- */

/* A read-only memory mapping of a whole file. */
typedef struct mc_mapped {
    const uint8_t *data; /* [size] bytes; NULL for an empty file */
    size_t size;
} mc_mapped;

/* Maps path read-only. MC_ERR_FILE_NOT_FOUND if absent, MC_ERR_IO otherwise (including a
 * path that is not a regular file). An empty file gives data NULL, size 0. On failure *out
 * is zeroed. */
mc_status mc_map_file(const char *path, mc_mapped *out);
/* Unmaps; safe on a zeroed struct. */
void mc_unmap(mc_mapped *m);

/* Reads a whole (small) file into a NUL-terminated heap buffer (*len excludes the NUL;
 * free with mc_free). MC_ERR_FILE_NOT_FOUND if absent, MC_ERR_IO otherwise. */
mc_status mc_read_file(const char *path, char **out, size_t *len);

/* Writes data to path atomically: path.tmp, fsync, rename, fsync of the folder. On
 * failure path is untouched and path.tmp is removed (MC_ERR_IO naming the path). */
mc_status mc_write_file_atomic(const char *path, const void *data, size_t len);

/* Creates folder dir and any missing parents (mode 0755); MC_OK when it exists already.
 * MC_ERR_NOT_DIR when a part of the path is a file, MC_ERR_IO when mkdir fails. */
mc_status mc_mkdir_p(const char *dir);

bool mc_path_exists(const char *path);
bool mc_path_is_dir(const char *path);
/* dir + "/" + name in a new heap string (mc_free), NULL on allocation failure. No second
 * '/' is added when dir already ends with one; an empty dir gives a copy of name. */
char *mc_path_join(const char *dir, const char *name);

/* ---- JSON ---------------------------------------------------------------------------- */

struct cJSON;

/* Parses text[0..len) (need not be NUL-terminated; never read past len) into a cJSON
 * tree (*out, free with cJSON_Delete). Only JSON whitespace may follow the value.
 * MC_ERR_JSON "fname: malformed JSON at byte B (line L)"; MC_ERR_OOM when an allocation
 * failed. Note: the first call routes cJSON's allocations through mc_malloc/mc_free
 * process-wide (cJSON_InitHooks), so fault injection reaches them; use this function
 * rather than cJSON_Parse so that such failures are reported as MC_ERR_OOM. */
mc_status mc_json_parse(const char *text, size_t len, const char *fname, struct cJSON **out);

/* ---- safetensors -------------------------------------------------------------------- */
/* Format: 8-byte little-endian header length N, then N bytes of JSON
 *   {"__metadata__": {str: str}, "<name>": {"dtype": "BF16", "shape": [..],
 *    "data_offsets": [begin, end]}, ...}
 * then the data area; offsets are relative to the data area's start. */

#define MC_MAX_DIMS 8

/* Dtypes that the safetensors format defines; only F32/F16/BF16 are computable. */
typedef enum mc_st_dtype {
    MC_ST_F32, MC_ST_F16, MC_ST_BF16, MC_ST_F64, MC_ST_I64, MC_ST_I32, MC_ST_I16, MC_ST_I8,
    MC_ST_U8, MC_ST_U16, MC_ST_U32, MC_ST_U64, MC_ST_BOOL, MC_ST_F8_E4M3, MC_ST_F8_E5M2
} mc_st_dtype;

typedef struct mc_st_tensor {
    char *name;                    /* owned by the set/file */
    mc_st_dtype st_dtype;          /* as stored */
    int ndim;                      /* 0..MC_MAX_DIMS */
    int64_t shape[MC_MAX_DIMS];
    const void *data;              /* view into the mapping (never freed) */
    size_t nbytes;
    const char *file;              /* path of the file holding it: owned by the set; in an
                                    * mc_st_file it is the fname given to mc_st_parse
                                    * (borrowed) */
} mc_st_tensor;

/* Maps an st dtype to a computable mc_dtype; false for the others. */
bool mc_st_dtype_compute(mc_st_dtype t, mc_dtype *out);
/* Name as safetensors spells it ("BF16", "F8_E4M3"); "?" for a value outside the enum. */
const char *mc_st_dtype_name(mc_st_dtype t);
/* Bytes per element (1 for BOOL and the F8 types); 0 for a value outside the enum. */
size_t mc_st_dtype_size(mc_st_dtype t);

/* One parsed file: tensors point into buf, which must outlive this struct. */
typedef struct mc_st_file {
    mc_st_tensor *tensors; /* [n], in header order */
    size_t n;
} mc_st_file;

/* Parses and validates a whole safetensors file image buf[0..len). Checks: len >= 8
 * (MC_ERR_TRUNCATED), header length within the file (MC_ERR_HEADER_SIZE), JSON well
 * formed, header an object, entries objects with a string dtype, an integer-array shape
 * and a two-number data_offsets (MC_ERR_JSON naming the tensor; a dim that is negative,
 * fractional or above 2^53 is MC_ERR_JSON too), dtype known (MC_ERR_DTYPE), more than
 * MC_MAX_DIMS dims (MC_ERR_UNSUPPORTED), offsets non-negative integers <= 2^53 with
 * begin <= end <= data size (MC_ERR_OFFSETS), end - begin == product(shape) * dtype size
 * (MC_ERR_TENSOR_SIZE, also when the product overflows), no two tensors sharing a byte
 * (MC_ERR_OVERLAP; empty tensors never overlap), no duplicate names (MC_ERR_DUPLICATE).
 * "__metadata__" must be an object of strings and is otherwise ignored. Gaps between
 * tensors are allowed. Tensor data is not necessarily aligned (it is when the writer
 * padded the header to 8 bytes and ordered tensors by element size, as mc_st_write and
 * the Hugging Face writer do). fname is only used in messages (and as each tensor's
 * file). On failure *out is zeroed. */
mc_status mc_st_parse(const uint8_t *buf, size_t len, const char *fname, mc_st_file *out);
void mc_st_file_free(mc_st_file *f);

/* A checkpoint's tensors across one or more mapped files, searchable by name. */
typedef struct mc_st_set {
    mc_mapped *maps;   /* [n_files] */
    char **paths;      /* [n_files] */
    size_t n_files;
    mc_st_tensor *tensors; /* [n], sorted by name */
    size_t n;
} mc_st_set;

/* Opens a model folder: model.safetensors.index.json (sharded: every shard named in
 * weight_map is opened once, and each name must live in the shard the index says) or
 * else model.safetensors. Errors: dir exists but is not a folder: MC_ERR_NOT_DIR; dir
 * absent, or neither file in it: MC_ERR_FILE_NOT_FOUND; a shard file absent:
 * MC_ERR_FILE_NOT_FOUND naming it; an index entry whose tensor is not in its shard:
 * MC_ERR_MISSING_TENSOR naming tensor and shard; a malformed index, a non-string shard
 * name or one that is empty or contains '/', '\' or "..": MC_ERR_JSON naming the index;
 * duplicate names across shards (or in weight_map): MC_ERR_DUPLICATE. Tensors that a
 * shard holds but the index omits are kept. On failure *out is zeroed. */
mc_status mc_st_open_dir(const char *dir, mc_st_set *out);
/* Opens one .safetensors file as a set (errors as mc_map_file and mc_st_parse). */
mc_status mc_st_open_file(const char *path, mc_st_set *out);
/* Binary search by exact name; NULL if absent. */
const mc_st_tensor *mc_st_find(const mc_st_set *s, const char *name);
void mc_st_close(mc_st_set *s);

/* A tensor to write. */
typedef struct mc_st_out {
    const char *name;
    mc_st_dtype st_dtype;
    int ndim;
    int64_t shape[MC_MAX_DIMS];
    const void *data; /* product(shape) elements */
} mc_st_out;

/* Writes tensors (sorted by name in the header, 8-byte aligned data) with optional
 * string metadata pairs (meta[2*i] = key, meta[2*i+1] = value) atomically to path.
 * The header is padded with spaces to a multiple of 8 bytes; the data area holds the
 * tensors back to back (no gaps, as Hugging Face readers require) ordered by element
 * size, largest first, then by name, so each tensor is aligned to its element size.
 * MC_ERR_INVALID_ARG for a NULL or "__metadata__" name, a dtype outside the enum, ndim
 * outside 0..MC_MAX_DIMS, a negative dim, a size that overflows, NULL data for a
 * non-empty tensor or a NULL metadata string; MC_ERR_DUPLICATE for a repeated name;
 * MC_ERR_IO when writing fails. */
mc_status mc_st_write(const char *path, const mc_st_out *ts, size_t n, const char *const *meta,
                      size_t n_meta);

/* ---- Hugging Face config ------------------------------------------------------------ */

typedef enum mc_arch { MC_ARCH_QWEN2 = 0, MC_ARCH_LLAMA = 1, MC_ARCH_QWEN3 = 2 } mc_arch;

typedef struct mc_config {
    mc_arch arch;
    char architecture[64];  /* architectures[0], e.g. "Qwen2ForCausalLM" */
    char model_type[32];    /* "qwen2", "llama", "qwen3" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads; /* defaults to num_attention_heads */
    int head_dim;            /* defaults to hidden_size / num_attention_heads */
    int max_position_embeddings;
    double rope_theta;       /* top-level rope_theta or rope_parameters.rope_theta */
    double rms_norm_eps;
    bool tie_word_embeddings;
    bool qkv_bias;           /* qwen2: true; llama/qwen3: attention_bias (default false) */
    bool qk_norm;            /* qwen3: per-head RMSNorm on q and k */
    bool has_dtype;
    mc_dtype dtype;          /* torch_dtype or dtype */
    int bos_token_id;        /* -1 when absent or null */
    int n_eos;
    int eos_token_ids[8];
} mc_config;

/* Parses config.json text. Requires model_type in {qwen2, llama, qwen3} (else
 * MC_ERR_UNSUPPORTED "unsupported architecture"), hidden_act "silu", no rope_scaling
 * other than null/"default", use_sliding_window false (else MC_ERR_UNSUPPORTED).
 * Missing required keys: MC_ERR_CONFIG_MISSING naming the key; wrong JSON types or
 * impossible values (non-positive sizes, heads not dividing, ...): MC_ERR_CONFIG_TYPE.
 * Required: model_type, vocab_size, hidden_size, intermediate_size, num_hidden_layers,
 * num_attention_heads (null counts as a wrong type). Optional keys that are absent or
 * null take defaults: num_key_value_heads = heads, head_dim = hidden / heads (must be
 * even), max_position_embeddings 32768, rope_theta 10000 (rope_parameters.rope_theta
 * wins over top-level rope_theta), rms_norm_eps 1e-6, tie_word_embeddings false,
 * attention_bias false, bos -1, no eos, architecture "<Arch>ForCausalLM" from
 * model_type. dtype wins over torch_dtype. Also MC_ERR_UNSUPPORTED: more than 8 eos
 * ids, a non-null quantization_config, mlp_bias true, a layer_types entry other than
 * "full_attention". A repeated top-level key: MC_ERR_DUPLICATE.
 * Malformed JSON or a non-object: MC_ERR_JSON. On failure *out is zeroed. */
mc_status mc_config_parse(const char *json, size_t len, const char *fname, mc_config *out);

/* Merges generation_config.json text: eos_token_id (int or list) replaces the config's
 * list; bos_token_id likewise. Absent or null keys leave cfg as it is; other keys are
 * ignored. On failure cfg is unchanged. */
mc_status mc_genconfig_parse(const char *json, size_t len, const char *fname, mc_config *cfg);

/* Reads dir/config.json and, when present, dir/generation_config.json. dir absent or no
 * config.json: MC_ERR_FILE_NOT_FOUND; dir not a folder: MC_ERR_NOT_DIR. */
mc_status mc_config_load(const char *dir, mc_config *out);

/* ---- .npy ---------------------------------------------------------------------------- */

/* Writes a little-endian float32 C-order .npy file (format 1.0, header padded so the
 * data starts at a multiple of 64), atomically. ndim 0..MC_MAX_DIMS (0 = a scalar). */
mc_status mc_npy_write_f32(const char *path, const float *data, const size_t *shape, int ndim);

/* Reads a float32 or int32 (dtype '<f4' / '<i4') C-order .npy file. *out is mc_malloc'd
 * (mc_free); shape receives up to MC_MAX_DIMS dims. is_int tells which was read.
 * Format versions 1.0 and 2.0. Errors: not a .npy file, another version, fortran_order
 * True or more than MC_MAX_DIMS dims: MC_ERR_UNSUPPORTED; another dtype: MC_ERR_DTYPE;
 * malformed header dict: MC_ERR_JSON (byte offset); file shorter than header or data:
 * MC_ERR_TRUNCATED; bytes after the data: MC_ERR_TENSOR_SIZE. */
mc_status mc_npy_read(const char *path, void **out, size_t *shape, int *ndim, bool *is_int);

#endif /* MC_IO_H */
