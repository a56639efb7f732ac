/* gen.h - internal layout of the public context (per-run state over mc_fwd). */
#ifndef MC_GEN_H
#define MC_GEN_H

#include "../model/model.h"

struct mc_context {
    mc_model *model;
    mc_fwd *fwd;
};

#endif /* MC_GEN_H */
