/* itera.h: the C API of the Itera runtime (Itera-Lite state-space + mixture-of-experts language
 * models stored as .itl files). docs/c_api.md is the reference; this header is the contract.
 *
 *   itera_model    immutable once loaded; may be shared by any number of threads and contexts
 *   itera_context  one sequence's state; use it from one thread at a time
 *   itera_sampler  picks tokens from logits with its own seeded generator; one thread at a time
 *   itera_batch    many sequences decoded in lockstep (one matrix product per weight for all)
 *
 * Contexts and batches run on a device chosen in their params: the CPU, an NVIDIA GPU (CUDA), or
 * "auto" (the GPU when it can run the model, else the CPU).
 *
 * Every function that can fail returns an int: ITERA_OK (0) or an ITERA_ERR_* code, and then
 * itera_last_error() tells what went wrong. On failure a handle out-parameter is set to NULL
 * (when the other arguments were valid), a size or count out-parameter where a function says so
 * (BUFFER_TOO_SMALL), and no other out-parameter is written. No C++ exception ever leaves this
 * API. C99 and C++ compatible. */
#ifndef ITERA_H
#define ITERA_H

#include <stddef.h>
#include <stdint.h>

#define ITERA_VERSION_MAJOR 0
#define ITERA_VERSION_MINOR 2
#define ITERA_VERSION_PATCH 0
#define ITERA_VERSION_STRING "0.2.0"

/* The library is built with hidden visibility; these are the symbols it exports. */
#if defined(__GNUC__)
#define ITERA_API __attribute__((visibility("default")))
#else
#define ITERA_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct itera_model itera_model;
typedef struct itera_context itera_context;
typedef struct itera_sampler itera_sampler;
typedef struct itera_batch itera_batch;

/* ---- errors ---- */

enum itera_error {
    ITERA_OK = 0,
    ITERA_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, value out of range, unknown flag */
    ITERA_ERR_IO = 2,               /* the model file cannot be opened (FORMAT: what it holds) */
    ITERA_ERR_FORMAT = 3,           /* corrupt or unsupported model file or saved state */
    ITERA_ERR_UNKNOWN_TOKEN = 4,    /* text has a piece the vocabulary lacks */
    ITERA_ERR_OUT_OF_MEMORY = 5,
    ITERA_ERR_INTERNAL = 6,         /* a bug: please report it with the message */
    ITERA_ERR_BUFFER_TOO_SMALL = 7, /* the size needed is stored in the size out-parameter */
    ITERA_ERR_MODEL_MISMATCH = 8,   /* a saved state from a different model */
    ITERA_ERR_NO_TOKENIZER = 9,     /* the model file has no tokenizer: use token ids */
    ITERA_ERR_NO_DEVICE = 10,       /* ITERA_DEVICE_CUDA and no usable GPU: the message says why */
    ITERA_ERR_NO_CUDA = 11          /* ITERA_DEVICE_CUDA in a library built without CUDA support */
};

/* The message of the last failed call on this thread (successful calls leave it alone); ""
 * before any failure. Valid until the next failing call on this thread. */
ITERA_API const char* itera_last_error(void);
/* "ITERA_OK", "ITERA_ERR_IO", ...; "ITERA_ERR_UNKNOWN_CODE" for any other value. Static storage. */
ITERA_API const char* itera_error_name(int code);
/* The library's version, ITERA_VERSION_STRING of the build (compare with the header's). */
ITERA_API const char* itera_version(void);

/* ---- devices ---- */

enum itera_device {
    ITERA_DEVICE_CPU = 0,  /* the default */
    ITERA_DEVICE_CUDA = 1, /* NVIDIA GPU 0, compute capability 8.0 or newer (fp32/fp16/q8/q4/nf4 weights) */
    ITERA_DEVICE_AUTO = 2  /* the GPU when there is one that can run the model, else the CPU */
};

/* ITERA_OK when contexts and batches can be created on `device` (CPU and AUTO: always);
 * ITERA_ERR_NO_DEVICE or ITERA_ERR_NO_CUDA otherwise, itera_last_error() saying why;
 * INVALID_ARGUMENT for an unknown device. */
ITERA_API int itera_device_available(int device);
/* "cpu", "cuda", "auto"; NULL for an unknown device. Static storage. */
ITERA_API const char* itera_device_name(int device);

/* ---- model ---- */

typedef struct itera_model_params {
    int verify_checksum; /* 1: hash the whole file once on load and refuse a mismatch (default 1) */
    int copy_buffer;     /* itera_model_load_memory only: 1 = always copy (default 0, see there) */
} itera_model_params;

ITERA_API itera_model_params itera_model_default_params(void);

/* Maps the file read-only. `params` may be NULL for the defaults. Errors: INVALID_ARGUMENT,
 * IO (cannot open: the message names the path and the reason), FORMAT, OUT_OF_MEMORY. */
