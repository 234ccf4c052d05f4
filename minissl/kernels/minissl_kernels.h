/* C helpers shared by the kernel families' C code (each <family>/<family>.h includes it):
   the build and instruction-set macros, and a branch-free exp for float and double.
   Everything is static, so each extension module gets its own copy and no symbol is
   exported. */
#ifndef MINISSL_KERNELS_H
#define MINISSL_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The Cython module that includes a family's header has Python.h, and its Py_ssize_t, before
   it; compiled on its own (a port, a C test) the header takes the same signed size type. */
#ifndef Py_PYTHON_H
#include <stddef.h>
typedef ptrdiff_t Py_ssize_t;
#endif

/* A family's <family>_impl.h is written once for an element type T and included once per
   type with S the suffix: MSSL_FN(mssl_sum) is mssl_sum_f32 when S is f32. */
#define MSSL_CAT_(a, b) a##_##b
#define MSSL_CAT(a, b) MSSL_CAT_(a, b)
#define MSSL_FN(name) MSSL_CAT(name, S)

/* Compile a function once per instruction set; the loader picks one at import time (GCC's
   function multi-versioning, needs ifunc: GCC on x86-64 Linux). Elsewhere it is compiled for
   the default target, which is just as correct. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define MSSL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MSSL_CLONES
#endif

/* A helper that must be inlined into each instruction-set clone that calls it (a call would
   run the baseline version, and GCC does not always inline on its own). */
#if defined(__GNUC__)
#define MSSL_INLINE static inline __attribute__((always_inline))
#else
#define MSSL_INLINE static inline
#endif

static inline float mssl_f32_from_bits(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline double mssl_f64_from_bits(int64_t b) { double f; memcpy(&f, &b, 8); return f; }

/* exp(x), branch-free so that loops calling it vectorise (libm's exp is a scalar call).
   x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2; exp(x) = 2^n exp(r).
   - round(): adding 1.5 * 2^23 (2^52 for double) leaves the integer n in the low bits of
     the sum (the "shifter" trick), so n is read off the bit pattern without a conversion.
   - r = x - n ln2 in two steps (Cody & Waite): ln2_hi has trailing zero bits, so n * ln2_hi
     is exact and r keeps full precision.
   - exp(r) by its Taylor polynomial: degree 7 for float (truncation r^8/8! < 5e-9, below
     half an ulp), degree 13 for double (r^14/14! < 5e-18).
   - 2^n is built from its exponent bits, as two factors 2^(n/2) 2^(n-n/2) so that results
     up to overflow come out right.
   - Results below the smallest normal number are flushed to 0 (as with the processor's
     flush-to-zero mode): x is clamped to -87 (-708 for double), where exp is still normal, and
     below it the bits of the factor 2^(n-n/2) are set to 0, the bits of 0.0 (a select on the
     result instead stops GCC from vectorising the loops that sum exp). A subnormal result costs a microcode assist of ~100
     cycles in the multiply that makes it and in every later operation that reads it; a
     causal softmax row is half -inf, so computing them made softmax 3.5x slower. The error is
     an absolute one below 1.7e-38 (3.1e-308 for double), far under any float tolerance.
   x is clamped to where exp is finite and normal; -inf gives 0, +inf gives inf, NaN
   propagates. The two clamps are selected by the sign (instead of applied in sequence)
   because GCC if-converts, and so vectorises, this form.
   Measured against libm: at most 2 ulp where the result is normal, float and double. */
static inline float mssl_expf(float x0) {
    float lo = x0 < -87.0f ? -87.0f : x0;
    float hi = x0 > 88.8f ? 88.8f : x0;
    float x = x0 < 0.0f ? lo : hi;
    const float shifter = 12582912.0f;                        /* 1.5 * 2^23 */
    float t = x * 1.44269504088896341f + shifter;           /* x / ln2 + shifter */
    float n = t - shifter;
    int32_t ni;
    memcpy(&ni, &t, 4);
    ni -= 0x4B400000;                                         /* bits of the shifter */
    float r = (x - n * 6.9314575195e-01f) - n * 1.4286067653e-06f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    int32_t b2 = x0 < -87.0f ? 0 : (n2 + 127) << 23;         /* bits 0: the factor 0.0f */
    return p * mssl_f32_from_bits((n1 + 127) << 23) * mssl_f32_from_bits(b2);
}

static inline double mssl_exp(double x0) {
    double lo = x0 < -708.0 ? -708.0 : x0;
    double hi = x0 > 710.0 ? 710.0 : x0;
    double x = x0 < 0.0 ? lo : hi;
    const double shifter = 6755399441055744.0;                /* 1.5 * 2^52 */
    double t = x * 1.4426950408889634074 + shifter;
    double n = t - shifter;
    int64_t ni;
    memcpy(&ni, &t, 8);
    ni -= 0x4338000000000000LL;
    double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0;                            /* 1 / 13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    int64_t n1 = ni >> 1, n2 = ni - n1;
    int64_t b2 = x0 < -708.0 ? 0 : (n2 + 1023) << 52;
    return p * mssl_f64_from_bits((n1 + 1023) << 52) * mssl_f64_from_bits(b2);
}

#endif /* MINISSL_KERNELS_H */
