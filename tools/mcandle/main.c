/* main.c - the mcandle command-line tool: dispatches to subcommands. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command k_commands[] = {
    {"info", cmd_info, "describe a checkpoint: architecture, sizes, parameters, memory"},
    {"eval", cmd_eval, "score token ids: logits and next-token loss"},
    {"tokenize", cmd_tokenize, "text -> token ids (Hugging Face tokenizer.json parity)"},
    {"detokenize", cmd_detokenize, "token ids -> text"},
    {"fuse", cmd_fuse, "merge a LoRA adapter into its base model (Hugging Face checkpoint)"},
    {"generate", cmd_generate, "generate text from a prompt (streaming)"},
    {"train", cmd_train, "fine-tune a LoRA adapter on jsonl data"},
    {"init", cmd_init, "write a random-weight checkpoint (presets of Qwen2.5-Coder sizes)"},
};

static void usage(FILE *f) {
    size_t i;
    fprintf(f, "usage: mcandle <command> [options]   (mcandle <command> --help)\n\ncommands:\n");
    for (i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        fprintf(f, "  %-12s %s\n", k_commands[i].name, k_commands[i].summary);
}

int main(int argc, char **argv) {
    size_t i;
    if (argc < 2) {
        fprintf(stderr, "mcandle: no command given (mcandle --help lists them)\n");
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("mcandle %s\n", MC_VERSION_STRING);
        return 0;
    }
    for (i = 0; i < sizeof k_commands / sizeof k_commands[0]; i++)
        if (!strcmp(argv[1], k_commands[i].name)) return k_commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "mcandle: unknown command '%s' (mcandle --help lists them)\n", argv[1]);
    return 2;
}
