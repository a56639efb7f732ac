/* backend.c - functions common to all backends. */
#include "backend.h"

void mc_backend_free(mc_backend *be) {
    if (be) be->destroy(be);
}
