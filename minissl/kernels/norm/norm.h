/* The C loops of the norm kernels, called from _cpu.pyx beside this file. */
#ifndef MINISSL_NORM_H
#define MINISSL_NORM_H

#include "minissl_kernels.h"

/* Sums over a row use MSSL_LANES interleaved partial sums (element j goes to lane
   j % MSSL_LANES) added pairwise at the end. The compiler turns the lanes into vector
   registers, two or more independent chains, so the adds do not wait on each other; and
   the lanes are fixed by the code, not by the instruction set or the thread count. (An
   ``omp simd reduction`` was 20% slower on rows of 128: its final sum over the lanes is
   sequential.) */
#define MSSL_LANES 16
MSSL_INLINE double mssl_lanes_total(const double* a) {
    double h[8];
    for (int k = 0; k < 8; k++) h[k] = a[k] + a[k + 8];
    return ((h[0] + h[4]) + (h[2] + h[6])) + ((h[1] + h[5]) + (h[3] + h[7]));
}

/* Columns whose sums over a block of rows layer norm's backward and batch norm's column sums
   keep in registers at once: four AVX-512 registers of doubles per sum, two cache lines of
   float32 a row. A strip reads one run of each row, then jumps a row ahead; twice as wide
   as the 16 it was, it makes half as many passes down the rows: BatchNorm1d's (512, 512)
   calls 1.5-2x faster, layer norm's backward 10 % (docs/performance.md). 64 spills. */
#define MSSL_LN_STRIP 32

/* The kernels, written once for an element type T and instantiated for float (suffix f32)
   and double (f64) at the end. All arithmetic is in double; T is only loaded and stored.
   Pointers marked restrict never overlap (the wrapper allocates every output). */
#define MSSL_IMPL "norm_impl.h"
#include "minissl_instantiate.h"

#endif
