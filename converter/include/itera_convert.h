/* itera_convert.h: converting a PyTorch checkpoint into a .itl model from C (libitera_convert).
 * docs/c_api.md ("Converting a checkpoint") is the reference; this header is the contract.
 *
 *   itera_conversion  the result of one conversion: the .itl file's bytes, the --report JSON and
 *                     the summary itera-convert prints; immutable, freed with itera_conversion_free
 *
 * itera_convert() does what `itera-convert` does, with the same options as plain C fields, on
 * checkpoint bytes held in memory: the same checkpoint, options, source name and options text give
 * the same file byte for byte, whether itera-convert read it from a path or a caller passed its
 * bytes. The checkpoint is parsed natively: no pickle code runs, whatever the bytes hold.
 *
 * Every function that can fail returns an int: ITERA_OK (0) or an ITERA_ERR_* code of itera.h, and
 * then itera_convert_last_error() tells what went wrong (this library keeps its own message: the
 * runtime's itera_last_error() does not see it). On failure *out is set to NULL when `out` is not
 * NULL. No C++ exception ever leaves this API. The library links the CPU runtime only (it runs the
 * model for calibration and size budgets), never a GPU backend. C99 and C++ compatible. */
#ifndef ITERA_CONVERT_H
#define ITERA_CONVERT_H

#include <stddef.h>
#include <stdint.h>

#include "itera.h" /* ITERA_OK, ITERA_ERR_*, ITERA_API */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct itera_conversion itera_conversion;

/* The options of itera-convert (docs/cli.md), one field each. Strings are NUL-terminated UTF-8; a
 * NULL string means the option is not given. Get the defaults from itera_convert_default_params()
 * and change what you need: a zeroed struct is not the defaults. */
typedef struct itera_convert_params {
    const char* tokenizer_json; /* --tokenizer: the JSON text itself, stored in the file */
    const char* config_json;    /* --config: the JSON text itself (upstream IteraLiteConfig keys) */
    int32_t top_k;              /* --top-k, 1 to 2^20; 0 (default): the config's, else 2 */
    const char* quant;          /* --quant: "fp32", "fp16", "q8", "q4", "nf4", "q3", "q2"; NULL: fp32 */
    const char* const* keep;    /* --keep: n_keep rules "GLOB=DTYPE", later rules win */
    int32_t n_keep;
    const char* const* precision; /* --precision: n_precision maps "GLOB=DTYPE,GLOB=DTYPE,...", in order */
    int32_t n_precision;
    const char* calib_text;       /* --calib: the calibration text itself */
    int64_t calib_tokens;         /* --calib-tokens, 1 to 2^30 (default 16384) */
    int64_t score_tokens;         /* --score-tokens, 1 to 2^30 (default 2048) */
    uint64_t target_size;         /* --target-size in bytes, up to 2^40; 0 (default): none */
    double prune_ratio;           /* --prune, in (0, 0.95]; 0 (default): none */
    const char* prune_scope;      /* --prune-scope: "moe,ffn,ssm,vocab" or a subset; NULL: moe,ffn */
    const char* prune_importance; /* --prune-importance: "magnitude", "activation", "taylor"; NULL: the default */
    int prune_uniform;            /* --prune-uniform: 1 = the same fraction of every group (default 0) */
    int trim_vocab;               /* 0 = --no-trim-vocab (default 1) */
    const char* layout;           /* --layout: "rows16" or "row_major"; NULL: rows16 */
    int moe_empty_identity;       /* 1 = --moe-empty identity (default 0: a MoE layer without experts is an error) */
    const char* source_name;      /* provenance: the checkpoint's file name (NULL: "") */
    const char* options_text; /* provenance: the options as given (itera-convert records its command line; NULL: "") */
} itera_convert_params;

ITERA_API itera_convert_params itera_convert_default_params(void);

/* Converts `size` bytes of a torch.save checkpoint. `params` may be NULL for the defaults. The
 * bytes are only read, and may be freed when this returns. Errors (nothing is allocated):
 *   INVALID_ARGUMENT  NULL checkpoint or out, a value out of range, an unknown name, a malformed
 *                     keep rule, precision map or prune scope, options that contradict each
 *                     other or do nothing (target_size without calib_text or with quant,
 *                     prune_importance without pruning, ...): before the checkpoint is read
 *   FORMAT            the checkpoint cannot be converted with these options: not a torch.save zip,
 *                     a refused pickle, a layout that is not Itera-Lite, a tokenizer or config that
 *                     disagrees with the weights, calibration text without tokens, a target size
 *                     the model cannot meet (the message says which)
 *   OUT_OF_MEMORY, INTERNAL */
ITERA_API int itera_convert(const void* checkpoint, size_t size, const itera_convert_params* params,
                            itera_conversion** out);
ITERA_API void itera_conversion_free(itera_conversion* conversion); /* NULL is a no-op */

/* The .itl file: *size receives its length. NULL (and *size = 0) for a NULL conversion. Valid
 * until itera_conversion_free; load it with itera_model_load_memory. */
ITERA_API const uint8_t* itera_conversion_data(const itera_conversion* conversion, size_t* size);
/* The --report JSON (docs/cli.md), NUL-terminated; "" for a NULL conversion. */
ITERA_API const char* itera_conversion_report(const itera_conversion* conversion);
/* The lines itera-convert prints, the file's line reading "converted: 2 layers, 623840 parameters,
 * q4 calibrated, 393888 bytes"; NUL-terminated, "" for a NULL conversion. */
ITERA_API const char* itera_conversion_summary(const itera_conversion* conversion);
/* Writes the file to `path` as itera-convert does: to a temporary file next to it, fsynced, then
 * renamed over it, so `path` holds either its old content or the whole new file. Errors:
 * INVALID_ARGUMENT (NULL or empty path, NULL conversion), IO (the message names the path and why;
 * a directory or a device is never replaced). */
ITERA_API int itera_conversion_write(const itera_conversion* conversion, const char* path);

/* The message of the last failed itera_convert* call on this thread; "" before any failure. */
ITERA_API const char* itera_convert_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* ITERA_CONVERT_H */
