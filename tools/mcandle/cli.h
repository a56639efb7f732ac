/* cli.h - shared pieces of the mcandle command-line tool: subcommand entry points and
 * argument helpers. The tool uses only the public header mcandle.h. */
#ifndef MC_CLI_H
#define MC_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "mcandle.h"

/* Subcommands: each returns the process exit code (0 ok, 1 runtime error, 2 usage). */
int cmd_eval(int argc, char **argv);
int cmd_fuse(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_train(int argc, char **argv);

/* Prints "mcandle <cmd>: <message>" (and the library's last error when s != MC_OK) to
 * stderr on one line; returns 1. */
int cli_fail(const char *cmd, mc_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prints a usage error on one line; returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Strict number parsing: the whole string must be a number in range. */
int cli_parse_int(const char *s, long lo, long hi, long *out);
int cli_parse_float(const char *s, double *out);

/* Parses "1,2,3" into a heap array of int32 (free()); returns 0 on success. */
int cli_parse_ids(const char *s, int32_t **ids, size_t *n);

/* Matches "--name" (returns 1) and takes its value from argv[*i + 1] (advancing *i);
 * a missing value sets *missing. */
int cli_opt(int argc, char **argv, int *i, const char *name, const char **val, int *missing);

/* Routes library log messages to stderr (warnings and errors only unless verbose). */
void cli_install_log(int verbose);

#endif /* MC_CLI_H */