ITERA_API int itera_model_load_file(const char* path, const itera_model_params* params, itera_model** out);
/* Loads a model from the bytes of an .itl file. Buffer lifetime: with copy_buffer = 0 the buffer
 * is used in place when it is 64-byte aligned and copied otherwise, so the caller must keep it
 * alive and unchanged until itera_model_free either way; with copy_buffer = 1 the library always
 * copies and the buffer may be freed as soon as this returns. */
ITERA_API int itera_model_load_memory(const void* data, size_t size, const itera_model_params* params,
                                      itera_model** out);
/* NULL is a no-op. Every context of the model must be freed first. */
ITERA_API void itera_model_free(itera_model* model);

/* Queries; a NULL model gives 0 (itera_model_eos: -1). Token ids are in [0, vocab_size), and every
 * logits array has vocab_size entries, indexed by token id. */
ITERA_API int32_t itera_model_vocab_size(const itera_model* model);
ITERA_API int32_t itera_model_hidden(const itera_model* model);
ITERA_API int32_t itera_model_max_seq_length(const itera_model* model);
ITERA_API int32_t itera_model_n_layers(const itera_model* model);
ITERA_API int itera_model_has_tokenizer(const itera_model* model);
ITERA_API int32_t itera_model_eos(const itera_model* model); /* <EOS> id, -1 when none */
/* The .itl checksum: equal fingerprints mean the same model content (saved states are tied to it). */
ITERA_API uint64_t itera_model_fingerprint(const itera_model* model);
/* The model described as one JSON object, what `itera-run info --json` prints: "file" (the path it
 * was loaded from, "" from memory), "file_bytes", the config ("vocab_size", "hidden",
 * "max_seq_length", "layers": [{"inner", "state", "conv_kernel", "kind", "top_k", "ffn_widths"}],
 * ...), "tensors": [{"name", "shape", "dtype", "layout", "bytes"}], "parts", "parameters",
 * "bits_per_weight" (docs/c_api.md lists them). Buffer rules as itera_detokenize. */
ITERA_API int itera_model_info(const itera_model* model, char* text, size_t capacity, size_t* len_out);

/* ---- tokenizer ---- */

enum itera_tokenize_flags {
    ITERA_TOKENIZE_ALLOW_UNKNOWN = 1 /* map pieces the vocabulary lacks to <UNK> instead of failing */
};

/* Splits NUL-terminated `text` into token ids (word-level models: lower-cased, split on white
 * space; character-level: UTF-8 code points). *n_out receives the number of ids; when it exceeds
 * `capacity` nothing is written to `ids` and ITERA_ERR_BUFFER_TOO_SMALL is returned (so
 * ids = NULL, capacity = 0 asks for the count). Errors: INVALID_ARGUMENT, NO_TOKENIZER,
 * UNKNOWN_TOKEN (the message quotes the first unknown piece), BUFFER_TOO_SMALL. */
ITERA_API int itera_tokenize(const itera_model* model, const char* text, int32_t* ids, int32_t capacity, int32_t* n_out,
                             int flags);
/* Writes the text of `n` ids, NUL-terminated, to `text`. *len_out receives its length without the
 * NUL; when capacity < length + 1 nothing is written and BUFFER_TOO_SMALL is returned. Ids must be
 * in [0, vocab_size) (INVALID_ARGUMENT otherwise); ids past the tokenizer's list read "<UNK>".
 * NO_TOKENIZER when the model has none. */
ITERA_API int itera_detokenize(const itera_model* model, const int32_t* ids, int32_t n, char* text, size_t capacity,
                               size_t* len_out);
/* The text token `id` adds when streamed: word-level models put a space before every word but
 * the first (first != 0). Buffer rules as itera_detokenize. */
ITERA_API int itera_token_piece(const itera_model* model, int32_t id, int first, char* text, size_t capacity,
                                size_t* len_out);

/* ---- context ---- */

typedef struct itera_context_params {
    int device; /* enum itera_device (default ITERA_DEVICE_CPU) */
} itera_context_params;

ITERA_API itera_context_params itera_context_default_params(void);

/* A new, empty sequence over `model` (which must outlive it). `params` may be NULL. Errors:
 * INVALID_ARGUMENT (unknown device), NO_DEVICE, NO_CUDA, FORMAT (a model the GPU cannot run:
 * q3 or q2 weights), OUT_OF_MEMORY. */
ITERA_API int itera_context_new(const itera_model* model, const itera_context_params* params, itera_context** out);
ITERA_API void itera_context_free(itera_context* ctx); /* NULL is a no-op */
/* The device the context runs on: ITERA_DEVICE_CPU or ITERA_DEVICE_CUDA (never AUTO); -1 for NULL. */
ITERA_API int itera_context_device(const itera_context* ctx);
/* Forgets the sequence: back to the state of a new context. */
ITERA_API int itera_context_reset(itera_context* ctx);
/* Tokens the state covers (at most max_seq_length: past it the context keeps the last
 * max_seq_length tokens and re-runs them from zero state for every new token, as upstream does). */
