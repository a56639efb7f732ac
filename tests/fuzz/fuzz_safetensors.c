/* fuzz_safetensors.c - fuzz target: the input is a whole safetensors file image. Parses
 * it, touches every tensor's bytes (so a view outside the input is caught), frees all. */
#include <stdint.h>
#include <stddef.h>

#include "io/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mc_st_file f;
    unsigned sum = 0;
    size_t i, j;
    if (mc_st_parse(data, size, "fuzz.safetensors", &f) != MC_OK) return 0;
    for (i = 0; i < f.n; i++) {
        const uint8_t *p = f.tensors[i].data;
        size_t nb = f.tensors[i].nbytes;
        if (nb > 0) sum += (unsigned)p[0] + (unsigned)p[nb - 1];
        for (j = 0; j < (size_t)f.tensors[i].ndim; j++) sum += (unsigned)f.tensors[i].shape[j];
        sum += (unsigned)mc_st_dtype_size(f.tensors[i].st_dtype);
    }
    mc_st_file_free(&f);
    return sum == 0xdeadbeefu ? 1 : 0; /* keeps the reads from being optimised away */
}
