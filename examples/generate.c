/* Generates text with the C API, streaming each piece as it is sampled.
 *
 *   cc -std=c99 generate.c $(pkg-config --cflags --libs itera) -o generate
 *   ./generate MODEL.itl [PROMPT] [N_PREDICT] [SEED] [DEVICE]     DEVICE: cpu (default), cuda or auto
 *
 * The installed package ships a model at $(pkg-config --variable=modeldir itera)/itera-kjv.itl. */
#include <itera.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int print_piece(int32_t token, const char* piece, void* user_data) {
    (void)user_data;
    if (piece)
        fputs(piece, stdout);
    else
        printf(" %d", (int)token); /* a model without tokenizer: ids */
    fflush(stdout);
    return 0; /* nonzero would stop generation */
}

static int report(const char* what, int rc) {
    fprintf(stderr, "error: %s: %s (%s)\n", what, itera_last_error(), itera_error_name(rc));
    return 1;
}

int main(int argc, char** argv) {
    itera_model* model = NULL;
    itera_context* ctx = NULL;
    int32_t* ids = NULL;
    char* text = NULL;
    int32_t n_ids = 0;
    size_t len = 0;
    int rc, status = 1;
    itera_sampler_params sampling = itera_sampler_default_params();
    itera_context_params params = itera_context_default_params();
    const char* prompt;
    int32_t n_predict;
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.itl [PROMPT] [N_PREDICT] [SEED] [cpu|cuda|auto]\n", argv[0]);
        return 2;
    }
    if (argc > 5) {
        for (params.device = ITERA_DEVICE_CPU; params.device <= ITERA_DEVICE_AUTO; params.device++)
            if (strcmp(argv[5], itera_device_name(params.device)) == 0) break;
        if (params.device > ITERA_DEVICE_AUTO) {
            fprintf(stderr, "error: unknown device '%s' (cpu, cuda or auto)\n", argv[5]);
            return 2;
        }
    }
    prompt = argc > 2 ? argv[2] : "and god said";
    n_predict = argc > 3 ? (int32_t)atoi(argv[3]) : 32;
    if (argc > 4) sampling.seed = strtoull(argv[4], NULL, 10);

    if ((rc = itera_model_load_file(argv[1], NULL, &model)) != ITERA_OK) return report("loading the model", rc);
    /* Ask for the count first, then tokenize into a buffer of that size. */
    rc = itera_tokenize(model, prompt, NULL, 0, &n_ids, 0);
    if (rc != ITERA_OK && rc != ITERA_ERR_BUFFER_TOO_SMALL) {
        status = report("tokenizing the prompt", rc);
        goto done;
    }
    if (n_ids == 0) {
        fprintf(stderr, "error: empty prompt\n");
        goto done;
    }
    ids = malloc((size_t)n_ids * sizeof *ids);
    if (!ids || (rc = itera_tokenize(model, prompt, ids, n_ids, &n_ids, 0)) != ITERA_OK) {
        status = report("tokenizing the prompt", ids ? rc : ITERA_ERR_OUT_OF_MEMORY);
        goto done;
    }
    /* Print the prompt as the model reads it (word models lower-case it). */
    itera_detokenize(model, ids, n_ids, NULL, 0, &len);
    text = malloc(len + 1);
    if (!text || (rc = itera_detokenize(model, ids, n_ids, text, len + 1, &len)) != ITERA_OK) {
        status = report("detokenizing the prompt", text ? rc : ITERA_ERR_OUT_OF_MEMORY);
        goto done;
    }
    fputs(text, stdout);

    /* On a GPU without one: ITERA_ERR_NO_DEVICE (or ITERA_ERR_NO_CUDA), and the message says why. */
    if ((rc = itera_context_new(model, &params, &ctx)) != ITERA_OK) {
        status = report("creating a context", rc);
        goto done;
    }
    if ((rc = itera_generate(ctx, ids, n_ids, n_predict, &sampling, print_piece, NULL, NULL)) != ITERA_OK) {
        status = report("generating", rc);
        goto done;
    }
    putchar('\n');
    status = 0;
done:
    free(text);
    free(ids);
    itera_context_free(ctx);
    itera_model_free(model);
    return status;
}