ITERA_API int32_t itera_context_position(const itera_context* ctx);
/* The logits [vocab_size] of the last evaluation (or of a restored state), NULL when it skipped
 * them, after a reset and for a NULL context. Valid until the next call that changes the context. */
ITERA_API const float* itera_context_logits(const itera_context* ctx);

/* Feeds one token. *logits_out (when logits_out is not NULL) receives the logits [vocab_size]
 * predicting the next token, valid until the next call that changes the context; passing NULL
 * skips the output head (cheaper, for prompt tokens before the last). A model converted with a
 * trimmed vocabulary cannot read or predict the ids it dropped: their logits are -INFINITY.
 * Errors: INVALID_ARGUMENT (a token outside the model's vocabulary: the context is unchanged). */
ITERA_API int itera_eval(itera_context* ctx, int32_t token, const float** logits_out);
/* Feeds n >= 1 tokens; logits as itera_eval, for the last token only. All ids are checked before
 * any is fed. */
ITERA_API int itera_eval_tokens(itera_context* ctx, const int32_t* tokens, int32_t n, const float** logits_out);

/* Saving and restoring a context: the saved bytes hold the window of tokens, the conv and SSM
 * state and the last logits (versioned, little-endian, tied to the model's fingerprint; the
 * layout is in runtime/context.h). A context restored from them continues exactly, bit for bit,
 * as the saved one would have. */
/* The exact number of bytes itera_context_save would write now. 0 for a NULL context. */
ITERA_API size_t itera_context_state_size(const itera_context* ctx);
/* *written receives the size; when it exceeds `capacity` nothing is written and BUFFER_TOO_SMALL
 * is returned. */
ITERA_API int itera_context_save(const itera_context* ctx, void* buffer, size_t capacity, size_t* written);
/* Replaces the context's state. Errors (the context is unchanged): INVALID_ARGUMENT,
 * MODEL_MISMATCH (saved from a model with another fingerprint), FORMAT (truncated, corrupt or
 * of an unknown version). */
ITERA_API int itera_context_restore(itera_context* ctx, const void* buffer, size_t size);

/* ---- batch: many independent sequences decoded in lockstep ---- */

typedef struct itera_batch_params {
    int32_t n_threads; /* CPU: threads over contiguous ranges of the sequences, 1..1024 (default 1) */
    int device;        /* enum itera_device (default ITERA_DEVICE_CPU) */
} itera_batch_params;

ITERA_API itera_batch_params itera_batch_default_params(void);

/* n_sequences (1..1048576) new, empty sequences over `model` (which must outlive the batch).
 * itera_batch_eval feeds one token to every sequence and runs them through the model together;
 * itera_batch_run feeds some of them any number of tokens together (a new prompt beside the
 * others' next token: continuous batching). Each sequence behaves exactly like an itera_context
 * fed the same tokens (the same window semantics past max_seq_length). `params` may be NULL. Use
 * a batch from one thread at a time. Errors as itera_context_new. */
ITERA_API int itera_batch_new(const itera_model* model, int32_t n_sequences, const itera_batch_params* params,
                              itera_batch** out);
ITERA_API void itera_batch_free(itera_batch* batch); /* NULL is a no-op */
ITERA_API int32_t itera_batch_size(const itera_batch* batch);
/* ITERA_DEVICE_CPU or ITERA_DEVICE_CUDA; -1 for NULL. */
ITERA_API int itera_batch_device(const itera_batch* batch);
/* Feeds tokens[i] to sequence i, for every i < n_sequences. Errors: INVALID_ARGUMENT (a token
 * outside the model's vocabulary: no sequence changes). */
ITERA_API int itera_batch_eval(itera_batch* batch, const int32_t* tokens);

/* Sequence `seq` gets tokens[0, n_tokens), n_tokens >= 1. */
typedef struct itera_batch_feed {
    int32_t seq;
    const int32_t* tokens;
    int32_t n_tokens;
} itera_batch_feed;
/* Runs n_feeds (0..n_sequences) feeds together, each on a different sequence; the other sequences
 * are untouched. Afterwards itera_batch_logits gives each fed sequence's logits after its last
 * token, and NULL for the others. Errors: INVALID_ARGUMENT (a sequence out of range or fed twice,
 * an empty feed, a token outside the vocabulary: no sequence changes). */
