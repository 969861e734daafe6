/* Converts a PyTorch checkpoint into a .itl model with the converter's C API (libitera_convert):
 * the file's bytes and the tokenizer's text go in, the .itl file comes out, written atomically.
 *
 *   cc -std=c99 convert.c $(pkg-config --cflags --libs itera_convert) -o convert
 *   ./convert CHECKPOINT.pt TOKENIZER.json OUT.itl [QUANT]
 *
 * The file is the one `itera-convert CHECKPOINT.pt --tokenizer TOKENIZER.json -o OUT.itl
 * [--quant QUANT]` writes, byte for byte: this program records the same provenance (the
 * checkpoint's file name and that command line). */
#include <itera_convert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The whole file, NUL-terminated (so that text can be passed as a string); *size without the NUL. */
static char* read_all(const char* path, size_t* size) {
    FILE* f = fopen(path, "rb");
    char* data = NULL;
    long n;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (data = malloc((size_t)n + 1)) != NULL) {
        if (fread(data, 1, (size_t)n, f) == (size_t)n) {
            data[n] = '\0';
            *size = (size_t)n;
        } else {
            free(data);
            data = NULL;
        }
    }
    fclose(f);
    return data;
}

int main(int argc, char** argv) {
    itera_convert_params params = itera_convert_default_params();
    itera_conversion* result = NULL;
    char *checkpoint, *tokenizer, options[4096];
    const char* name;
    size_t checkpoint_size = 0, tokenizer_size = 0;
    int rc;
    if (argc < 4) {
        fprintf(stderr, "usage: %s CHECKPOINT.pt TOKENIZER.json OUT.itl [QUANT]\n", argv[0]);
        return 2;
    }
    checkpoint = read_all(argv[1], &checkpoint_size);
    tokenizer = read_all(argv[2], &tokenizer_size);
    if (!checkpoint || !tokenizer) {
        fprintf(stderr, "error: cannot read %s\n", checkpoint ? argv[2] : argv[1]);
        free(checkpoint);
        free(tokenizer);
        return 1;
    }
    name = strrchr(argv[1], '/') ? strrchr(argv[1], '/') + 1 : argv[1];
    snprintf(options, sizeof options, "%s --tokenizer %s -o %s%s%s", argv[1], argv[2], argv[3],
             argc > 4 ? " --quant " : "", argc > 4 ? argv[4] : "");
    params.tokenizer_json = tokenizer;
    params.quant = argc > 4 ? argv[4] : NULL;
    params.source_name = name;
    params.options_text = options;
    rc = itera_convert(checkpoint, checkpoint_size, &params, &result);
    if (rc == ITERA_OK) rc = itera_conversion_write(result, argv[3]);
    if (rc == ITERA_OK) {
        fputs(itera_conversion_summary(result), stdout);
    } else {
        fprintf(stderr, "error: %s (code %d)\n", itera_convert_last_error(), rc);
    }
    itera_conversion_free(result);
    free(checkpoint);
    free(tokenizer);
    return rc == ITERA_OK ? 0 : 1;
}
