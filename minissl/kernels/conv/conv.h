/* The C loops of the conv kernels' unfold, fold and stride-2 phase split, called from
   _cpu.pyx beside this file. */
#ifndef MINISSL_CONV_H
#define MINISSL_CONV_H

#include "minissl_kernels.h"

/* Written once for an element type T and instantiated for float (suffix f32) and double
   (f64): plain copies and adds, compiled per instruction set (MSSL_CLONES) so that the
   short runs of a convolution's rows move in whole vector registers. */
#define MSSL_IMPL "conv_impl.h"
#include "minissl_instantiate.h"

#endif