ITERA_API int itera_batch_run(itera_batch* batch, const itera_batch_feed* feeds, int32_t n_feeds);
/* The logits [vocab_size] of sequence i after the last itera_batch_eval or itera_batch_run that
 * fed it (trimmed ids -INFINITY, as itera_eval), valid until the next call that changes the batch;
 * NULL for an out-of-range i, for a sequence that call did not feed, before the first one and
 * after itera_batch_reset(i). */
ITERA_API const float* itera_batch_logits(const itera_batch* batch, int32_t i);
/* Tokens sequence i's state covers (as itera_context_position); 0 for an out-of-range i. */
ITERA_API int32_t itera_batch_position(const itera_batch* batch, int32_t i);
/* Sequence i starts over (empty, zero state); the others are untouched. */
ITERA_API int itera_batch_reset(itera_batch* batch, int32_t i);

/* ---- sampling ---- */

typedef struct itera_sampler_params {
    int greedy;        /* 1: always the most likely token (default 0) */
    float temperature; /* default 0.8; <= 0 means greedy */
    int32_t top_k;     /* keep the k most likely tokens; 0 keeps all (default 40) */
    float top_p;       /* keep the smallest set with this much probability; 1 keeps all (default 0.95) */
    uint64_t seed;     /* same seed, same choices on every machine (default 0) */
} itera_sampler_params;

ITERA_API itera_sampler_params itera_sampler_default_params(void);
/* `params` may be NULL. Errors: INVALID_ARGUMENT (temperature not finite, top_k < 0, top_p not in [0, 1]). */
ITERA_API int itera_sampler_new(const itera_sampler_params* params, itera_sampler** out);
ITERA_API void itera_sampler_free(itera_sampler* sampler); /* NULL is a no-op */
/* Picks a token from n >= 1 logits (NaN logits are INVALID_ARGUMENT). */
ITERA_API int itera_sampler_sample(itera_sampler* sampler, const float* logits, int32_t n, int32_t* token_out);

/* ---- generation ---- */

/* Called for every generated token, after it has been fed to the context. `piece` is the text it
 * adds (itera_token_piece with first = 0), NUL-terminated, valid during the call; NULL when the
 * model has no tokenizer. Return nonzero to stop. */
typedef int (*itera_token_callback)(int32_t token, const char* piece, void* user_data);

/* Feeds the prompt (n_prompt may be 0 to continue from the context's logits, for example after a
 * restore), then up to n_predict times: sample a token with a fresh sampler made from `sampling`
 * (NULL: defaults), stop at <EOS> (not fed, not passed on), feed it, call `callback` (may be NULL).
 * *n_generated (may be NULL) receives the number of tokens passed on, also on failure. Errors:
 * INVALID_ARGUMENT (ids out of range, n_prompt = 0 with no logits, bad sampling parameters),
 * FORMAT (the model computed NaN logits). */
ITERA_API int itera_generate(itera_context* ctx, const int32_t* prompt, int32_t n_prompt, int32_t n_predict,
                             const itera_sampler_params* sampling, itera_token_callback callback, void* user_data,
                             int32_t* n_generated);

/* ---- evaluation ---- */

typedef struct itera_perplexity_params {
    int32_t window;               /* tokens per window, 1..max_seq_length; 0: max_seq_length (default 0) */
    const itera_model* reference; /* NULL, or a model to compare with on the same windows (default NULL) */
    int device;                   /* enum itera_device, for both models (default ITERA_DEVICE_CPU) */
} itera_perplexity_params;

typedef struct itera_perplexity_result {
    double perplexity;   /* exp(mean negative log-likelihood of each next token) */
    int64_t tokens;      /* tokens of the text; words the vocabulary lacks count as <UNK> */
    int64_t scored;      /* positions scored: every one with a next token, tokens - 1 */
    double unk_fraction; /* share of the tokens that are <UNK> */
    double kld;          /* with a reference: mean KL(reference || model) in nats; NaN without */
    double top1;         /* with a reference: share of positions whose argmaxes agree; NaN without */
} itera_perplexity_result;

ITERA_API itera_perplexity_params itera_perplexity_default_params(void);
/* Scores NUL-terminated `text` as `itera-run ppl` does (the same numbers): tokenized whole,
 * non-overlapping windows of `window` tokens each from zero state, every position scored against
 * the token after it; with a reference, the KL divergence of this model's next-token distribution
 * from the reference's (both over this model's vocabulary, the reference renormalized over it) and
 * their top-1 agreement. `params` may be NULL. Errors: INVALID_ARGUMENT (a window out of range,
 * fewer than 2 tokens, a reference that lacks an id of the model, unknown device), NO_TOKENIZER,
 * NO_DEVICE, NO_CUDA, FORMAT (non-finite logits: corrupt weights), OUT_OF_MEMORY. */
ITERA_API int itera_perplexity(const itera_model* model, const char* text, const itera_perplexity_params* params,
                               itera_perplexity_result* out);

#ifdef __cplusplus
}
#endif

#endif /* ITERA_H */
