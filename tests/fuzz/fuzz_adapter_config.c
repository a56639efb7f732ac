/* fuzz_adapter_config.c - fuzz target: the input is adapter_config.json text (PEFT or
 * mlx-lm), resolved against models of 2 and 24 layers. It may not crash, leak or read past
 * the input, and what it accepts must describe a valid adapter. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "lora/lora_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const int layers[2] = {2, 24};
    int i;
    for (i = 0; i < 2; i++) {
        mc_adapter_config c;
        if (mc_adapter_config_parse((const char *)data, size, "fuzz/adapter_config.json", layers[i],
                                    &c) == MC_OK) {
            if (c.rank < 1 || c.rank > 4096 || !(c.scale > 0) || !isfinite(c.alpha) ||
                !(c.dropout >= 0 && c.dropout < 1) || c.first_layer < 0 ||
                c.first_layer >= layers[i] || c.targets >= (1u << MC_LM_COUNT) ||
                (c.targets == 0 && c.format != MC_ADAPTER_MLX))
                __builtin_trap();
        }
        mc_adapter_config_clear(&c);
    }
    return 0;
}
