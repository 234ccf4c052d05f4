/* The C loops of the optim kernels, called from _cpu.pyx beside this file. */
#ifndef MINISSL_OPTIM_H
#define MINISSL_OPTIM_H

#include "minissl_kernels.h"

/* The kernels, written once for an element type T (sqrt function SQRT) and instantiated
   for float (suffix f32) and double (f64) below; every operation runs in T. */
#define T float
#define S f32
#define SQRT sqrtf
#include "optim_impl.h"
#undef T
#undef S
#undef SQRT

#define T double
#define S f64
#define SQRT sqrt
#include "optim_impl.h"
#undef T
#undef S
#undef SQRT

#endif
