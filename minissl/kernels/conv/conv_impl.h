/* The conv kernels' loops for one element type T (names suffixed S), included twice by
   conv.h. No include guard, on purpose. */

/* Unfold one window tap over ``rows`` output rows: tap[r n + k] = src[r stride + k], k < n
   (a run of n values of the phase-split image per output row). */
MSSL_CLONES static void MSSL_FN(mssl_conv_unfold_tap)(const T* restrict src, Py_ssize_t stride,
                                                 T* restrict tap, Py_ssize_t rows,
                                                 Py_ssize_t n) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        const T* s = src + r * stride;
        T* t = tap + r * n;
        #pragma omp simd
        for (Py_ssize_t k = 0; k < n; k++) t[k] = s[k];
    }
}

/* Its adjoint (the fold): dst[r stride + k] += tap[r n + k]. A tap's runs never overlap one
   another (stride >= n), so each element is added to once per call. */
MSSL_CLONES static void MSSL_FN(mssl_conv_fold_tap)(T* restrict dst, Py_ssize_t stride,
                                               const T* restrict tap, Py_ssize_t rows,
                                               Py_ssize_t n) {
    for (Py_ssize_t r = 0; r < rows; r++) {
        T* d = dst + r * stride;
        const T* t = tap + r * n;
        #pragma omp simd
        for (Py_ssize_t k = 0; k < n; k++) d[k] += t[k];
    }
}

/* Between an image row (w values) and its two stride-2 phases p0, p1, with x_pad[j + pw] =
   row[j] and p_r[q] = x_pad[2 q + r]: to the phases (``to_phases``) or back (the adjoint).
   Row position j = 2m + t maps to phase (j + pw) % 2 at (j + pw) / 2, so the even positions
   run through one phase (a) and the odd through the other (b), both from the same offset on:
   one interleaved pass, which the compiler vectorises (a phase at a time it was a strided
   store, one element at a time). Only the w row positions are touched. */
MSSL_CLONES static void MSSL_FN(mssl_conv_split2)(T* restrict row, T* restrict p0,
                                             T* restrict p1, Py_ssize_t w, Py_ssize_t pw,
                                             int to_phases) {
    T* restrict a = (pw & 1) ? p1 + (pw - 1) / 2 : p0 + pw / 2;    /* even j = 2m: a[m] */
    T* restrict b = (pw & 1) ? p0 + (pw + 1) / 2 : p1 + pw / 2;    /* odd j = 2m+1: b[m] */
    const Py_ssize_t half = w / 2;
    if (to_phases) {
        for (Py_ssize_t m = 0; m < half; m++) {
            a[m] = row[2 * m];
            b[m] = row[2 * m + 1];
        }
        if (w & 1) a[half] = row[w - 1];
    } else {
        for (Py_ssize_t m = 0; m < half; m++) {
            row[2 * m] = a[m];
            row[2 * m + 1] = b[m];
        }
        if (w & 1) row[w - 1] = a[half];
    }
}
