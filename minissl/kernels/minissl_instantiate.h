/* Instantiates a family's <family>_impl.h, named by MSSL_IMPL, for float (names suffixed
   f32) and double (f64): the impl is written once for an element type T, and MSSL_FN(name)
   appends the suffix S (minissl_kernels.h). A family header defines MSSL_IMPL and includes
   this file; no include guard, on purpose. */
#define T float
#define S f32
#include MSSL_IMPL
#undef T
#undef S

#define T double
#define S f64
#include MSSL_IMPL
#undef T
#undef S
#undef MSSL_IMPL
